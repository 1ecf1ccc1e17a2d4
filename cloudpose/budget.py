"""Compute budgets: how long one cloud's pose search may run, checked where the search widens.

The search (``cloudpose.estimation.inference``, ``cloudpose.registration.refine``) calls
:func:`expired` before each wider
round and inside its batched iterations. Without a budget in force (the library, the bench) it
never expires. The service puts one in force per cloud with :func:`limited`; when it runs out,
the search stops widening and the answer is the best pose so far, marked not found.

A budget can also say when a cloud has turned out to be hard (``slow_after_s``): the service
then moves its work behind easy requests (``on_slow``), so a few hard clouds cannot slow down
everybody else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class TurnedHard(Exception):
    """Raised by ``on_slow`` to move a cloud's work elsewhere; ``answered`` holds the answers
    of the clouds before it in the same request."""

    def __init__(self) -> None:
        super().__init__("the cloud turned out to be hard")
        self.answered: list = []


class Budget:
    """A wall-clock allowance for one cloud.

    Args:
        seconds: how long the search may run; None never expires.
        slow_after_s: after this much CPU time of its thread the cloud counts as hard and
            ``on_slow`` runs once (make the budget in the thread that computes).
        on_slow: called (in the computing thread) when the cloud turns out to be hard; it may
            block, e.g. to wait for a slot for hard work, and returns whether to go on (False
            expires the budget).
        nominal_s: the allowance to name in messages when ``seconds`` is what is left of it
            (a batch's last clouds, or a cloud moved to another process).
    """

    def __init__(
        self,
        seconds: float | None,
        slow_after_s: float | None = None,
        on_slow: Callable[[Budget], bool] | None = None,
        nominal_s: float | None = None,
    ) -> None:
        self.nominal_s = seconds if nominal_s is None else nominal_s
        self.started = time.monotonic()
        self.cpu_started = time.thread_time()
        self.seconds = seconds
        self.slow_after_s = slow_after_s
        self.on_slow = on_slow
        self.exhausted = False
        self.slow = False

    def remaining_s(self) -> float | None:
        if self.seconds is None:
            return None
        return self.seconds - (time.monotonic() - self.started)

    def expired(self) -> bool:
        """Whether the search must stop widening; once True, stays True."""
        if self.exhausted:
            return True
        if self.seconds is not None and time.monotonic() - self.started > self.seconds:
            self.exhausted = True  # out of time: moving the cloud elsewhere would not help
            return True
        # Hard is judged by this thread's own CPU time: under load every cloud waits for the CPU,
        # and waiting does not make a cloud hard.
        computed = time.thread_time() - self.cpu_started
        if not self.slow and self.slow_after_s is not None and computed > self.slow_after_s:
            self.slow = True
            if self.on_slow is not None and not self.on_slow(self):
                self.exhausted = True
        return self.exhausted


_current: ContextVar[Budget | None] = ContextVar("cloudpose_budget", default=None)


def current() -> Budget | None:
    """The budget in force in this thread's context, if any."""
    return _current.get()


def expired() -> bool:
    """Whether the budget in force (if any) has run out."""
    budget = _current.get()
    return budget is not None and budget.expired()


@contextmanager
def limited(budget: Budget | None) -> Iterator[Budget | None]:
    """Put ``budget`` in force for the code inside (None: no limit)."""
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)
