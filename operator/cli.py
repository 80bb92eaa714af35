"""``conspirator operator``: run the Kubernetes operator (kopf).

This directory is the package ``conspirator.operator`` (a namespace portion: it has no
``__init__.py``, so that ``operator/`` in the repository root never shadows the standard
library's ``operator``).  Its modules, docs/operator.md and docs/architecture.md:

- ``placement``: the pure placement engine (data in, decision out);
- ``simulator``: the trace-driven simulator that evaluates placement policies;
- the operator itself: ``cli`` (this) -> ``runner`` (kopf, the re-plan loop, metrics,
  peering) -> ``handlers`` (thin kopf handlers) -> ``controller`` (the loop) over
  ``cache`` (observations, dirty sets), ``planner`` (the pure decision, in phases) and
  ``writer`` (statuses, layouts, workers, Events, in order);
- ``datapath``: the per-job token Secrets and the DPU agents' aggregate Secret;
- ``views``, ``translate``, ``status``, ``manifests``, ``global_replan``: pure translation
  between the API objects and the engine (tested without a cluster);
- ``kubeapi`` (the API calls, as a Protocol) and ``kube`` (the real client); ``settings``,
  ``metrics``, ``peering``, ``profilegen``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from conspirator.cli import UsageError
from conspirator.operator.settings import SettingsError, add_arguments, resolve


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator (InferenceJobs to MIG layouts and workers)",
        description=(
            "Run the Conspirator operator: it places every InferenceJob on MIG partitions "
            "with the placement engine, writes the MIG layouts to GPUNode.spec, starts one "
            "worker Deployment per job and node once the node applied them, and reports in "
            "InferenceJob.status and Events. Every flag falls back to the environment "
            "variable named in its help. See docs/operator.md."),
    )
    add_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        settings = resolve(args, os.environ)
    except SettingsError as e:
        raise UsageError(str(e)) from e
    import kopf

    from conspirator.operator.runner import run

    kopf.configure(verbose=settings.log_level == "DEBUG",
                   quiet=settings.log_level in ("WARNING", "ERROR"),
                   log_format=kopf.LogFormat.PLAIN)
    logging.getLogger().setLevel(settings.log_level)
    if settings.log_level != "DEBUG":
        # kopf logs every handler call per object; the operator logs what it decides.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    asyncio.run(run(settings))
    return 0
