"""Prometheus metrics of the operator, all prefixed ``conspirator_``.

They live in their own registry (so that tests and several operators in one process do
not collide) and are served by :func:`serve` on ``/metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.placement_attempts = Counter(
            "conspirator_placement_attempts", "Placement decisions, by kind and result",
            ["kind", "result"], registry=r)
        self.placement_duration = Histogram(
            "conspirator_placement_duration_seconds",
            "Time the placement engine took per decision (arrival: one job; replan: all)",
            ["kind"], buckets=DURATION_BUCKETS, registry=r)
        self.pending_jobs = Gauge(
            "conspirator_pending_jobs", "InferenceJobs without a placement meeting their demand",
            registry=r)
        self.jobs = Gauge("conspirator_jobs", "InferenceJobs by phase", ["phase"], registry=r)
        self.gpus_in_use = Gauge(
            "conspirator_gpus_in_use", "GPUs holding at least one reserved instance",
            registry=r)
        self.gpus_total = Gauge("conspirator_gpus", "GPUs in the GPUNode inventories",
                                registry=r)
        self.mig_reconfigurations = Counter(
            "conspirator_mig_reconfigurations",
            "GPU layout changes written to GPUNode.spec (one per GPU whose instances change)",
            registry=r)
        self.migrations = Counter(
            "conspirator_migrations", "Replicas moved by global re-plans", registry=r)
        self.replans = Counter("conspirator_replans", "Global re-plans, by outcome",
                               ["outcome"], registry=r)
        self.passes = Counter("conspirator_reconcile_passes",
                              "Reconciliation passes of the planner", registry=r)
        self.pass_duration = Histogram(
            "conspirator_reconcile_duration_seconds", "Duration of a reconciliation pass",
            buckets=DURATION_BUCKETS, registry=r)
        self.api_errors = Counter("conspirator_api_errors",
                                  "Failed writes to the API server, by kind of object",
                                  ["kind"], registry=r)
        self.workers = Gauge("conspirator_worker_deployments",
                             "Worker Deployments the operator manages", registry=r)
        job = ["namespace", "job"]
        self.observed_rps = Gauge(
            "conspirator_job_observed_requests_per_second",
            "Request rate the DPU agents observe for the job (summed over agents)", job,
            registry=r)
        self.observed_p99 = Gauge(
            "conspirator_job_observed_p99_seconds",
            "p99 latency the DPU agents observe for the job (worst agent)", job, registry=r)
        self.scaling_planned = Gauge(
            "conspirator_job_planned_requests_per_second",
            "Auto jobs: the request rate the autoscaler plans for", job, registry=r)
        self.scaling_recommended = Gauge(
            "conspirator_job_recommended_requests_per_second",
            "Auto jobs: the autoscaler's latest recommendation, before stabilization", job,
            registry=r)
        self.scaling_decisions = Counter(
            "conspirator_scaling_decisions", "Autoscaler changes of planned capacity, by "
            "direction (up, down)", ["direction"], registry=r)
        self.profile_refinements = Counter(
            "conspirator_profile_refinements",
            "ModelProfile entries rewritten from observed replica throughput", registry=r)
        self.agent_scrapes = Counter(
            "conspirator_agent_scrapes", "Scrapes of DPU agents' metrics, by result "
            "(ok, error)", ["result"], registry=r)
        self.agent_scrape_duration = Histogram(
            "conspirator_agent_scrape_round_seconds",
            "Time to scrape every DPU agent once", buckets=DURATION_BUCKETS, registry=r)


def serve(metrics: Metrics, port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``addr:port`` from a background thread."""
    start_http_server(port, addr=addr, registry=metrics.registry)
