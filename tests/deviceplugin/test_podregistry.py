"""The buffer registry: real unix sockets, memfds and eventfds passed with SCM_RIGHTS, the
worker's own client (conspirator.runtime), and a test agent on the publishing side."""

from __future__ import annotations

import mmap
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conspirator.deviceplugin.kube import PodInfo
from conspirator.deviceplugin.metrics import Metrics
from conspirator.deviceplugin.podregistry import (
    AgentPublisher,
    PodIdentity,
    Registry,
    pod_uid_of_cgroup,
    pod_uid_of_pid,
)
from conspirator.deviceplugin.testing import TestAgent
from conspirator.runtime.registration import RegistrationError, UnixRegistrar
from conspirator.wire.frames import MsgType, encode
from conspirator.wire.registration import BufferSpec, recv_packet, send_frame
from conspirator.wire.shm import Geometry, new_eventfd, new_memfd
from conspirator.wire.workerregistry import IdentityPolicy, TrustClaims, WorkerRegistry, fd_kind

TOKEN = "node-token-for-tests"
UID = "0f4c6a52-1b9e-4f0e-a8c3-7d1e5b2a9c10"
POD = PodInfo(uid=UID, namespace="team-a", name="resnet-0", phase="Running",
              labels={"conspirator.io/job": "resnet"})


class Buffer:
    """A worker's buffer, made as conspirator.runtime makes it."""

    def __init__(self, slots: int = 2, slot_bytes: int = 4096, result_bytes: int = 1024,
                 seal: bool = True) -> None:
        self.geometry = Geometry(slots, slot_bytes, result_bytes)
        self.ctl = new_memfd("ctl", self.geometry.control_bytes)
        self.doorbell = new_eventfd()
        self.completion = new_eventfd()
        if seal:
            self.data = new_memfd("data", self.geometry.data_bytes)
        else:
            self.data = os.memfd_create("data")
            os.ftruncate(self.data, self.geometry.data_bytes)
        self.fds = [self.ctl, self.doorbell, self.completion, self.data]

    def spec(self, job: str = "team-a/resnet") -> BufferSpec:
        g = self.geometry
        return BufferSpec(job=job, replica="r0", slots=g.slots, slot_bytes=g.slot_bytes,
                          result_bytes=g.result_bytes, shape=(1024,), dtype="float32")

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def agent(sockdir: Path) -> Iterator[TestAgent]:
    a = TestAgent(sockdir / "agent" / "publish.sock", TOKEN).start()
    yield a
    a.stop()


@pytest.fixture
def registry(sockdir: Path, agent: TestAgent) -> Iterator[Registry]:
    pods = {UID: POD}
    me = os.getpid()
    r = Registry("node-1", sockdir / "reg" / "registry.sock", resolve=pods.get,
                 identify=lambda pid: UID if pid == me else None,
                 devices_of=lambda pod: ["MIG-1234"] if pod.uid == UID else [],
                 publisher=AgentPublisher("node-1", agent.socket_path, TOKEN, retry=0.05),
                 metrics=Metrics("node-1"))
    r.listen()
    threading.Thread(target=r.serve, daemon=True).start()
    agent.wait("the publisher to connect", lambda: agent.sessions)
    yield r
    r.close()


@pytest.fixture
def buf() -> Iterator[Buffer]:
    b = Buffer()
    yield b
    b.close()


def test_register_publish_and_withdraw_on_exit(registry: Registry, agent: TestAgent,
                                               buf: Buffer) -> None:
    worker = UnixRegistrar(registry.socket_path)
    bid = worker.register(buf.spec(), buf.fds)
    got = agent.wait("the publication", lambda: agent.published.get(bid))
    pub = agent.published[bid].publication
    assert got and pub.buffer_id == bid and pub.node == "node-1" and pub.pod_uid == UID
    assert pub.spec == buf.spec()
    assert pub.extra["pod"] == "team-a/resnet-0"
    assert pub.extra["devices"] == "MIG-1234"
    assert pub.extra["peer_pid"] == str(os.getpid())
    assert registry.agent_connected() and registry.count() == 1
    # The agent holds the very same memory: what it writes, the worker reads.
    fds = agent.published[bid].fds
    assert [fd_kind(fd) for fd in fds] == ["memfd", "eventfd", "eventfd", "memfd"]
    size = buf.geometry.data_bytes
    with mmap.mmap(fds[3], size) as theirs, mmap.mmap(buf.data, size) as mine:
        theirs[:11] = b"from the nic"[:11]
        assert mine[:11] == b"from the ni"
    os.eventfd_write(fds[1], 1)  # the agent rings the worker's doorbell
    assert os.eventfd_read(buf.doorbell) == 1
    assert registry.metrics is not None and registry.metrics.registry.get_sample_value(
        "conspirator_node_registered_buffers", {"node": "node-1"}) == 1

    worker.close()  # the worker exits: its connection closes
    agent.wait("the withdrawal", lambda: (bid, "worker disconnected") in agent.withdrawn)
    assert registry.count() == 0 and bid not in agent.published


def test_explicit_withdraw(registry: Registry, agent: TestAgent, buf: Buffer) -> None:
    worker = UnixRegistrar(registry.socket_path)
    bid = worker.register(buf.spec(), buf.fds)
    agent.wait("the publication", lambda: bid in agent.published)
    worker.withdraw(bid)
    agent.wait("the withdrawal", lambda: (bid, "worker withdrew") in agent.withdrawn)
    assert registry.count() == 0
    worker.close()


@pytest.mark.parametrize(("job", "why"), [
    ("team-b/resnet", "runs no worker of job team-b/resnet"),
    ("team-a/bert", "runs no worker of job team-a/bert"),
])
def test_a_pod_registers_only_for_its_own_job(registry: Registry, buf: Buffer, job: str,
                                              why: str) -> None:
    worker = UnixRegistrar(registry.socket_path)
    with pytest.raises(RegistrationError, match="REGISTRATION_REFUSED") as err:
        worker.register(buf.spec(job), buf.fds)
    assert why in str(err.value)
    # The refusal keeps the session: the right job still registers.
    assert worker.register(buf.spec(), buf.fds) > 0
    worker.close()


def test_the_job_may_come_from_the_pod_spec(sockdir: Path, buf: Buffer) -> None:
    pod = PodInfo(uid=UID, namespace="team-a", name="w", phase="Running",
                  env={"CONSPIRATOR_JOB": ("a-very-long-job-name",)})
    r = Registry("n", sockdir / "r.sock", resolve={UID: pod}.get, identify=lambda pid: UID)
    r.listen()
    threading.Thread(target=r.serve, daemon=True).start()
    try:
        w = UnixRegistrar(r.socket_path)
        assert w.register(buf.spec("team-a/a-very-long-job-name"), buf.fds) > 0
        w.close()
    finally:
        r.close()


def test_callers_outside_pods_are_refused(sockdir: Path, buf: Buffer) -> None:
    r = Registry("n", sockdir / "r.sock", resolve={UID: POD}.get)  # the real /proc lookup
    r.listen()
    threading.Thread(target=r.serve, daemon=True).start()
    try:
        w = UnixRegistrar(r.socket_path)
        with pytest.raises(RegistrationError, match=f"process {os.getpid()} is not in a pod"):
            w.register(buf.spec(), buf.fds)
        w.close()
    finally:
        r.close()


def test_bad_descriptors_are_refused(registry: Registry) -> None:
    worker = UnixRegistrar(registry.socket_path)
    unsealed = Buffer(seal=False)
    small = Buffer()
    tiny = new_memfd("tiny", 4096)
    try:
        with pytest.raises(RegistrationError, match="seal"):
            worker.register(unsealed.spec(), unsealed.fds)
        with pytest.raises(RegistrationError, match=r"descriptors are \['eventfd'"):
            worker.register(small.spec(), [small.doorbell, small.ctl, small.completion,
                                           small.data])
        with pytest.raises(RegistrationError, match="needs"):
            worker.register(small.spec(), [small.ctl, small.doorbell, small.completion, tiny])
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(str(registry.socket_path))
        from conspirator.wire.registration import register_frame

        send_frame(sock, register_frame(small.spec(), 7), small.fds[:2])
        reply, _ = recv_packet(sock, frozenset({MsgType.ERROR}))
        assert b"comes with 4 descriptors, got 2" in reply.body
        sock.close()
    finally:
        unsealed.close()
        small.close()
        os.close(tiny)
        worker.close()
    assert registry.count() == 0


def test_a_malformed_frame_closes_the_connection(registry: Registry) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(registry.socket_path))
    send_frame(sock, encode(MsgType.REGISTER, b"{not json", 1))
    reply, _ = recv_packet(sock, frozenset({MsgType.ERROR}))
    assert reply.type is MsgType.ERROR
    assert sock.recv(100) == b""  # closed
    sock.close()
    # The registry is fine.
    s2 = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s2.connect(str(registry.socket_path))
    send_frame(s2, encode(MsgType.PING, b"", 3))
    assert recv_packet(s2, frozenset({MsgType.PONG}))[0].header.request_id == 3
    s2.close()


def test_buffers_of_pods_that_exit_are_withdrawn(registry: Registry, agent: TestAgent,
                                                 buf: Buffer) -> None:
    worker = UnixRegistrar(registry.socket_path)
    bid = worker.register(buf.spec(), buf.fds)
    agent.wait("the publication", lambda: bid in agent.published)
    assert registry.prune({UID}) == 0
    assert registry.prune(set()) == 1  # the API server no longer lists the pod
    agent.wait("the withdrawal", lambda: (bid, "pod exited") in agent.withdrawn)
    assert worker.wait_closed(10)  # and the registry hung up on it
    worker.close()


def test_an_agent_restart_gets_every_buffer_again(registry: Registry, agent: TestAgent,
                                                  buf: Buffer) -> None:
    worker = UnixRegistrar(registry.socket_path)
    bid = worker.register(buf.spec(), buf.fds)
    agent.wait("the publication", lambda: bid in agent.published)
    agent.stop()
    assert registry.publisher is not None
    again = TestAgent(agent.socket_path, TOKEN).start()
    try:
        again.wait("the republication", lambda: bid in again.published)
        assert again.published[bid].publication.pod_uid == UID
    finally:
        again.stop()
        worker.close()


def test_a_wrong_token_is_refused(sockdir: Path) -> None:
    a = TestAgent(sockdir / "a.sock", TOKEN).start()
    p = AgentPublisher("node-1", a.socket_path, "not-the-token", retry=0.05)
    p.start()
    try:
        a.wait("a refusal", lambda: a.refused and "AUTH_FAILED" in p.last_error)
        assert not p.connected and a.sessions == 0
    finally:
        p.stop()
        a.stop()


@pytest.mark.parametrize(("text", "uid"), [
    # cgroup v1, cgroupfs driver (the e2e node)
    ("12:pids:/conspirator-e2e/kubepods/besteffort/pod0f4c6a52-1b9e-4f0e-a8c3-7d1e5b2a9c10/"
     "3b1f0c\n0::/\n", UID),
    # systemd driver
    ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f4c6a52_1b9e_4f0e_"
     "a8c3_7d1e5b2a9c10.slice/cri-containerd-3b1f.scope\n", UID),
    ("0::/user.slice/user-0.slice/session-1.scope\n", None),
])
def test_pod_uid_from_cgroup(text: str, uid: str | None) -> None:
    assert pod_uid_of_cgroup(text) == uid


def test_pod_uid_of_this_process_is_none() -> None:
    assert pod_uid_of_pid(os.getpid()) is None
    assert pod_uid_of_pid(2**22 + 12345) is None


# ------------------------------------------------------- one registry, two identity policies


def policies() -> dict[str, IdentityPolicy]:
    return {
        "pod": PodIdentity("node-1", {UID: POD}.get, identify=lambda pid: UID),
        "trust": TrustClaims(),
    }


@pytest.fixture(params=["pod", "trust"])
def policy_registry(request: pytest.FixtureRequest, sockdir: Path,
                    agent: TestAgent) -> Iterator[tuple[str, WorkerRegistry]]:
    r = WorkerRegistry("node-1", sockdir / "wr.sock", policies()[request.param],
                       AgentPublisher("node-1", agent.socket_path, TOKEN, retry=0.05))
    r.start()
    agent.wait("the publisher to connect", lambda: agent.sessions)
    yield request.param, r
    r.close()


def test_both_policies_register_publish_and_withdraw(policy_registry: tuple[str, WorkerRegistry],
                                                     agent: TestAgent, buf: Buffer) -> None:
    kind, registry = policy_registry
    worker = UnixRegistrar(registry.socket_path)
    bid = worker.register(buf.spec(), buf.fds)
    agent.wait("the publication", lambda: bid in agent.published)
    pub = agent.published[bid].publication
    assert pub.spec == buf.spec() and pub.node == "node-1"
    if kind == "pod":  # the node daemon's: who the caller is travels with the buffer
        assert pub.pod_uid == UID and pub.extra == {"pod": "team-a/resnet-0",
                                                    "peer_pid": str(os.getpid())}
    else:  # the agent's --local-registry: the claim, nothing more
        assert pub.pod_uid == "" and pub.extra == {}
    [entry] = registry.entries.values()
    assert entry.caller.pid == os.getpid()
    # A registration that races the publisher's start goes out in its resync snapshot,
    # before the publisher calls itself connected.
    agent.wait("the publisher to call itself connected", registry.agent_connected)
    worker.close()
    agent.wait("the withdrawal", lambda: (bid, "worker disconnected") in agent.withdrawn)
    assert registry.count() == 0


def test_only_the_pod_policy_checks_the_job(policy_registry: tuple[str, WorkerRegistry],
                                            buf: Buffer) -> None:
    kind, registry = policy_registry
    worker = UnixRegistrar(registry.socket_path)
    try:
        if kind == "pod":
            with pytest.raises(RegistrationError, match="runs no worker of job team-b/resnet"):
                worker.register(buf.spec("team-b/resnet"), buf.fds)
        else:
            assert worker.register(buf.spec("team-b/resnet"), buf.fds) > 0
    finally:
        worker.close()


def test_both_policies_check_the_descriptors(policy_registry: tuple[str, WorkerRegistry]
                                             ) -> None:
    _, registry = policy_registry
    worker = UnixRegistrar(registry.socket_path)
    unsealed = Buffer(seal=False)
    try:
        with pytest.raises(RegistrationError, match="seal"):
            worker.register(unsealed.spec(), unsealed.fds)
    finally:
        unsealed.close()
        worker.close()
    assert registry.count() == 0


def test_the_trust_policy_may_still_refuse(sockdir: Path, buf: Buffer) -> None:
    policy = TrustClaims(lambda pid, spec: f"pid {pid} is not welcome" if spec.replica == "r0"
                         else None)
    r = WorkerRegistry("n", sockdir / "t.sock", policy)
    r.start()
    try:
        w = UnixRegistrar(r.socket_path)
        with pytest.raises(RegistrationError, match=f"REGISTRATION_REFUSED.*pid {os.getpid()}"):
            w.register(buf.spec(), buf.fds)
        w.close()
    finally:
        r.close()


def test_withdraw_callers_hangs_up_on_them(sockdir: Path, buf: Buffer) -> None:
    r = WorkerRegistry("n", sockdir / "c.sock", TrustClaims())
    r.start()
    try:
        w = UnixRegistrar(r.socket_path)
        w.register(buf.spec(), buf.fds)
        assert r.withdraw_callers(lambda c: c.pid != os.getpid(), "not us") == 0
        assert r.withdraw_callers(lambda c: c.pid == os.getpid(), "us") == 1
        assert r.count() == 0 and w.wait_closed(10)
        w.close()
    finally:
        r.close()
