"""Busy polling for an agent that has cores of its own (``--busy-poll-us``).

A DPU's Arm cores, or host cores reserved for the agent, run nothing else, so the agent
need not sleep between events: while requests are in flight, and for a window after the
last data-path event, it keeps the event loop spinning (a callback that re-schedules
itself, so the loop polls its sockets with a zero timeout) and reads the replicas'
completion rings directly instead of waiting for their eventfds to wake it.  What that
saves is the wake-up: the completion no longer waits for an idle core to be woken, and
the client's next request finds the agent running.  An agent that shares host cores with
tenants must not poll (it would take a core from them); the default is 0, off.

The CPU time the poller spends finding nothing is counted (``Stats.idle_poll_ns``, the
loop thread's CPU clock): a polling core is always 100% busy, so the agent's capacity is its
CPU time less that idle time (the way DPDK reports a polling core's busy cycles).
"""

from __future__ import annotations

import asyncio
import os
import time

from conspirator.dpu_agent.core import AgentCore, no_kick


class BusyPoller:
    def __init__(self, core: AgentCore, window_us: int) -> None:
        self.core = core
        self.window_ns = window_us * 1000
        self.loop: asyncio.AbstractEventLoop | None = None
        self.parked = True
        self.events = 0  # data-path events (reads, completions) so far
        self.rings_reaped = 0  # completion rings read without an eventfd wake-up
        self._seen = 0
        self._until = 0
        self._last_cpu = 0  # this thread's CPU time at the previous poll

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.core.kick = self.kick
        self.kick()

    def stop(self) -> None:
        self.loop = None
        self.core.kick = no_kick
        self.core.completion_wakeups(True)

    def kick(self) -> None:
        """A data-path event happened: poll (again) for the next window."""
        self.events += 1
        if self.parked and self.loop is not None:
            self.parked = False
            self.core.completion_wakeups(False)
            self._seen = self.events - 1  # this event counts as activity
            self._last_cpu = time.thread_time_ns()
            self.loop.call_soon(self._poll)

    def _poll(self) -> None:
        if self.loop is None:
            self.parked = True
            return
        core = self.core
        for rep in list(core.replicas.values()):
            if not rep.closed and rep.ctl.cq.pending():
                self.rings_reaped += 1
                core.on_completion(rep, woken=False)  # kicks: counts as activity
        now = time.monotonic_ns()
        if self.events != self._seen:
            self._seen = self.events
            self._until = now + self.window_ns
            self._last_cpu = time.thread_time_ns()
        else:
            # Nothing to do: whatever else is runnable on this core goes first (a no-op on
            # a core of its own; where a client shares the core, it is not starved).  The
            # yield is part of the idle polling and is counted with it, in this thread's
            # CPU time (not wall time: while another process runs, the agent spends none).
            os.sched_yield()
            cpu = time.thread_time_ns()
            core.stats.idle_poll_ns += cpu - self._last_cpu
            self._last_cpu = cpu
        if now < self._until or core.in_flight():
            self.loop.call_soon(self._poll)
        else:
            self.parked = True
            core.completion_wakeups(True)

