"""Moves that drop nothing (issue 15, part 3): a replica that stops gracefully drains.

SIGTERM makes a worker announce DRAIN (worker -> registry -> agent); the agent sends it
nothing new, its in-flight requests finish and are answered, the agent reports it
drained, and the worker withdraws and exits 0.  Real worker processes, a real client
streaming requests through its window; every request sent gets exactly one answer, and
where another replica takes over (or arrives in time) every answer is a RESPONSE.
"""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from conspirator.client import Client, RequestFailed
from conspirator.dpu_agent.core import AgentConfig
from conspirator.dpu_agent.metrics import registry_for
from conspirator.observe import JobObservation, parse_agent_metrics
from conspirator.runtime import Identity, Replica, UnixRegistrar
from conspirator.runtime.reference import touch
from conspirator.wire.frames import ErrorCode
from conspirator.wire.registration import BufferSpec, Publication
from conspirator.wire.workerregistry import TrustClaims, WorkerRegistry

from .harness import NODE, Node, gather_futures, node, stop_process, wait_for, worker_process
from .test_agent_observe import config as observe_config

JOB = "team-a/resnet"
TOKEN = "drain-token"


def config(**kw: Any) -> AgentConfig:
    """test_agent_observe's agent, with timeouts no drain of these tests reaches."""
    return observe_config(**{"no_replica_timeout": 60.0, "request_timeout": 60.0,
                             "observe_slice": 5.0, **kw})


class Stream:
    """A client sending requests back to back (as many as its window allows) until
    stopped; counts the answers as they come."""

    def __init__(self, n: Node, payload: bytes = b"s" * 512) -> None:
        self.client = Client(n.tcp, JOB, TOKEN)
        self.payload = payload
        self.futs: list[concurrent.futures.Future[Any]] = []
        self._lock = threading.Lock()
        self._answered = 0
        self._errors = 0
        self._stop = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="stream")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                f = self.client.submit(self.payload, timeout=120)
                f.add_done_callback(self._done)
                self.futs.append(f)
        except BaseException as e:  # reported by finish()
            self.failure = e

    def _done(self, f: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._answered += 1
            self._errors += f.exception() is not None

    def answered(self) -> int:
        with self._lock:
            return self._answered

    def errors(self) -> int:
        with self._lock:
            return self._errors

    def wait_answers(self, more: int, what: str) -> None:
        goal = self.answered() + more
        wait_for(lambda: self.answered() >= goal, 120, f"{more} more answers: {what}")

    def finish(self) -> tuple[list[Any], list[BaseException]]:
        self._stop.set()
        self._thread.join(timeout=150)
        assert not self._thread.is_alive(), "the stream is stuck"
        assert self.failure is None, self.failure
        try:
            return gather_futures(self.futs, 150)
        finally:
            self.client.close()


def observed(n: Node) -> JobObservation:
    return parse_agent_metrics(generate_latest(registry_for(n.agent, NODE)).decode(),
                               node=NODE).jobs[JOB]


def terminated(p: subprocess.Popen[bytes]) -> int:
    """SIGTERM (what the kubelet sends a deleted pod) and the exit status."""
    p.send_signal(signal.SIGTERM)
    return p.wait(timeout=120)


def test_a_sigtermed_replica_drains_under_load_and_nothing_is_lost() -> None:
    with node({JOB: TOKEN}, config()) as n:
        a = worker_process(n.registry_path, JOB, "old", delay=0.001)
        b = worker_process(n.registry_path, JOB, "stays", delay=0.001)
        try:
            n.wait_replicas(2)
            stream = Stream(n)
            stream.wait_answers(1000, "before the drain")
            assert terminated(a) == 0  # it drained, withdrew and exited cleanly
            n.wait_replicas(1)
            stream.wait_answers(1000, "after the drain")
            ok, errors = stream.finish()
            assert not errors, errors[:3]
            assert len(ok) == len(stream.futs) >= 2000  # sent == answered, all RESPONSEs
            job = observed(n)
            assert job.drained_total == 1 and job.draining == 0
            assert (job.requests, job.responses, job.errors) == (len(ok), len(ok), 0)
            assert [r.replica for r in job.replicas] == ["stays"]
        finally:
            stop_process(a)
            stop_process(b)


def test_make_before_break_a_new_replica_then_the_old_one_goes() -> None:
    with node({JOB: TOKEN}, config()) as n:
        old = worker_process(n.registry_path, JOB, "old", delay=0.001)
        new = None
        try:
            n.wait_replicas(1)
            stream = Stream(n)
            stream.wait_answers(500, "on the old replica alone")
            new = worker_process(n.registry_path, JOB, "new", delay=0.001)  # make
            n.wait_replicas(2)
            stream.wait_answers(500, "on both")
            assert terminated(old) == 0  # break
            n.wait_replicas(1)
            stream.wait_answers(500, "on the new replica alone")
            ok, errors = stream.finish()
            assert not errors, errors[:3]
            assert len(ok) == len(stream.futs)
            job = observed(n)
            assert job.drained_total == 1 and job.errors == 0
            (r,) = job.replicas
            assert r.replica == "new" and r.completions >= 500
        finally:
            stop_process(old)
            if new is not None:
                stop_process(new)


def test_a_lone_replica_draining_without_replacement_ends_in_explicit_errors() -> None:
    with node({JOB: TOKEN}, config(no_replica_timeout=1.0)) as n:
        lone = worker_process(n.registry_path, JOB, "lone", delay=0.01)
        try:
            n.wait_replicas(1)
            stream = Stream(n)
            stream.wait_answers(50, "before the drain")
            assert terminated(lone) == 0
            n.wait_replicas(0)
            # What arrives now waits for a replica, then fails with the reason.
            wait_for(lambda: stream.errors() >= 10, 120, "requests to time out")
            ok, errors = stream.finish()
            assert len(ok) + len(errors) == len(stream.futs)  # every request answered
            assert len(ok) >= 50 and len(errors) >= 10
            for e in errors:
                assert isinstance(e, RequestFailed) and e.code is ErrorCode.NO_REPLICA, e
                assert "has no replica (waited 1 s)" in str(e)
            job = observed(n)
            assert (job.responses, job.errors, job.drained_total) == (len(ok), len(errors), 1)
        finally:
            stop_process(lone)


def test_a_lone_replica_replaced_in_time_loses_nothing() -> None:
    with node({JOB: TOKEN}, config(no_replica_timeout=60.0)) as n:
        lone = worker_process(n.registry_path, JOB, "lone", delay=0.001)
        new = None
        try:
            n.wait_replicas(1)
            stream = Stream(n)
            stream.wait_answers(300, "before the drain")
            assert terminated(lone) == 0
            n.wait_replicas(0)  # the stream's requests queue at the agent meanwhile
            new = worker_process(n.registry_path, JOB, "replacement", delay=0.001)
            stream.wait_answers(300, "on the replacement")
            ok, errors = stream.finish()
            assert not errors, errors[:3]
            assert len(ok) == len(stream.futs)
            assert observed(n).drained_total == 1
        finally:
            stop_process(lone)
            if new is not None:
                stop_process(new)


def test_the_drain_step_by_step() -> None:
    """A replica whose model is held: draining (no new requests, its own finishing, the
    queue going to the other replica), drained, released; the metrics show each step."""
    release = threading.Event()

    def held(x: Any) -> Any:
        release.wait(120)
        return touch(x)

    with node({JOB: TOKEN}, config()) as n:
        going = n.worker(JOB, "going", held, slots=2)
        n.wait_replicas(1)
        with Client(n.tcp, JOB, TOKEN) as c:
            first = [c.submit(b"1" * 64) for _ in range(2)]  # in going's slots
            wait_for(lambda: observed(n).outstanding == 2, 30, "two requests in flight")
            going.drain()
            wait_for(lambda: observed(n).draining == 1, 30, "the replica to drain")
            (r,) = observed(n).replicas
            assert (r.replica, r.state, r.outstanding) == ("going", "draining", 2)
            later = [c.submit(b"2" * 64) for _ in range(4)]  # wait for another replica
            wait_for(lambda: observed(n).waiting == 4, 30, "the new requests to queue")
            with pytest.raises(RequestFailed, match="draining") as refused:
                c.request(b"3", target=going.buffer_id, timeout=30)
            assert refused.value.code is ErrorCode.TARGET_REFUSED
            n.worker(JOB, "stays", touch, slots=2)
            ok_later, errors = gather_futures(later, 60)
            assert len(ok_later) == 4 and not errors
            assert {resp.buffer_id for resp in ok_later} != {going.buffer_id}
            release.set()  # the drained replica's own requests finish and are answered
            ok_first, errors = gather_futures(first, 60)
            assert len(ok_first) == 2 and not errors
            assert {resp.buffer_id for resp in ok_first} == {going.buffer_id}
            wait_for(lambda: going.drain_result == "drained", 30, "the worker to see it")
            going.close()  # what runtime.serve does once the loop ends: withdraw
            n.wait_replicas(1)
            job = observed(n)
            assert job.drained_total == 1 and job.draining == 0 and job.errors == 1
            assert [r.replica for r in job.replicas] == ["stays"]
            assert going.drain_result == "drained"


def test_drain_is_carried_in_the_publication_and_only_for_the_owner() -> None:
    spec = BufferSpec(job=JOB, replica="r", slots=2, slot_bytes=64, result_bytes=64)
    pub = Publication(3, spec, draining=True)
    assert Publication.from_dict(pub.to_dict()) == pub
    assert Publication.from_dict({**pub.to_dict(), "draining": False}).draining is False
    assert Publication.from_dict({k: v for k, v in pub.to_dict().items()
                                  if k != "draining"}).draining is False  # older registries
    with node({JOB: TOKEN}, config()) as n:
        rep = n.worker(JOB, "mine", touch, slots=2)
        n.wait_replicas(1)
        other = UnixRegistrar(Path(n.registry_path))
        try:
            assert other.drain(rep.buffer_id) is False  # not this connection's buffer
        finally:
            other.close()
        assert observed(n).draining == 0
        assert n.registry is not None
        assert not n.registry.entries[rep.buffer_id].draining


def test_a_drain_nobody_finishes_ends_at_the_workers_timeout(tmp_path: Path) -> None:
    """A registry with no agent behind it accepts the drain, but no agent will ever say
    drained: the worker stops at its drain timeout (its buffer then goes with it)."""
    registry = WorkerRegistry("node-x", tmp_path / "r.sock", TrustClaims())  # no publisher
    registry.start()
    rep = Replica((64,), "uint8", slots=2, result_bytes=64, identity=Identity(JOB, "r"))
    try:
        rep.register(UnixRegistrar(tmp_path / "r.sock"))
        rep.drain_timeout = 0.2
        t = threading.Thread(target=rep.serve, args=(touch,), daemon=True)
        t.start()
        rep.drain()
        t.join(timeout=60)
        assert not t.is_alive() and rep.drain_result == "timeout"
        assert registry.entries[rep.buffer_id].draining
    finally:
        rep.close()
        registry.close()


def test_a_drain_that_cannot_be_announced_stops_at_once() -> None:
    rep = Replica((64,), "uint8", slots=2, result_bytes=64, identity=Identity(JOB, "r"))
    try:  # never registered: nobody to announce the drain to
        t = threading.Thread(target=rep.serve, args=(touch,), daemon=True)
        t.start()
        rep.drain()
        t.join(timeout=60)
        assert not t.is_alive() and rep.drain_result == "refused"
    finally:
        rep.close()


class _NoticingLock:
    """A lock that says when a thread starts waiting for it."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.waiting = threading.Event()

    def __enter__(self) -> None:
        self.waiting.set()
        self.inner.acquire()

    def __exit__(self, *_: object) -> None:
        self.inner.release()


def test_watching_the_registration_does_not_hold_the_lock_for_a_reply_it_did_not_take(
        tmp_path: Path) -> None:
    """The worker's watcher wakes for a reply that the drain call then takes: it must not
    wait on the emptied socket holding the lock (the CI run where a drained worker hung
    in withdraw for the socket's 10 s timeout and was killed)."""
    import socket

    path = str(tmp_path / "r.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(1)
    reg = UnixRegistrar(path, timeout=600.0)  # the old bug would hold the lock this long
    sock = reg._connect()
    peer, _ = srv.accept()
    lock = _NoticingLock()
    reg._lock = lock  # type: ignore[assignment]
    result: list[bool] = []
    with lock:  # a call in flight on another thread
        lock.waiting.clear()
        watcher = threading.Thread(target=lambda: result.append(reg.wait_closed(None)))
        watcher.start()
        peer.send(b"a reply")  # wakes the watcher, which now waits for the lock
        assert lock.waiting.wait(30)
        assert sock.recv(64) == b"a reply"  # the call takes its reply
    watcher.join(60)
    assert not watcher.is_alive() and result == [False]  # not closed, and it let go
    peer.close()  # a real hang-up still reads as closed
    assert reg.wait_closed(30)
    reg.close()
    srv.close()
