"""``conspirator loadgen``: drive a job's data path through its agent and measure it.

Closed loop (``--mode closed``): ``--concurrency`` requests are kept outstanding, each
answered request is followed by the next.  Open loop (``--mode open``): requests arrive as
a Poisson process at ``--rate`` per second whatever the answers do, and latency counts
from each request's *scheduled* arrival, so waiting for the window (backpressure) shows in
the latency instead of hiding it.

Every request ends as ``ok`` or as a failure with its error code; ``lost`` (sent but
neither) must be 0, and the exit code is 1 when it is not (or, with ``--strict``, when
anything failed).  A progress bar runs on stderr; the summary has throughput, latency
percentiles, a latency histogram and how requests spread over the job's replicas.

``--protocol oip`` sends each request as a KServe / Triton Open Inference Protocol
``ModelInfer`` call (gRPC) to the agent's OIP listener instead of the native protocol
(:mod:`conspirator.oip.client`); failures count by their gRPC status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from conspirator.client import AsyncClient, ConnectionLost, RequestFailed, Response
from conspirator.oip.client import OipClient, OipFailed

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def parse_size(text: str) -> int:
    """``4096``, ``4KiB``, ``1MiB``, ``64k``, ``1M``."""
    t = text.strip().lower().replace("ib", "").replace("b", "")
    mult = 1
    if t and t[-1] in "kmg":
        mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[t[-1]]
        t = t[:-1]
    try:
        n = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"negative size: {text!r}")
    return n


@dataclass
class LoadConfig:
    address: str
    job: str
    token: str
    mode: str = "closed"  # closed | open
    concurrency: int = 8
    rate: float = 100.0  # open loop, requests/s
    requests: int = 1000  # 0: run for `duration`
    duration: float = 0.0
    payload_size: int = 4096
    connections: int = 1
    target: int = 0
    timeout: float = 30.0
    warmup: int = 0
    max_outstanding: int = 100_000
    protocol: str = "native"  # native | oip


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, ok requests
    by_buffer: dict[int, int] = field(default_factory=dict)
    payload_size: int = 0
    not_sent: int = 0  # open loop: arrivals beyond max_outstanding, or after a fatal error

    @property
    def lost(self) -> int:
        return self.sent - self.ok - sum(self.failed.values())

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def percentiles(self) -> dict[str, float]:
        if not self.latencies:
            return {}
        a = np.asarray(self.latencies)
        out = {f"p{p:g}": float(np.percentile(a, p)) for p in PERCENTILES}
        out["mean"] = float(a.mean())
        out["max"] = float(a.max())
        return out

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "latencies"}
        d.update(lost=self.lost, throughput_rps=self.throughput,
                 throughput_bytes_s=self.throughput * self.payload_size,
                 latency_s=self.percentiles(),
                 histogram=histogram(self.latencies))
        return d


def histogram(latencies: Sequence[float]) -> list[tuple[float, float, int]]:
    """(low, high, count) over power-of-two microsecond buckets that hold anything."""
    if not latencies:
        return []
    us = np.maximum(np.asarray(latencies) * 1e6, 1.0)
    idx = np.floor(np.log2(us)).astype(int)
    counts = Counter(idx.tolist())
    return [(2.0 ** k / 1e6, 2.0 ** (k + 1) / 1e6, counts[k])
            for k in range(min(counts), max(counts) + 1)]


Progress = Callable[[int, int], None]  # (done, total or 0)


class LoadClient(Protocol):
    """What the load loops need of a connection (:class:`AsyncClient` is one)."""

    async def send(self, payload: bytes, target: int = 0) -> asyncio.Future[Response]: ...

    async def close(self) -> None: ...


Connect = Callable[[LoadConfig], Awaitable[LoadClient]]


async def _connect(cfg: LoadConfig) -> LoadClient:
    if cfg.protocol == "oip":
        return await OipClient.connect(cfg.address, cfg.job, cfg.token)
    return await AsyncClient.connect(cfg.address, cfg.job, cfg.token)


async def run(cfg: LoadConfig, progress: Progress | None = None,
              connect: Connect = _connect) -> LoadResult:
    """Run the load; never raises for a failed request (they are counted).

    ``connect`` makes each connection (benchmarks plug in clients of other transports with
    the same ``send``/``close`` interface)."""
    payload = np.random.default_rng(0).bytes(cfg.payload_size)
    clients = [await connect(cfg) for _ in range(max(cfg.connections, 1))]
    res = LoadResult(payload_size=cfg.payload_size)
    try:
        for i in range(cfg.warmup):
            with _suppress_request_errors():
                await (await clients[i % len(clients)].send(payload, cfg.target))
        if cfg.mode == "open":
            await _open_loop(cfg, clients, payload, res, progress)
        else:
            await _closed_loop(cfg, clients, payload, res, progress)
    finally:
        for c in clients:
            await c.close()
    return res


class _suppress_request_errors:  # noqa: N801 - used like contextlib.suppress
    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, *_: object) -> bool:
        return typ is not None and issubclass(typ, RequestFailed | OipFailed)


async def _one(client: LoadClient, payload: bytes, cfg: LoadConfig,
               res: LoadResult, start: float) -> None:
    res.sent += 1
    try:
        fut = await client.send(payload, cfg.target)
        r = await asyncio.wait_for(asyncio.shield(fut), cfg.timeout)
    except TimeoutError:
        res.failed["CLIENT_TIMEOUT"] = res.failed.get("CLIENT_TIMEOUT", 0) + 1
        return
    except (RequestFailed, OipFailed) as e:
        name = e.code.name or str(e.code)
        res.failed[name] = res.failed.get(name, 0) + 1
        return
    res.ok += 1
    res.latencies.append(time.perf_counter() - start)
    res.by_buffer[r.buffer_id] = res.by_buffer.get(r.buffer_id, 0) + 1


async def _closed_loop(cfg: LoadConfig, clients: list[LoadClient],
                       payload: bytes, res: LoadResult,
                       progress: Progress | None) -> None:
    total = cfg.requests
    t0 = time.perf_counter()
    deadline = t0 + cfg.duration if cfg.duration > 0 else math.inf
    issued = 0

    async def worker(k: int) -> None:
        nonlocal issued
        client = clients[k % len(clients)]
        while (total == 0 or issued < total) and time.perf_counter() < deadline:
            issued += 1
            await _one(client, payload, cfg, res, time.perf_counter())
            if progress is not None:
                progress(res.ok + sum(res.failed.values()), total)
            if isinstance(getattr(client, "_failure", None), ConnectionLost):
                return

    await asyncio.gather(*(worker(k) for k in range(max(cfg.concurrency, 1))))
    res.elapsed = time.perf_counter() - t0


async def _open_loop(cfg: LoadConfig, clients: list[LoadClient],
                     payload: bytes, res: LoadResult,
                     progress: Progress | None) -> None:
    rng = random.Random(1)
    total = cfg.requests
    t0 = time.perf_counter()
    end = t0 + cfg.duration if cfg.duration > 0 else math.inf
    tasks: set[asyncio.Task[None]] = set()
    next_at = t0
    n = 0
    while (total == 0 or n < total) and next_at < end:
        now = time.perf_counter()
        if next_at > now:
            await asyncio.sleep(next_at - now)
        if len(tasks) >= cfg.max_outstanding:
            res.not_sent += 1
        else:
            t = asyncio.get_running_loop().create_task(
                _one(clients[n % len(clients)], payload, cfg, res, next_at))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        n += 1
        next_at += rng.expovariate(cfg.rate)
        if progress is not None and n % 64 == 0:
            progress(res.ok + sum(res.failed.values()), total)
    if tasks:
        await asyncio.gather(*tasks)
    res.elapsed = time.perf_counter() - t0


# ---------------------------------------------------------------------- the command


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "loadgen", help="send requests to a job through its DPU agent and measure them",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--address", required=True,
                   help="tcp://host:port, unix:///path (same host) or rdma://host:port; "
                   "with --protocol oip, grpc://host:port (the agent's --oip-listen)")
    p.add_argument("--protocol", choices=("native", "oip"), default="native",
                   help="the agent's own protocol, or the KServe / Triton Open Inference "
                   "Protocol (gRPC ModelInfer)")
    p.add_argument("--job", required=True, help="namespace/name of the InferenceJob")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--token", help="the job's token")
    tok.add_argument("--token-file", type=Path, help="file holding the job's token")
    p.add_argument("--mode", choices=("closed", "open"), default="closed")
    p.add_argument("--concurrency", type=int, default=8,
                   help="closed loop: outstanding requests")
    p.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    p.add_argument("--requests", type=int, default=1000, help="requests to send (0: --duration)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run")
    p.add_argument("--payload-size", type=parse_size, default=4096,
                   help="request size, e.g. 4KiB, 1MiB")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--target", type=int, default=0,
                   help="send every request to this buffer id (0: let the agent choose)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request seconds")
    p.add_argument("--warmup", type=int, default=0, help="requests sent before measuring")
    p.add_argument("--json", type=Path, help="also write the summary here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 if any request failed")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from conspirator.cli import UsageError

    token = args.token if args.token is not None else args.token_file.read_text().strip()
    if args.requests <= 0 and args.duration <= 0:
        raise UsageError("give --requests or --duration")
    if args.mode == "open" and args.rate <= 0:
        raise UsageError("--rate must be positive")
    if args.protocol == "oip" and args.target:
        raise UsageError("--target has no Open Inference Protocol spelling")
    cfg = LoadConfig(address=args.address, job=args.job, token=token, mode=args.mode,
                     concurrency=args.concurrency, rate=args.rate, requests=args.requests,
                     duration=args.duration, payload_size=args.payload_size,
                     connections=args.connections, target=args.target, timeout=args.timeout,
                     warmup=args.warmup, protocol=args.protocol)
    try:
        show = (not args.no_progress and sys.stderr.isatty()) or \
            os.environ.get("CONSPIRATOR_PROGRESS") == "1"
        res = asyncio.run(_run_with_progress(cfg, show))
    except (OSError, RequestFailed, OipFailed, ValueError) as e:
        print(f"conspirator loadgen: error: {e}", file=sys.stderr)
        return 1
    report(res, cfg)
    if args.json:
        args.json.write_text(json.dumps(res.summary(), indent=2) + "\n")
    if res.lost:
        return 1
    return 1 if args.strict and res.failed else 0


async def _run_with_progress(cfg: LoadConfig, show: bool) -> LoadResult:
    if not show:
        return await run(cfg)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("loadgen {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(f"{cfg.payload_size} B", total=cfg.requests or None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done)

        return await run(cfg, update)


def _fmt_s(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def report(res: LoadResult, cfg: LoadConfig, out: Any = None) -> None:
    out = out or sys.stdout
    p = res.percentiles()
    mb = res.throughput * cfg.payload_size / 1e6
    print(f"{cfg.mode} loop, {cfg.payload_size} B payloads, "
          f"{cfg.concurrency if cfg.mode == 'closed' else f'{cfg.rate:g}/s'}: "
          f"sent {res.sent}, ok {res.ok}, failed {sum(res.failed.values())}, lost {res.lost}",
          file=out)
    for code, n in sorted(res.failed.items()):
        print(f"  failed {code}: {n}", file=out)
    if res.not_sent:
        print(f"  not sent (more than {cfg.max_outstanding} outstanding): {res.not_sent}",
              file=out)
    print(f"throughput: {res.throughput:.1f} req/s, {mb:.1f} MB/s over {res.elapsed:.2f} s",
          file=out)
    if p:
        print("latency: " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in p.items()), file=out)
        hist = histogram(res.latencies)
        peak = max(c for _, _, c in hist)
        for lo, hi, c in hist:
            bar = "#" * max(1 if c else 0, round(40 * c / peak))
            print(f"  {_fmt_s(lo):>9} - {_fmt_s(hi):<9} {c:>8} {bar}", file=out)
    if res.by_buffer:
        spread = ", ".join(f"buffer {b}: {n}" for b, n in sorted(res.by_buffer.items()))
        print(f"replicas: {spread}", file=out)
