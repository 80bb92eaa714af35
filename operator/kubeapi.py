"""What the operator needs of the API server, as a Protocol (no I/O here).

:class:`~conspirator.operator.kube.Kube` is the real implementation (the ``kubernetes``
client in a bounded thread pool); ``tests/operator/fakes.py`` holds an in-memory one, so
the controller, the writer and the data path run in unit tests without a cluster.
"""

from __future__ import annotations

from typing import Any, Protocol


class NotFoundError(Exception):
    """The object is gone."""


class ConflictError(Exception):
    """The object exists already, or changed since it was read."""


class SecretsAPI(Protocol):
    """The token Secrets (:mod:`~conspirator.operator.datapath`)."""

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any]: ...
    async def create_secret(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def replace_secret(self, body: dict[str, Any]) -> dict[str, Any]: ...


class KubeAPI(SecretsAPI, Protocol):
    """Every call the operator makes.  Bodies are plain dicts, as the API server sends
    them; a missing object raises :class:`NotFoundError`, a conflict :class:`ConflictError`.
    """

    async def list_jobs(self) -> list[dict[str, Any]]: ...
    async def list_nodes(self) -> list[dict[str, Any]]: ...
    async def list_profiles(self) -> list[dict[str, Any]]: ...
    async def list_workers(self) -> list[dict[str, Any]]: ...

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]
                               ) -> dict[str, Any]:
        """Merge-patch ``status`` (lists are replaced whole; ``None`` removes a field)."""
        ...

    async def patch_node_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]: ...

    async def patch_profile_status(self, name: str, status: dict[str, Any]
                                   ) -> dict[str, Any]:
        """Merge-patch a ModelProfile's ``status`` (the learned ``observed`` entries)."""
        ...
    async def create_deployment(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def create_claim_template(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any]: ...

    async def update_deployment(self, body: dict[str, Any], resource_version: str
                                ) -> dict[str, Any]:
        """Replace the Deployment's labels, annotations and spec (conflict-checked)."""
        ...

    async def scale_deployment(self, namespace: str, name: str, replicas: int,
                               resource_version: str) -> dict[str, Any]:
        """Set only ``spec.replicas`` (conflict-checked): the template stays as it is."""
        ...

    async def delete_deployment(self, namespace: str, name: str, uid: str | None = None
                                ) -> None: ...

    async def set_pod_deletion_cost(self, namespace: str, name: str, cost: int) -> None:
        """Annotate a worker pod with ``controller.kubernetes.io/pod-deletion-cost`` (the
        ReplicaSet controller removes the cheapest pod first on scale-down)."""
        ...

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a worker pod gracefully (its worker drains); a missing pod is fine."""
        ...

    async def post_event(self, body: dict[str, Any]) -> None:
        """Best effort: never raises."""
        ...
