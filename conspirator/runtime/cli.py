"""``conspirator worker``: the reference worker (a numpy model behind the data path)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from conspirator.runtime.reference import MODELS


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "worker", help="run the reference data-path worker",
        description="Register an input buffer with the node's buffer registry and serve "
        "requests with a reference model. Identity comes from the environment the operator "
        "sets (CONSPIRATOR_NAMESPACE, CONSPIRATOR_JOB, CONSPIRATOR_POD, "
        "CONSPIRATOR_THROUGHPUT, CONSPIRATOR_INPUT_SHAPE, CONSPIRATOR_DTYPE) unless given.")
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--shape", help="input shape, e.g. 1,784 (default: CONSPIRATOR_INPUT_SHAPE "
                   "or 1,784)")
    p.add_argument("--dtype", help="input dtype (default: CONSPIRATOR_DTYPE or float32)")
    p.add_argument("--slots", type=int, default=4, help="input slots (pipelining depth)")
    p.add_argument("--result-bytes", type=int, default=1 << 16)
    p.add_argument("--registry", help="registry socket (default: CONSPIRATOR_REGISTRY_SOCKET)")
    p.add_argument("--job", help="namespace/name (default: from the environment)")
    p.add_argument("--replica", help="replica name (default: CONSPIRATOR_POD)")
    p.add_argument("--weight", type=float, help="throughput estimate, requests/s")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--delay", type=float, default=0.0,
                   help="seconds of simulated model time per request (demos, tests)")
    p.add_argument("--cpu", help="pin to these CPUs, e.g. 0 or 0-1")
    p.add_argument("--drain-timeout", type=float,
                   help="on SIGTERM, seconds to wait for the agent to finish this replica's "
                        "in-flight requests before stopping anyway (default: "
                        "CONSPIRATOR_DRAIN_TIMEOUT or 25)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from conspirator import runtime

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.cpu:
        os.sched_setaffinity(0, _cpus(args.cpu))
    shape_text = args.shape or os.environ.get("CONSPIRATOR_INPUT_SHAPE") or "1,784"
    shape = tuple(int(d) for d in shape_text.replace("x", ",").split(",") if d)
    dtype = args.dtype or os.environ.get("CONSPIRATOR_DTYPE") or "float32"
    runtime.input_tensor(shape, dtype, slots=args.slots, result_bytes=args.result_bytes,
                         device=args.device, framework="numpy", registry=args.registry,
                         job=args.job, replica=args.replica, weight=args.weight)
    if args.drain_timeout is not None:
        runtime.current().drain_timeout = args.drain_timeout
    model = MODELS[args.model]()
    if args.delay > 0:
        inner, delay = model, args.delay

        def model(x: Any) -> Any:
            time.sleep(delay)
            return inner(x)
    rep = runtime.current()
    served = runtime.serve(model)
    logging.getLogger("conspirator.runtime").info("stopped after %d requests%s", served,
                                                  f" (drain: {rep.drain_result})"
                                                  if rep.drain_result else "")
    return 0
