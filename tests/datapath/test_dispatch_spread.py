"""The dispatcher's promise about the spread over a job's replicas, shown with a replica
that stalls (as a worker starved of CPU on a loaded host does): it keeps what it holds,
the other replica takes everything else, every request is answered, and both served.  The
share each gets follows their speed: a bar such as "each at 5% or more" (the e2e tests'
bar before issue 19) is not a promise and fails here, deterministically, by construction.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from conspirator.client import Client
from conspirator.runtime.reference import touch

from .harness import gather_futures, node, spread_problems, wait_for

JOB, TOKEN = "team-a/echo", "job-token"
SENT = 1000
SLOTS = 2


def test_a_stalled_replica_keeps_its_slots_and_the_other_serves_the_rest() -> None:
    gate = threading.Event()

    def stalled(x: Any) -> Any:
        gate.wait(60)
        return touch(x)

    with node({JOB: TOKEN}) as n:
        fast = n.worker(JOB, "fast", touch, slots=SLOTS)
        slow = n.worker(JOB, "slow", stalled, slots=SLOTS)
        n.wait_replicas(2)
        with Client(n.tcp, JOB, TOKEN) as c:
            futs = [c.submit(b"x" * 64) for _ in range(SENT)]
            # Until the gate opens the stalled replica holds at most its SLOTS requests; the
            # fast one answers all others (the window bounds what is in flight at once).
            window = c.welcome.window
            wait_for(lambda: sum(f.done() for f in futs) >= SENT - SLOTS - window, 60,
                     "the fast replica to serve all but the stalled replica's requests")
            gate.set()
            done, errors = gather_futures(list(futs))
    assert not errors, errors
    spread = dict(Counter(r.buffer_id for r in done))
    assert not spread_problems(spread, 2, SENT), spread
    assert set(spread) == {fast.buffer_id, slow.buffer_id}
    # The stalled replica served only what was not answered when the gate opened.
    bound = SLOTS + window
    assert spread[slow.buffer_id] <= bound, spread
    # So a share bar (each replica at 5% or more) fails on this right dispatch.
    assert bound < SENT * 0.05 and min(spread.values()) < SENT * 0.05, spread
