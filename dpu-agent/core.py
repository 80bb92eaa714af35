"""The agent's data-path core, independent of transports: replicas, dispatch, completions.

A request (:class:`Pending`) arrives from a session with its bytes in a staging buffer.
The dispatcher sends it to the job's replica with the least outstanding work weighted by
the replica's throughput from the placement (``(outstanding bytes + this request) /
weight``, among replicas with a free slot), or queues it on the job until a slot frees.
Submission is: copy engine (staging -> slot), record the slot's tag, push
``(tag, slot, length)`` on the replica's submission ring, ring its doorbell.  The worker
answers on the completion ring and rings the completion eventfd, which wakes the event
loop here; the result goes back on the request's own connection.

Every request ends in exactly one answer: a RESPONSE, or an ERROR naming why (worker error,
replica gone, timeout, no replica, shutting down).  A request whose session has gone has
nobody to answer and is dropped (its slot is still reclaimed when the worker finishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from conspirator.dpu_agent.config import AgentConfig, Stats
from conspirator.dpu_agent.load import BOUNDS, JobLoad
from conspirator.dpu_agent.state import JobState, Pending, ReplicaHandle, Session
from conspirator.wire.frames import BufferInfo, ErrorCode
from conspirator.wire.native import Impl, impl
from conspirator.wire.registration import Publication
from conspirator.wire.shm import LayoutError, Status, WorkerState

__all__ = ["MAX_BAD_COMPLETIONS", "AgentConfig", "AgentCore", "Stats", "no_kick"]

log = logging.getLogger("conspirator.dpu_agent")

_TAG_BITS = 40
_TAG_MASK = (1 << _TAG_BITS) - 1
_STATUS_ERRORS = {int(Status.RESULT_TOO_LARGE): ErrorCode.RESULT_TOO_LARGE,
                  int(Status.BAD_INPUT): ErrorCode.BAD_INPUT}
#: A replica whose completions are this often nonsense is dropped.
MAX_BAD_COMPLETIONS = 16


class AgentCore:
    def __init__(self, config: AgentConfig, native: Impl | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.native = native or impl
        self.loop = loop
        self.jobs: dict[str, JobState] = {}
        self.replicas: dict[int, ReplicaHandle] = {}
        self.epoch = secrets.randbits(63 - _TAG_BITS) or 1
        self._tag = 0
        self.stats = Stats()
        self.shutting_down = False
        self._to_ring: set[str] = set()
        # Called on every data-path event (the busy poller's hook; a no-op without it).
        self.kick: Callable[[], None] = no_kick
        self._completion_wakeups = True
        # A batch (the frames of one read, the completions of one wake-up): doorbells are
        # rung and answers written once, when it ends, without a trip through the loop.
        # (Public: the transports' hot paths open and close batches inline.)
        self.batch_depth = 0
        self.batch_ring: set[str] = set()
        self.batch_flush: list[Any] = []

    @property
    def batching(self) -> bool:
        return self.batch_depth > 0

    def drain_batch(self) -> None:
        """The end of the outermost batch: ring the doorbells, write the answers."""
        if self.batch_ring:
            names, self.batch_ring = self.batch_ring, set()
            for name in names:
                job = self.jobs.get(name)
                if job is not None:
                    self._ring_all(job)
        if self.batch_flush:
            sessions, self.batch_flush = self.batch_flush, []
            for s in sessions:
                s.flush()

    def flush_later(self, session: Any) -> None:
        """``session.flush()`` when the current batch ends (its answers leave together)."""
        self.batch_flush.append(session)

    # ------------------------------------------------------------------ replicas

    def served_jobs(self) -> int:
        """Jobs with a replica here (taking requests or draining): the staging shares."""
        return sum(1 for j in self.jobs.values() if j.replicas or j.draining)

    def job(self, name: str) -> JobState:
        j = self.jobs.get(name)
        if j is None:
            cfg = self.config
            j = self.jobs[name] = JobState(name, JobLoad(time.monotonic(), cfg.observe_window,
                                                         cfg.observe_slice))
        return j

    def publish(self, pub: Publication, fds: list[int], owner: object) -> ReplicaHandle:
        """Attach a published buffer; raises LayoutError (fds are then the caller's)."""
        if pub.buffer_id in self.replicas:
            self.withdraw(pub.buffer_id, "published again")
        rep = ReplicaHandle(pub, fds, owner, self.native)
        if rep.ctl.state is WorkerState.STOPPED:
            rep.close()
            raise LayoutError("worker reports it has stopped")
        rep.ctl.epoch = self.epoch
        self.replicas[rep.buffer_id] = rep
        self.job(rep.job).add(rep)
        if self.loop is not None and self._completion_wakeups:
            self.loop.add_reader(rep.completion_fd, self.on_completion, rep)
        log.info("replica %s of %s published as buffer %d (%d x %d bytes, weight %g, %s)",
                 rep.name, rep.job, rep.buffer_id, rep.geometry.slots,
                 rep.geometry.slot_bytes, rep.weight, rep.target.kind)
        if pub.draining or rep.ctl.state is WorkerState.DRAINING:  # published mid-drain
            self.drain(rep.buffer_id, "published while draining")
        else:
            self._pump(self.job(rep.job))
        return rep

    def drain(self, buffer_id: int, reason: str) -> bool:
        """Send the replica nothing new (make-before-break): its queued work goes to the
        job's other replicas, its in-flight requests finish and are answered; once none
        is left it is *drained* (the control block's flag tells the worker, which then
        withdraws).  Whether there was such a replica."""
        rep = self.replicas.get(buffer_id)
        if rep is None:
            return False
        job = self.job(rep.job)
        if not rep.draining:
            job.start_draining(rep, time.monotonic())
            rep.ring()  # what was submitted to it and not yet rung
            log.info("replica %s of %s (buffer %d) draining, %d in flight: %s", rep.name,
                     rep.job, buffer_id, len(rep.inflight), reason)
            for p in [p for p in job.queue if p.target == buffer_id]:
                job.queue.remove(p)
                self._finish_error(p, ErrorCode.REPLICA_FAILED,
                                   f"target buffer {buffer_id} is draining: {reason}")
            self._pump(job)
        self._drained(rep)
        return True

    def _drained(self, rep: ReplicaHandle) -> None:
        """A draining replica with nothing left in flight is drained: tell its worker."""
        if rep.drained or rep.inflight or rep.orphans or rep.closed:
            return
        rep.drained = True
        rep.ctl.drained = True
        self.native.doorbell_ring(rep.doorbell_fd)  # the worker wakes and sees the flag
        self.job(rep.job).drained_total += 1
        log.info("replica %s of %s (buffer %d) drained: nothing in flight", rep.name,
                 rep.job, rep.buffer_id)

    def withdraw(self, buffer_id: int, reason: str) -> bool:
        rep = self.replicas.pop(buffer_id, None)
        if rep is None:
            return False
        job = self.jobs.get(rep.job)
        if job is not None:
            job.remove(buffer_id)
        # Whatever the worker finished before going is still answered.
        if not rep.closed:
            self._reap(rep)
        if self.loop is not None:
            with contextlib.suppress(OSError, ValueError):
                self.loop.remove_reader(rep.completion_fd)
        for p in list(rep.inflight.values()):
            self._finish_error(p, ErrorCode.REPLICA_FAILED,
                               f"replica {rep.name} (buffer {buffer_id}) went away with the "
                               f"request in flight: {reason}")
        rep.inflight.clear()
        rep.close()
        log.info("replica %s of %s withdrawn (buffer %d%s): %s", rep.name, rep.job, buffer_id,
                 ", drained" if rep.drained else ", draining" if rep.draining else "", reason)
        if job is not None:
            for p in [p for p in job.queue if p.target == buffer_id]:
                job.queue.remove(p)
                self._finish_error(p, ErrorCode.REPLICA_FAILED,
                                   f"target buffer {buffer_id} was withdrawn: {reason}")
        return True

    def withdraw_owner(self, owner: object, reason: str) -> None:
        for bid in [b for b, r in self.replicas.items() if r.owner is owner]:
            self.withdraw(bid, reason)

    def buffers_of(self, job: str) -> tuple[BufferInfo, ...]:
        j = self.jobs.get(job)
        return tuple(r.info() for r in j.replicas.values()) if j else ()

    # ------------------------------------------------------------------ requests

    def check(self, session: Session, request_id: int, target: int,
              length: int) -> tuple[ErrorCode, str] | None:
        """Refusals decided from a request's header, before its bytes are read."""
        if not target and request_id not in session.inflight and not self.shutting_down:
            job = self.jobs.get(session.job)  # the common case: any replica of the job
            if job is None or not job.slot_max or length <= job.slot_max:
                return None
        if self.shutting_down:
            return ErrorCode.SHUTTING_DOWN, "the agent is shutting down"
        if request_id in session.inflight:
            return ErrorCode.DUPLICATE_REQUEST, f"request id {request_id} is already in flight"
        if target:
            rep = self.replicas.get(target)
            if rep is None or rep.job != session.job:
                return ErrorCode.TARGET_REFUSED, (f"buffer {target} is not one of job "
                                                  f"{session.job}'s buffers")
            if rep.draining:
                return ErrorCode.TARGET_REFUSED, f"buffer {target} is draining"
            if length > rep.geometry.slot_bytes:
                return ErrorCode.TARGET_REFUSED, (
                    f"{length} bytes exceed buffer {target}'s slots of "
                    f"{rep.geometry.slot_bytes} bytes")
            return None
        job = self.jobs.get(session.job)
        if job is not None and job.slot_max and length > job.slot_max:
            return ErrorCode.PAYLOAD_TOO_LARGE, (f"{length} bytes exceed every input buffer "
                                                 f"of job {session.job} "
                                                 f"(largest slot {job.slot_max} bytes)")
        return None

    def next_tag(self) -> int:
        self._tag = (self._tag + 1) & _TAG_MASK or 1
        return (self.epoch << _TAG_BITS) | self._tag

    def admit(self, p: Pending) -> None:
        """Register a request with its session (it now counts against the window)."""
        now = time.monotonic()
        p.enqueued = now
        p.deadline = now + self.config.request_timeout
        p.session.inflight[p.request_id] = p
        self.stats.requests += 1
        (self.jobs.get(p.session.job) or self.job(p.session.job)).load.requests += 1

    def refused(self, session: Session) -> None:
        """A request refused from its header (``check``): an answered error."""
        self.stats.errors += 1
        load = self.job(session.job).load
        load.requests += 1
        load.errors += 1

    def submit(self, p: Pending, admit: bool = False) -> None:
        """The request's bytes are in staging: dispatch it or queue it (``admit``: admit
        it first, in the same call, as the one-sided path does)."""
        stats = self.stats
        if admit:  # admit's body, inline
            now = time.monotonic()
            p.enqueued = now
            p.deadline = now + self.config.request_timeout
            p.session.inflight[p.request_id] = p
            stats.requests += 1
        stats.bytes_in += p.length
        job = self.jobs.get(p.session.job) or self.job(p.session.job)
        if admit:
            job.load.requests += 1
        rep = job.single
        if (rep is not None and not job.queue and not p.target and rep.free_slots
                and rep.slot_bytes >= p.length):
            # _dispatch, _pick and next_tag inline for a job with one replica.
            self._tag = t = (self._tag + 1) & _TAG_MASK or 1
            try:
                stats.copy_ns += rep.submit(p, (self.epoch << _TAG_BITS) | t)
                stats.copy_bytes += p.length
            except (LayoutError, OSError, ValueError) as e:
                self._copy_failed(rep, p, e)
        elif job.queue or not self._dispatch(job, p):
            job.queue.append(p)
            self._pump(job)
        if self.batch_depth:
            self.batch_ring.add(job.name)
        else:
            self._ring_soon(job)

    def _pick(self, job: JobState, p: Pending) -> ReplicaHandle | None:
        rep = job.single
        if rep is not None and not p.target:
            return rep if rep.free_slots and rep.slot_bytes >= p.length else None
        if p.target:
            rep = job.replicas.get(p.target)
            return rep if rep is not None and rep.free_slots else None
        reps = job.replicas
        if len(reps) == 1:
            for rep in reps.values():
                return rep if rep.free_slots and rep.geometry.slot_bytes >= p.length else None
        # Ties (idle replicas of equal weight) rotate, so light load still spreads.
        order = list(reps.values())
        job.turn = (job.turn + 1) % max(len(order), 1)
        best: ReplicaHandle | None = None
        best_score = 0.0
        for rep in order[job.turn:] + order[:job.turn]:
            if rep.free_slots and rep.geometry.slot_bytes >= p.length:
                s = rep.score(p.length)
                if best is None or s < best_score:
                    best, best_score = rep, s
        return best

    def _dispatch(self, job: JobState, p: Pending) -> bool:
        rep = self._pick(job, p)
        if rep is None:
            return False
        try:
            self.stats.copy_ns += rep.submit(p, self.next_tag())
            self.stats.copy_bytes += p.length
        except (LayoutError, OSError, ValueError) as e:
            self._copy_failed(rep, p, e)
        return True

    def _copy_failed(self, rep: ReplicaHandle, p: Pending, e: Exception) -> None:
        log.error("copy into buffer %d failed: %s", rep.buffer_id, e)
        self._finish_error(p, ErrorCode.REPLICA_FAILED, f"copy into the replica failed: {e}")
        self.withdraw(rep.buffer_id, f"copy failed: {e}")

    def _pump(self, job: JobState) -> None:
        if not job.queue:
            return
        for p in list(job.queue):
            if not any(r.free_slots for r in job.replicas.values()):
                break
            if self._pick(job, p) is not None:
                job.queue.remove(p)
                self._dispatch(job, p)
        self._ring_soon(job)

    def _ring_soon(self, job: JobState) -> None:
        """Doorbells rung in one event-loop iteration are rung once per replica."""
        if self.batch_depth:
            self.batch_ring.add(job.name)
        elif self.loop is None:
            self._ring_all(job)
        elif job.name not in self._to_ring:
            if not self._to_ring:
                self.loop.call_soon(self._ring_pending)
            self._to_ring.add(job.name)

    def _ring_pending(self) -> None:
        names, self._to_ring = self._to_ring, set()
        for name in names:
            job = self.jobs.get(name)
            if job is not None:
                self._ring_all(job)

    @staticmethod
    def _ring_all(job: JobState) -> None:
        for rep in job.replicas.values():
            if rep.needs_ring and not rep.closed:
                rep.ring()

    # ------------------------------------------------------------------ completions

    def in_flight(self) -> bool:
        """Whether any replica holds a request the agent waits for."""
        return any(rep.inflight for rep in self.replicas.values())

    def completion_wakeups(self, on: bool) -> None:
        """Whether the replicas' completion eventfds wake the loop; off while the busy
        poller reads the completion rings itself (an eventfd left unread is drained by the
        first wake-up once they are back on)."""
        if on == self._completion_wakeups:
            return
        self._completion_wakeups = on
        if self.loop is None:
            return
        for rep in self.replicas.values():
            if rep.closed:
                continue
            if on:
                self.loop.add_reader(rep.completion_fd, self.on_completion, rep)
            else:
                self.loop.remove_reader(rep.completion_fd)

    def on_completion(self, rep: ReplicaHandle, woken: bool = True) -> None:
        """The replica's completion eventfd fired (``woken``), or the poller saw entries
        on its completion ring."""
        if self.kick is not no_kick:
            self.kick()
        if woken:
            try:  # noqa: SIM105 - contextlib.suppress costs a context manager per wake-up
                os.eventfd_read(rep.completion_fd)
            except OSError:  # BlockingIOError: nothing to read (a spurious wake-up)
                pass
        self.batch_depth += 1
        try:
            self._reap(rep)
            if rep.draining:
                self._drained(rep)
            elif not rep.closed:
                job = self.jobs.get(rep.job)
                if job is not None and job.queue:
                    self._pump(job)
        finally:
            self.batch_depth -= 1
            if not self.batch_depth and (self.batch_ring or self.batch_flush):
                self.drain_batch()

    def _reap(self, rep: ReplicaHandle) -> None:
        try:
            entries = rep.ctl.cq.pop_many(rep.geometry.capacity)
        except self.native.RingCorrupted as e:
            self.withdraw(rep.buffer_id, f"completion ring corrupted: {e}")
            return
        g = rep.geometry
        nslots, result_bytes, max_result = g.slots, g.result_bytes, self.config.max_result
        tags, free, inflight, stats = rep.ctl.tags, rep.free_slots, rep.inflight, self.stats
        # The observed load (load.py): one clock read per batch, one bucket per response.
        load, now, bounds = rep.load, time.monotonic(), BOUNDS
        hist, answered, latency = load.hist, 0, 0.0
        try:
            for tag, slot, n, status, _micros in entries:
                if not 0 <= slot < nslots or tag == 0 or tags[slot] != tag:
                    rep.bad_completions += 1
                    log.warning("buffer %d: completion for slot %d with an unknown tag",
                                rep.buffer_id, slot)
                    if rep.bad_completions > MAX_BAD_COMPLETIONS:
                        self.withdraw(rep.buffer_id, "too many bogus completions")
                        return
                    continue
                tags[slot] = 0
                free.append(slot)
                if rep.orphans:
                    rep.orphans.discard(slot)
                p = inflight.pop(slot, None)
                if p is None:
                    continue  # left by a previous agent
                rep.outstanding_bytes -= p.length
                rep.completed += 1
                mm = rep._ctl_mm
                if status or p.done or n > result_bytes or n > max_result or mm is None:
                    self._deliver(rep, p, n, status)
                    continue
                # The common ending, inline (what _deliver, _finish_ok and _end do for it).
                if p.held is not None or p.release is not None:
                    p.free_source()
                p.done = True
                s = p.session
                s.inflight.pop(p.request_id, None)
                if s.paused:  # on_request_done only has work for a paused session
                    s.on_request_done()
                if s.closed:
                    stats.dropped_no_session += 1
                    load.dropped += 1
                    continue
                stats.responses += 1
                s.answered += 1
                lat = now - p.enqueued
                hist[bisect_left(bounds, lat)] += 1
                latency += lat
                answered += 1
                off = rep.result_off[slot]
                s.send_response(p.request_id, rep.buffer_id, mm[off:off + n])
        finally:
            if answered:
                load.responses += answered
                load.latency_sum += latency
                rep.responses += answered

    def _deliver(self, rep: ReplicaHandle, p: Pending, n: int, status: int) -> None:
        g = rep.geometry
        if n > g.result_bytes:
            self._finish_error(p, ErrorCode.WORKER_ERROR,
                               f"worker reported a result of {n} bytes, area is {g.result_bytes}")
            return
        view = rep.ctl.result_view(p.slot, n)
        try:
            if status == Status.OK:
                if n > self.config.max_result:
                    self._finish_error(p, ErrorCode.RESULT_TOO_LARGE,
                                       f"result of {n} bytes exceeds {self.config.max_result}")
                else:
                    self._finish_ok(p, rep.buffer_id, view)
            else:
                msg = bytes(view[:1024]).decode("utf-8", "replace")
                code = _STATUS_ERRORS.get(status, ErrorCode.WORKER_ERROR)
                self._finish_error(p, code, msg or f"worker status {status}")
        finally:
            view.release()

    # ------------------------------------------------------------------ endings

    def _end(self, p: Pending) -> bool:
        """Take ``p`` out of its session; False when it was already answered."""
        p.free_source()
        if p.done:
            return False
        p.done = True
        s = p.session
        s.inflight.pop(p.request_id, None)
        s.on_request_done()
        if s.closed:
            self.stats.dropped_no_session += 1
            self.job(s.job).load.dropped += 1
            return False
        return True

    def _finish_ok(self, p: Pending, buffer_id: int, data: memoryview) -> None:
        if self._end(p):
            self.stats.responses += 1
            load = self.job(p.session.job).load
            load.responses += 1
            load.record(time.monotonic() - p.enqueued)
            if p.replica is not None:
                p.replica.responses += 1
            p.session.answered += 1
            p.session.send_response(p.request_id, buffer_id, data)

    def _finish_error(self, p: Pending, code: ErrorCode, message: str) -> None:
        if self._end(p):
            self.stats.errors += 1
            self.job(p.session.job).load.errors += 1
            p.session.answered += 1
            p.session.send_error(p.request_id, code, message)

    def drop_session(self, session: Session) -> None:
        """The connection is gone: free what its requests hold; in-flight ones are
        reclaimed when their worker finishes."""
        session.closed = True
        job = self.jobs.get(session.job)
        for p in list(session.inflight.values()):
            if job is not None and p in job.queue:
                job.queue.remove(p)
            if p.replica is None:
                p.free_source()
                p.done = True
                self.stats.dropped_no_session += 1
                if job is not None:
                    job.load.dropped += 1
        session.inflight.clear()

    def sweep(self, now: float | None = None) -> None:
        """Time out what waited too long: queued without any replica, or unanswered."""
        now = time.monotonic() if now is None else now
        cfg = self.config
        self.observe(now)
        for job in list(self.jobs.values()):
            for p in list(job.queue):
                # Without a replica taking requests (none, or all draining) for the timeout.
                if (not job.replicas
                        and now - max(p.enqueued, job.empty_since) > cfg.no_replica_timeout):
                    job.queue.remove(p)
                    self._finish_error(p, ErrorCode.NO_REPLICA,
                                       f"job {job.name} has no replica (waited "
                                       f"{cfg.no_replica_timeout:g} s)")
                elif now > p.deadline:
                    job.queue.remove(p)
                    self._finish_error(p, ErrorCode.TIMEOUT,
                                       f"not dispatched within {cfg.request_timeout:g} s")
        for rep in list(self.replicas.values()):
            for p in list(rep.inflight.values()):
                if not p.done and now > p.deadline:
                    # The slot stays busy until the worker answers; the client hears now.
                    self._finish_error(p, ErrorCode.TIMEOUT,
                                       f"replica {rep.name} did not answer within "
                                       f"{cfg.request_timeout:g} s")

    def observe(self, now: float) -> None:
        """Snapshot every job's counters once per slice (the load window, ``load.py``)."""
        for job in self.jobs.values():
            if now - job.load.ring[-1].t >= job.load.slice_s:
                completed = {b: r.completed for b, r in self.replicas.items()
                             if r.job == job.name}
                job.load.tick(now, completed)

    def shutdown(self, reason: str = "the agent is shutting down") -> None:
        self.shutting_down = True
        for job in self.jobs.values():
            while job.queue:
                self._finish_error(job.queue.popleft(), ErrorCode.SHUTTING_DOWN, reason)
        for rep in list(self.replicas.values()):
            for p in list(rep.inflight.values()):
                self._finish_error(p, ErrorCode.SHUTTING_DOWN, reason)
            if self.loop is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.loop.remove_reader(rep.completion_fd)
            rep.close()
        self.replicas.clear()
        for job in self.jobs.values():
            job.replicas.clear()
            job.draining.clear()
            job.slot_max = 0
            job.single = None


def no_kick() -> None:
    """``AgentCore.kick`` without a poller (the hot paths test for it and skip the call)."""
    return None
