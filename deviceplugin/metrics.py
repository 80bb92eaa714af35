"""Prometheus metrics of the node daemon (``conspirator_node_*``).

Each daemon has its own registry (tests run several in one process); ``serve`` exposes it
on ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

APPLY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconfigurations = Counter(
            "conspirator_node_reconfigurations", "Apply passes that changed the MIG layout, "
            "by outcome (converged, blocked, failed)", ["node", "outcome"], registry=r)
        self.operations = Counter(
            "conspirator_node_mig_operations", "MIG operations carried out, by kind "
            "(create, destroy, complete, mode)", ["node", "operation"], registry=r)
        self.operation_failures = Counter(
            "conspirator_node_mig_operation_failures", "MIG operations the GPUs refused",
            ["node"], registry=r)
        self.apply_duration = Histogram(
            "conspirator_node_apply_duration_seconds", "Duration of apply passes that changed "
            "something", ["node"], buckets=APPLY_BUCKETS, registry=r)
        self.blocked_changes = Counter(
            "conspirator_node_blocked_changes", "Changes blocked because the instance was in "
            "use (counted once per instance and spec generation)", ["node"], registry=r)
        self.blocked_instances = Gauge(
            "conspirator_node_blocked_instances", "Instances the spec removes but that are in "
            "use now", ["node"], registry=r)
        self.devices_advertised = Gauge(
            "conspirator_node_devices_advertised", "MIG devices advertised, by resource and "
            "health", ["node", "resource", "health"], registry=r)
        self.plugin_registrations = Counter(
            "conspirator_node_plugin_registrations", "Device plugin registrations with the "
            "kubelet, by result", ["node", "resource", "result"], registry=r)
        self.allocations = Counter(
            "conspirator_node_allocations", "Allocate calls answered, by resource",
            ["node", "resource"], registry=r)
        self.buffers = Gauge(
            "conspirator_node_registered_buffers", "Input buffers registered now",
            ["node"], registry=r)
        self.buffer_registrations = Counter(
            "conspirator_node_buffer_registrations", "Buffer registrations, by result",
            ["node", "result"], registry=r)
        self.layout_converged = Gauge(
            "conspirator_node_layout_converged", "1 when the GPUs match GPUNode.spec",
            ["node"], registry=r)
        self._advertised: set[tuple[str, str]] = set()

    def set_advertised(self, counts: dict[tuple[str, str], int]) -> None:
        """Devices by (resource, health); series of resources that vanished drop to 0."""
        for key in self._advertised - set(counts):
            self.devices_advertised.labels(self.node, *key).set(0)
        for key, n in counts.items():
            self.devices_advertised.labels(self.node, *key).set(n)
        self._advertised |= set(counts)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)


__all__ = ["Metrics"]
