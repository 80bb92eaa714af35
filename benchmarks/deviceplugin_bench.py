"""Node-daemon micro-benchmarks: the applier, Allocate over real gRPC, buffer registration.

    python benchmarks/deviceplugin_bench.py [--out benchmarks/results/deviceplugin]

* **apply**: an 8-GPU A100-80GB node (simulated backend, state file on disk, no artificial
  operation delay) re-partitioned back and forth between 7 x 1g.10gb and
  2g.20gb x 3 + 1g.10gb per GPU: wall time of one pass (plan, 80 MIG calls, status
  re-read) and of a no-op pass (converged; what every resync costs).
* **allocate**: ``Allocate`` round trips from a test kubelet to a device plugin over its
  unix socket (gRPC), one device per call.
* **register**: a worker registering a memfd buffer with the registry (the runtime's own
  client, four descriptors by SCM_RIGHTS) until the registry answers, then withdrawing it;
  the registry publishes each to a test agent over its authenticated channel.

Figures are medians and 99th percentiles over the repetitions, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from conspirator.api.v1alpha1 import GPUNodeSpec
from conspirator.deviceplugin.applier import Applier
from conspirator.deviceplugin.kube import PodInfo
from conspirator.deviceplugin.plugin import ContainerAllocation, Device, PluginManager
from conspirator.deviceplugin.podregistry import AgentPublisher, Registry
from conspirator.deviceplugin.simulated import NodeSpec, SimulatedBackend
from conspirator.deviceplugin.testing import TestAgent
from conspirator.deviceplugin.v1beta1 import api_pb2 as pb
from conspirator.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc
from conspirator.runtime.registration import UnixRegistrar
from conspirator.wire.registration import BufferSpec
from conspirator.wire.shm import Geometry, new_eventfd, new_memfd


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(xs: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in xs]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(pct(ms, 0.99), 3), "max_ms": round(max(ms), 3)}


def bench_apply(tmp: Path, rounds: int) -> dict[str, Any]:
    backend = SimulatedBackend(NodeSpec.from_dict(
        {"node": "bench", "gpus": [{"model": "A100-80GB", "count": 8}]}), tmp / "gpus.json")
    small = GPUNodeSpec.model_validate({"gpus": [
        {"index": i, "instances": [{"profile": "1g.10gb", "start": s} for s in range(7)]}
        for i in range(8)]})
    mixed = GPUNodeSpec.model_validate({"gpus": [
        {"index": i, "instances": [{"profile": "2g.20gb", "start": s} for s in (0, 2, 4)]
         + [{"profile": "1g.10gb", "start": 6}]} for i in range(8)]})
    applier = Applier(backend)
    applier.apply(small)
    changes, noops, ops = [], [], []
    for k in range(rounds):
        target = mixed if k % 2 == 0 else small
        r = applier.apply(target)
        assert r.converged
        changes.append(r.duration)
        ops.append(len(r.done))
        t0 = time.perf_counter()
        assert applier.apply(target).done == []
        noops.append(time.perf_counter() - t0)
    return {"reconfigure_8_gpus": summary(changes), "instances_changed_per_pass": ops[0],
            "noop_pass": summary(noops)}


def bench_allocate(tmp: Path, calls: int) -> dict[str, Any]:
    from concurrent import futures

    import grpc

    plugin_dir = tmp / "dp"
    plugin_dir.mkdir()

    class Kubelet(pb_grpc.RegistrationServicer):
        endpoint = ""

        def Register(self, request: pb.RegisterRequest,  # noqa: N802
                     context: grpc.ServicerContext) -> pb.Empty:
            Kubelet.endpoint = request.endpoint
            return pb.Empty()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RegistrationServicer_to_server(Kubelet(), server)
    server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
    server.start()

    def alloc(resource: str, devs: list[Device]) -> ContainerAllocation:
        return ContainerAllocation(envs={"NVIDIA_VISIBLE_DEVICES": devs[0].id},
                                   mounts=[("/run/conspirator", "/run/conspirator/registry",
                                            True)])

    m = PluginManager(plugin_dir, alloc)
    m.set_devices({"conspirator.io/mig-1g.10gb": [Device(id=f"MIG-{i}", start=i)
                                                  for i in range(7)]})
    times = []
    with grpc.insecure_channel(f"unix://{plugin_dir / Kubelet.endpoint}") as ch:
        stub = pb_grpc.DevicePluginStub(ch)
        for i in range(calls):
            req = pb.AllocateRequest(container_requests=[
                pb.ContainerAllocateRequest(devices_ids=[f"MIG-{i % 7}"])])
            t0 = time.perf_counter()
            stub.Allocate(req, timeout=5)
            times.append(time.perf_counter() - t0)
    m.stop()
    server.stop(0)
    return summary(times[10:])


def bench_register(tmp: Path, calls: int) -> dict[str, Any]:
    agent = TestAgent(tmp / "agent.sock", "tok", node="bench").start()
    pod = PodInfo(uid="u", namespace="ns", name="w", phase="Running",
                  labels={"conspirator.io/job": "j"})
    reg = Registry("bench", tmp / "reg.sock", resolve={"u": pod}.get,
                   identify=lambda pid: "u",
                   publisher=AgentPublisher("bench", agent.socket_path, "tok", retry=0.05))
    reg.listen()
    threading.Thread(target=reg.serve, daemon=True).start()
    agent.wait("publisher", lambda: agent.sessions)
    g = Geometry(4, 602112, 4096)  # four 3x224x224 float32 inputs
    spec = BufferSpec(job="ns/j", replica="r", slots=g.slots, slot_bytes=g.slot_bytes,
                      result_bytes=g.result_bytes, shape=(3, 224, 224), dtype="float32")
    fds = [new_memfd("ctl", g.control_bytes), new_eventfd(), new_eventfd(),
           new_memfd("data", g.data_bytes)]
    worker = UnixRegistrar(reg.socket_path)
    times, published = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        bid = worker.register(spec, fds)
        times.append(time.perf_counter() - t0)
        agent.wait("publication", lambda: bid in agent.published)  # noqa: B023
        published.append(time.perf_counter() - t0)
        worker.withdraw(bid)
    worker.close()
    reg.close()
    agent.stop()
    for fd in fds:
        os.close(fd)
    return {"registered": summary(times[5:]), "published_to_agent": summary(published[5:])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/deviceplugin")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpb-", dir="/tmp") as d:
        tmp = Path(d)
        for sub in ("a", "b", "c"):
            (tmp / sub).mkdir()
        result = {
            "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                        "platform": platform.platform()},
            "apply": bench_apply(tmp / "a", args.rounds),
            "allocate_grpc": bench_allocate(tmp / "b", args.calls),
            "register_buffer": bench_register(tmp / "c", max(50, args.calls // 5)),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
