"""
Calls to several servers at once, each answered within one bound: the execution modules ask
every member in parallel, so a member that is down or silent costs one timeout per call, not
one per member.

.. code-block:: python

    round_ = __utils__["pgcluster_rounds.at_once"]({name: partial(ask, name) for name in members},
                                                   timeout=2, name="patroni-api")
    ended, value = round_.get("postgres-srv1")  # never waits past timeout + GRACE from the start
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Hashable

# How long past `timeout` a call may take before it counts as unanswered: a socket timeout
# bounds each read of a call, this bounds the whole exchange.
GRACE = 0.25


class Round:
    """Calls started together; `get` gives each one's outcome, waiting no longer than the bound."""

    def __init__(self, calls: dict[Hashable, Callable[[], object]], timeout: float, name: str):
        self.timeout = float(timeout)
        self.deadline = time.monotonic() + self.timeout + GRACE
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(calls)),
                                                     thread_name_prefix=name)
        self.futures = {key: pool.submit(call) for key, call in calls.items()}
        # The threads end on their own socket timeouts; nobody waits for a silent one.
        pool.shutdown(wait=False)

    def get(self, key: Hashable) -> tuple[bool, object]:
        """(True, what the call returned), (False, what it raised), or (False, None) when it
        had not ended by the deadline."""
        future = self.futures[key]
        done, _pending = concurrent.futures.wait(
            [future], timeout=max(0.0, self.deadline - time.monotonic()))
        if not done:
            return False, None
        error = future.exception()
        return (True, future.result()) if error is None else (False, error)


def at_once(calls: dict[Hashable, Callable[[], object]], timeout: float, name: str = "round") -> Round:
    """Start every call of ``calls`` ({key: callable without arguments}) now, each in a thread."""
    return Round(calls, timeout, name)
