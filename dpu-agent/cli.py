"""``conspirator dpu-agent``: run the data-path agent of a node's DPU."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conspirator.dpu_agent.core import AgentConfig
from conspirator.dpu_agent.server import Agent
from conspirator.dpu_agent.tokens import DirectoryTokens, StaticTokens, TokenStore
from conspirator.loadgen import parse_size


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "dpu-agent", help="run the data-path agent of a node's DPU",
        description="Serve clients' requests (TCP; a unix socket for same-host clients; RDMA "
        "where a device exists) and move their bytes into the input buffers the node's "
        "buffer registry publishes.")
    p.add_argument("--listen", type=_hostport, default=("0.0.0.0", 7470),
                   help="TCP address for clients (HOST:PORT; port 0 picks one)")
    p.add_argument("--no-tcp", action="store_true", help="no TCP listener")
    p.add_argument("--oip-listen", type=_hostport, default=None, metavar="HOST:PORT",
                   help="also serve the KServe / Triton Open Inference Protocol (v2, gRPC: "
                   "ModelInfer, ModelReady, ...) here, e.g. 0.0.0.0:8001 (Triton's gRPC "
                   "port); model name: the job's namespace/name, metadata 'authorization: "
                   "Bearer <job token>' (default: off)")
    p.add_argument("--oip-window", type=int, default=64,
                   help="Open Inference Protocol calls of one job in the agent at once; more "
                   "wait (default %(default)s)")
    p.add_argument("--local-socket", help="unix socket for same-host (one-sided) clients")
    p.add_argument("--publish-socket", required=True,
                   help="unix socket where the node's buffer registry publishes buffers")
    p.add_argument("--tokens-dir", help="directory of <namespace>.<job> token files "
                   "(the jobs' Secrets)")
    p.add_argument("--token", action="append", default=[], metavar="NS/JOB=TOKEN",
                   help="a job token (tests, demos); repeatable")
    p.add_argument("--node", default=os.environ.get("NODE_NAME", ""),
                   help="node name the registry authenticates as")
    p.add_argument("--node-token-file", help="file holding the node token of the registry")
    p.add_argument("--local-registry", metavar="PATH",
                   help="also run a stand-in buffer registry on PATH (no node daemon)")
    p.add_argument("--window", type=int, default=16, help="outstanding requests per connection")
    p.add_argument("--max-payload", type=parse_size, default=64 << 20)
    p.add_argument("--staging-budget", type=parse_size, default=512 << 20)
    p.add_argument("--local-slot", type=parse_size, default=4 << 20,
                   help="staging slot of one-sided clients")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--no-replica-timeout", type=float, default=5.0)
    p.add_argument("--handshake-timeout", type=float, default=5.0,
                   help="seconds a connection has to authenticate")
    p.add_argument("--max-handshakes", type=int, default=256,
                   help="connections in their handshake at once; past it the oldest is closed "
                   "(0: no cap)")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="authenticated client connections, all jobs (0: no cap)")
    p.add_argument("--max-connections-per-job", type=int, default=256,
                   help="authenticated client connections of one job (0: no cap)")
    p.add_argument("--idle-timeout", type=float, default=300.0,
                   help="close a connection with nothing in flight, silent this long (0: never)")
    p.add_argument("--no-fair-staging", action="store_true",
                   help="let one job hold all of staging (default: each job with replicas "
                   "here holds at most its share)")
    p.add_argument("--observe-window", type=float, default=60.0,
                   help="seconds of the observed load's window (rates, latency percentiles)")
    p.add_argument("--observe-slice", type=float, default=5.0,
                   help="how often the window's snapshots are taken, seconds")
    p.add_argument("--rdma", nargs="?", const="", default=None, metavar="DEVICE",
                   help="serve RDMA clients (first device, or DEVICE)")
    p.add_argument("--cpu", help="pin the agent to these CPUs (the DPU's reserved cores)")
    p.add_argument("--busy-poll-us", type=int,
                   default=int(os.environ.get("CONSPIRATOR_BUSY_POLL_US", "0") or 0),
                   help="on cores of its own (a DPU's, or reserved with --cpu): keep polling "
                        "instead of sleeping while requests are in flight and for this many "
                        "microseconds after the last event; 0 (default): sleep (an agent on "
                        "shared host cores must not poll; env CONSPIRATOR_BUSY_POLL_US)")
    p.add_argument("--ready-file", type=Path,
                   help="write {tcp_port, pid} here once listening")
    p.add_argument("--stats-file", type=Path,
                   help="write the counters here as JSON on SIGUSR1 and on exit")
    p.add_argument("--metrics-port", type=int,
                   default=int(os.environ.get("CONSPIRATOR_METRICS_PORT", "0") or 0),
                   help="serve Prometheus /metrics (conspirator_agent_*) on this port; 0: none "
                        "(env CONSPIRATOR_METRICS_PORT)")
    p.add_argument("--metrics-address", default="0.0.0.0",
                   help="address of the metrics endpoint (default %(default)s)")
    p.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"),
                   default=os.environ.get("CONSPIRATOR_EVENT_LOOP", "auto"),
                   help="uvloop (libuv: a quarter less agent CPU per request), the standard "
                        "asyncio loop, or auto: uvloop where it is installed (env "
                        "CONSPIRATOR_EVENT_LOOP)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=main)


def event_loop(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """The loop factory for ``--event-loop`` and its name."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--event-loop uvloop: uvloop is not installed") from None
        else:
            from importlib.metadata import version

            return uvloop.new_event_loop, f"uvloop {version('uvloop')}"
    return asyncio.new_event_loop, "asyncio"


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.cpu:
        os.sched_setaffinity(0, _cpus(args.cpu))
    node = args.node or os.uname().nodename.lower()
    node_token = None
    if args.node_token_file:
        node_token = Path(args.node_token_file).read_text().strip()
    elif args.local_registry:
        node_token = secrets.token_urlsafe(32)
    jobs = dict(t.split("=", 1) for t in args.token)
    tokens: TokenStore
    if args.tokens_dir or args.node_token_file:
        d = DirectoryTokens(args.tokens_dir, args.node_token_file, node)
        tokens = _Chain(d, StaticTokens(jobs, {node: node_token} if node_token else {}))
    else:
        tokens = StaticTokens(jobs, {node: node_token} if node_token else {})
    cfg = AgentConfig(window=args.window, max_payload=args.max_payload,
                      staging_budget=max(args.staging_budget, args.max_payload),
                      request_timeout=args.request_timeout,
                      no_replica_timeout=args.no_replica_timeout,
                      local_slot_bytes=args.local_slot, busy_poll_us=args.busy_poll_us,
                      observe_window=args.observe_window, observe_slice=args.observe_slice,
                      handshake_timeout=args.handshake_timeout,
                      max_handshakes=args.max_handshakes, max_connections=args.max_connections,
                      max_connections_per_job=args.max_connections_per_job,
                      idle_timeout=args.idle_timeout, fair_staging=not args.no_fair_staging,
                      oip_window=args.oip_window)
    if cfg.oip_window < 1:
        raise SystemExit("--oip-window must be at least 1")
    if not 0 < cfg.observe_slice <= cfg.observe_window:
        raise SystemExit("--observe-slice must be positive and at most --observe-window")
    loop_factory, loop_name = event_loop(args.event_loop)
    logging.getLogger("conspirator.dpu_agent").info("event loop: %s", loop_name)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args, cfg, tokens, node, node_token))
    return 0


class _Chain:
    def __init__(self, *stores: TokenStore) -> None:
        self.stores = stores

    def token_for(self, mode: Any, name: str) -> str | None:
        for s in self.stores:
            t = s.token_for(mode, name)
            if t is not None:
                return t
        return None


async def _serve(args: argparse.Namespace, cfg: AgentConfig, tokens: TokenStore, node: str,
                 node_token: str | None) -> None:
    agent = Agent(cfg, tokens, tcp=None if args.no_tcp else args.listen,
                  local_path=args.local_socket, publish_path=args.publish_socket,
                  rdma_device=args.rdma, oip=args.oip_listen)
    await agent.start()
    if args.metrics_port:
        from conspirator.dpu_agent.metrics import serve

        serve(agent, node, args.metrics_port, args.metrics_address)
    registry = None
    if args.local_registry:
        from conspirator.dpu_agent.localregistry import LocalRegistry

        assert node_token is not None
        registry = LocalRegistry(args.local_registry, args.publish_socket, node, node_token)
        await registry.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.stats_file:
        def dump() -> None:
            d = dataclasses.asdict(agent.core.stats)
            d.update(staging_in_use=agent.pool.in_use, staging_peak=agent.pool.peak_in_use,
                     replicas=len(agent.core.replicas))
            tmp = args.stats_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(d))
            tmp.rename(args.stats_file)

        loop.add_signal_handler(signal.SIGUSR1, dump)
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"tcp_port": agent.tcp_port, "oip_port": agent.oip_port,
                                   "pid": os.getpid()}))
        tmp.rename(args.ready_file)
    await stop.wait()
    logging.getLogger("conspirator.dpu_agent").info("stopping: %s", agent.core.stats)
    if args.stats_file:
        dump()
    if registry is not None:
        await registry.close()
    await agent.close()
    with contextlib.suppress(OSError):
        if args.ready_file:
            args.ready_file.unlink()
