"""What the operator hands the data path: per-job token Secrets and the agents' aggregate.

* **Per-job token Secret** (:func:`token_secret_name`): ``<job>-conspirator-token`` in the
  job's namespace, type ``Opaque``, key ``token`` = 32 random bytes, URL-safe base64 (what a
  client proves to the DPU agent), labelled ``app.kubernetes.io/managed-by: conspirator``
  and ``conspirator.io/job: <job>``, owned by the InferenceJob (garbage-collected with it).
  A token is never regenerated and an existing Secret is never rewritten (so the operator
  needs only ``get`` and ``create`` on Secrets): its token is kept (a Secret the user made
  with a ``token`` of their own is used as it is).  A Secret left by an earlier job of the
  same name (owned by another uid) is waited out until the garbage collector deletes it;
  one without a ``token`` key is reported (``DataPathReady``: ``TokenMissing``).  Rotation:
  delete the Secret; the operator makes a new one (within ``--token-resync-interval``, or
  at once on the job's next event).
* **Aggregate Secret** (``--agent-tokens-secret`` in ``--operator-namespace``): one key
  ``<namespace>.<job>`` per live job holding its token, exactly the files
  ``conspirator dpu-agent --tokens-dir`` reads, so the chart mounts this one Secret into the
  agent DaemonSet and the agent needs no API access.  Writes are coalesced (one writer at a
  time, a burst of arrivals is one write) and conflict-checked (``resourceVersion``; a
  conflict re-reads and retries).  The keys are computed from what the operator knows,
  never blindly merged: keys of jobs that no longer exist are dropped, a live job whose
  Secret has not been read yet keeps its current key, so a restarted operator rewrites
  nothing.  Nothing is written before the controller has listed every job.

The token Secrets are not watched (that would need ``list``/``watch`` on every Secret of
the cluster); a periodic check (:meth:`DataPath.resync`) re-reads them instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from conspirator.operator.kubeapi import ConflictError, NotFoundError, SecretsAPI
from conspirator.operator.manifests import label_value, owner_reference
from conspirator.operator.views import LABEL_JOB, LABEL_MANAGED_BY, JobView

log = logging.getLogger("conspirator.operator.datapath")

TOKEN_KEY = "token"
TOKEN_SUFFIX = "-conspirator-token"
SECRET_MANAGED_BY = "conspirator"
"""``app.kubernetes.io/managed-by`` of the Secrets (the Deployments say
``conspirator-operator``; the Secrets are read by the chart's agent, hence the product name)."""
NAME_LIMIT = 253
KEY_LIMIT = 253
_KEY = re.compile(r"[-._a-zA-Z0-9]+")
RETRIES = 8


def token_secret_name(job: str) -> str:
    """``<job>-conspirator-token``; past 253 characters the job part is cut and a hash of
    the full job name keeps names apart (``<cut>-<hash8>-conspirator-token``)."""
    full = job + TOKEN_SUFFIX
    if len(full) <= NAME_LIMIT:
        return full
    h = hashlib.sha256(job.encode()).hexdigest()[:8]
    room = NAME_LIMIT - len(TOKEN_SUFFIX) - len(h) - 1
    return f"{job[:room].rstrip('-.')}-{h}{TOKEN_SUFFIX}"


def aggregate_key(namespace: str, job: str) -> str | None:
    """The aggregate Secret's key (and the agent's file name) of a job: ``<ns>.<job>``;
    None when it cannot be a Secret key (longer than 253 characters)."""
    key = f"{namespace}.{job}"
    return key if len(key) <= KEY_LIMIT and _KEY.fullmatch(key) else None


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def decode_data(body: Mapping[str, Any] | None) -> dict[str, str]:
    """A Secret's ``data`` as text (keys whose value is not base64 UTF-8 are left out)."""
    out: dict[str, str] = {}
    for k, v in ((body or {}).get("data") or {}).items():
        try:
            out[str(k)] = base64.b64decode(str(v), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
    return out


def read_token(body: Mapping[str, Any] | None) -> str | None:
    """The token of a job's Secret, or None when it has no usable one."""
    token = decode_data(body).get(TOKEN_KEY, "").strip()
    return token or None


def secret_owner_uid(body: Mapping[str, Any]) -> str | None:
    """UID of the InferenceJob controlling a Secret, if one does."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "InferenceJob" and ref.get("controller"):
            return str(ref.get("uid", ""))
    return None


def secret_labels(job: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: SECRET_MANAGED_BY, LABEL_JOB: label_value(job)}


def token_secret(view: JobView, token: str) -> dict[str, Any]:
    """The job's token Secret."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": token_secret_name(view.name),
            "namespace": view.namespace,
            "labels": secret_labels(view.name),
            "ownerReferences": [owner_reference(view)],
        },
        "data": {TOKEN_KEY: _b64(token)},
    }


def aggregate_secret(namespace: str, name: str, tokens: Mapping[str, str],
                     resource_version: str | None = None) -> dict[str, Any]:
    """The agents' Secret: ``<namespace>.<job>`` -> token."""
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace,
        "labels": {LABEL_MANAGED_BY: SECRET_MANAGED_BY,
                   "app.kubernetes.io/component": "dpu-agent-tokens"},
    }
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "data": {k: _b64(v) for k, v in sorted(tokens.items())}}


class JobSource(Protocol):
    """What :class:`DataPath` needs of the controller."""

    def live_jobs(self) -> Mapping[str, JobView] | None:
        """Every InferenceJob served and not being deleted, by key; None until listed."""
        ...

    def token_changed(self, key: str, secret: str | None) -> None:
        """The job's token Secret now exists (its name) or is unknown (None)."""
        ...


class TokenUnusableError(RuntimeError):
    """The job's Secret exists but cannot be used (yet); the operator never rewrites it."""


@dataclass(frozen=True, slots=True)
class Token:
    uid: str
    secret: str
    token: str


class DataPath:
    """The token Secrets and the aggregate (module docstring)."""

    def __init__(self, kube: SecretsAPI, jobs: JobSource, namespace: str,
                 aggregate: str) -> None:
        self.kube = kube
        self.jobs = jobs
        self.namespace = namespace
        self.aggregate = aggregate
        self.tokens: dict[str, Token] = {}
        self.unusable: dict[str, str] = {}
        """Job key -> uid, for jobs whose Secret was found unusable (no key for them)."""
        self.writes = 0
        """Aggregate writes (creates and replaces) made, for tests and logs."""
        self._lock = asyncio.Lock()
        self._requested = 0
        self._completed = 0
        self._error: str | None = None
        self._cached: tuple[str, dict[str, str]] | None = None
        """(resourceVersion, data) of the aggregate as last read or written."""
        self._bg: asyncio.Task[None] | None = None
        self._dirty = False
        self._warned: set[str] = set()
        self._job_locks: dict[str, asyncio.Lock] = {}

    # --- per-job Secrets ------------------------------------------------------------------

    async def ensure(self, view: JobView, check: bool = False) -> str | None:
        """Make sure the job's token Secret exists; return its token.

        Without ``check`` a token already known for this job (same uid) is returned at
        once; with it, the Secret is read again (the periodic resync).
        """
        if view.deleting:
            return None
        known = self.tokens.get(view.key)
        if known is not None and known.uid == view.uid and not check:
            return known.token
        async with self._job_locks.setdefault(view.key, asyncio.Lock()):
            try:
                return await self._ensure(view, known, check)
            except TokenUnusableError:
                # Not usable: no key for the agents, and the status says the token is missing.
                self.unusable[view.key] = view.uid
                if self.tokens.pop(view.key, None) is not None:
                    self.jobs.token_changed(view.key, None)
                    self.request()
                raise

    async def _ensure(self, view: JobView, known: Token | None, check: bool) -> str | None:
        now = self.tokens.get(view.key)
        if now is not None and now.uid == view.uid and now is not known and not check:
            return now.token  # another call made it meanwhile
        name = token_secret_name(view.name)
        recorded = view.job.status.token_secret if view.job.status else None
        body: dict[str, Any] | None = None
        if check or known is not None or recorded:
            body = await self._read(view.namespace, name)
        for _ in range(RETRIES):
            if body is None:
                try:
                    body = await self.kube.create_secret(token_secret(view, new_token()))
                    log.info("token Secret %s/%s created", view.namespace, name)
                except ConflictError:
                    body = await self._read(view.namespace, name)
                    continue
                except NotFoundError:
                    return None  # the namespace is gone
            owner = secret_owner_uid(body)
            token = read_token(body)
            if owner is not None and owner != view.uid:
                # An earlier job's of the same name: the garbage collector deletes it
                # (its owner is gone); then the next try makes this job's.
                raise TokenUnusableError(
                    f"Secret {view.namespace}/{name} belongs to an earlier InferenceJob of "
                    f"that name; waiting for the garbage collector to delete it")
            if token is None:
                raise TokenUnusableError(
                    f"Secret {view.namespace}/{name} has no '{TOKEN_KEY}' key; delete it "
                    f"(the operator makes a new one) or add the token")
            self._record(view, name, token)
            return token
        raise RuntimeError(f"token Secret {view.namespace}/{name}: kept changing")

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.read_secret(namespace, name)
        except NotFoundError:
            return None

    def _record(self, view: JobView, name: str, token: str) -> None:
        self.unusable.pop(view.key, None)
        old = self.tokens.get(view.key)
        self.tokens[view.key] = Token(view.uid, name, token)
        if old is None or old != self.tokens[view.key]:
            self.jobs.token_changed(view.key, name)
            self.request()

    def forget(self, key: str) -> None:
        """The job is gone (or going): its key leaves the aggregate on the next write."""
        self.tokens.pop(key, None)
        self.unusable.pop(key, None)
        self._job_locks.pop(key, None)

    # --- the aggregate --------------------------------------------------------------------

    def desired(self, current: Mapping[str, str]) -> dict[str, str] | None:
        """The aggregate's content, given what it holds now; None before the jobs are listed."""
        live = self.jobs.live_jobs()
        if live is None:
            return None
        out: dict[str, str] = {}
        for key, view in live.items():
            agg = aggregate_key(view.namespace, view.name)
            if agg is None:
                self._warn(f"{key}: '<namespace>.<job>' is longer than {KEY_LIMIT} "
                           f"characters; the DPU agents cannot get its token")
                continue
            t = self.tokens.get(key)
            if t is not None and t.uid == view.uid:
                token: str | None = t.token
            elif self.unusable.get(key) == view.uid:
                token = None
            else:  # not read yet (a restart): keep what the agents have
                token = current.get(agg)
            if token:
                out[agg] = token
        return out

    def request(self) -> None:
        """Write the aggregate soon (coalesced), without waiting."""
        if not self.aggregate:
            return
        self._dirty = True
        if self._bg is None or self._bg.done():
            self._bg = asyncio.create_task(self._background(), name="conspirator-agent-tokens")

    async def _background(self) -> None:
        backoff = 1.0
        while self._dirty:
            await asyncio.sleep(0.2)  # let a burst of arrivals gather into one write
            self._dirty = False  # a request from now on asks for another write
            try:
                await self.sync()
                backoff = 1.0
            except Exception as e:
                self._warn(f"agent tokens Secret {self.namespace}/{self.aggregate} not "
                           f"written, retrying: {e}")
                self._dirty = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    async def idle(self) -> None:
        """Wait until the requested writes are done (tests)."""
        while self._bg is not None and not self._bg.done():
            await asyncio.sleep(0.01)

    async def sync(self, force: bool = False) -> bool:
        """Bring the aggregate up to date; return whether it was written.

        Concurrent calls coalesce: a call returns once a write that started after it
        completed.  ``force`` re-reads the Secret even when the last write matches.
        """
        if not self.aggregate:
            return False
        self._requested += 1
        ticket = self._requested
        wrote = False
        async with self._lock:
            if self._completed < ticket or force:
                target = self._requested
                try:
                    wrote = await self._write(force)
                    self._error = None
                except Exception as e:
                    self._error = f"{type(e).__name__}: {e}"
                    raise
                finally:
                    self._completed = max(self._completed, target)
            elif self._error is not None:
                raise RuntimeError(self._error)
        return wrote

    async def _write(self, force: bool) -> bool:
        ns, name = self.namespace, self.aggregate
        cached = None if force else self._cached
        for _ in range(RETRIES):
            if cached is None:
                try:
                    body: dict[str, Any] | None = await self.kube.read_secret(ns, name)
                except NotFoundError:
                    body = None
                cached = ((body or {}).get("metadata", {}).get("resourceVersion", ""),
                          decode_data(body)) if body is not None else ("", {})
                self._cached = cached if body is not None else None
            rv, current = cached
            want = self.desired(current)
            if want is None:
                return False
            if rv and want == current:
                return False
            try:
                if not rv:
                    got = await self.kube.create_secret(aggregate_secret(ns, name, want))
                else:
                    got = await self.kube.replace_secret(aggregate_secret(ns, name, want, rv))
            except ConflictError:
                cached = None  # changed (or created) meanwhile: read again
                continue
            except NotFoundError:
                if rv:
                    cached = None  # deleted meanwhile
                    continue
                # Creating failed: the namespace does not exist, so no agent reads a key.
                self._warn(f"namespace {ns} does not exist: no agent tokens Secret "
                           f"{name} (set --operator-namespace)")
                return False
            self.writes += 1
            self._cached = (str(got["metadata"].get("resourceVersion", "")), decode_data(got))
            added = set(want) - set(current)
            dropped = set(current) - set(want)
            log.info("agent tokens Secret %s/%s: %d job(s)%s%s", ns, name, len(want),
                     f", +{len(added)}" if added else "", f", -{len(dropped)}" if dropped else "")
            return True
        raise RuntimeError(f"agent tokens Secret {ns}/{name}: conflicts on every try")

    def _warn(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            log.warning("%s", text)

    # --- periodic check -------------------------------------------------------------------

    async def resync(self) -> None:
        """Read every live job's token Secret (recreating deleted ones), forget gone jobs,
        and rewrite the aggregate from a fresh read."""
        live = self.jobs.live_jobs()
        if live is None:
            return
        for key in [k for k in self.tokens if k not in live]:
            self.forget(key)
        results = await asyncio.gather(*(self.ensure(v, check=True) for v in live.values()),
                                       return_exceptions=True)
        for v, r in zip(live.values(), results, strict=True):
            if isinstance(r, BaseException):
                self._warn(f"token Secret of {v.key}: {r}")
        await self.sync(force=True)


async def resync_loop(datapath: DataPath, active: Callable[[], Awaitable[bool]],
                      interval: float, synced: Callable[[], bool]) -> None:
    """The first check once the controller has listed the jobs, then every ``interval`` s
    (0: only the first), while this replica is the active one."""
    while not synced():
        await asyncio.sleep(0.5)
    while True:
        try:
            if await active():
                await datapath.resync()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("token resync failed: %s", e)
            await asyncio.sleep(5.0)
            continue
        if interval <= 0:
            return
        await asyncio.sleep(interval)
