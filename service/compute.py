"""Pose work off the event loop: a bounded pool of threads, a queue limit, and a way out for hard clouds.

Parsing, checking and estimating a request run in one job on a worker thread, so the event loop
only reads bodies and writes answers and ``/health`` stays quick whatever the clouds are.

- **Bounded.** ``threads`` jobs compute at once and at most ``queue_limit`` wait; beyond that a
  request is refused at once (the app answers 503 with ``Retry-After``), and a job that waited
  longer than its queue timeout is dropped unstarted (503 as well): no unbounded waits.
- **Hard clouds yield to easy ones.** Most clouds are answered in a few milliseconds; a few
  (a sphere, another object, a cloud in other units) search for up to their budget. A cloud that
  has used ``slow_after_s`` of its thread's CPU (its :class:`cloudpose.budget.Budget` says so)
  leaves the workers (a fresh thread takes its place at once) and lowers its thread's CPU
  priority. With ``hard_in_processes`` (the service's default) it then raises
  :class:`TurnedHard`, and its job hands it to a lower-priority process of its own
  (``service.hard``): threads share one interpreter lock, processes do not. Otherwise, or until
  those processes have loaded, it waits here for one of ``hard_lanes`` slots, so hard clouds
  take turns while easy ones keep their pace and their workers; the wait counts against the
  cloud's budget, and when no lane is free in time the answer is the best pose so far, marked
  not found. Hard jobs are still counted in ``pending``, so the queue limit bounds them too.

A thread that lowered its priority cannot raise it again (that needs privileges), so it ends
with its job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from cloudpose.budget import Budget, TurnedHard

logger = logging.getLogger("cloudpose.compute")

# Niceness of a thread working on a hard cloud (0 is normal, 19 the lowest priority).
HARD_NICE = 10


class Saturated(Exception):
    """The pool is full, or a job waited past its queue timeout."""


@dataclass
class _Job:
    function: Callable[[], Any]
    future: asyncio.Future
    start_by: float


class _JobState:
    def __init__(self) -> None:
        self.holds_lane = False
        self.demoted = False


_job_state: ContextVar[_JobState | None] = ContextVar("cloudpose_job", default=None)


class PoseWorkers:
    """Runs pose jobs on worker threads.

    Args:
        threads: jobs computing at once.
        queue_limit: jobs waiting at most; more are refused.
        hard_lanes: hard clouds computing at once in this process (after ``slow_after_s``).
        slow_after_s: when a cloud counts as hard (CPU time).
        hard_in_processes: a hard cloud raises :class:`TurnedHard` instead of waiting for a lane
            here: its job hands it to a hard-cloud process (``service.hard``).
    """

    def __init__(
        self,
        threads: int,
        queue_limit: int,
        hard_lanes: int,
        slow_after_s: float,
        hard_in_processes: bool = False,
    ) -> None:
        self.threads = threads
        self.hard_in_processes = hard_in_processes
        # Whether the hard-cloud processes have loaded; until then hard clouds stay here.
        self.hard_ready: Callable[[], bool] = lambda: True
        self.queue_limit = queue_limit
        self.slow_after_s = slow_after_s
        self._lane = threading.BoundedSemaphore(hard_lanes)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers = 0
        self.pending = 0  # submitted and not finished; read and written on the event loop only
        self.refused = 0

    def start(self) -> None:
        """Start the threads (call on the event loop that will submit jobs)."""
        self._loop = asyncio.get_running_loop()
        for _ in range(self.threads):
            self._spawn()

    def stop(self) -> None:
        for _ in range(self._workers):
            self._jobs.put(None)

    def saturated(self) -> bool:
        """Whether a new job would be refused."""
        return self.pending >= self.threads + self.queue_limit

    def busy_fraction(self) -> float:
        return min(1.0, self.pending / self.threads)

    async def run(self, function: Callable[[], Any], queue_timeout_s: float) -> Any:
        """Run ``function()`` on a worker thread and return its result (or raise its exception).

        Raises:
            Saturated: the pool is full, or the job could not start within ``queue_timeout_s``.
        """
        if self.saturated():
            self.refused += 1
            raise Saturated(f"{self.pending} requests are computing or waiting")
        future = self._loop.create_future()
        self.pending += 1
        self._jobs.put(_Job(function, future, time.monotonic() + queue_timeout_s))
        try:
            return await future
        finally:
            self.pending -= 1

    def budget(self, seconds: float | None, nominal_s: float | None = None) -> Budget:
        """A budget for one cloud of the current job, with this pool's rule for hard clouds."""
        return Budget(seconds, slow_after_s=self.slow_after_s, on_slow=self._hard, nominal_s=nominal_s)

    def _spawn(self) -> None:
        self._workers += 1
        threading.Thread(target=self._work, name="cloudpose-pose", daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            state = _JobState()
            token = _job_state.set(state)
            try:
                if time.monotonic() > job.start_by:
                    raise Saturated("the request waited too long for a free worker")
                outcome, failed = job.function(), False
            except BaseException as error:  # handed to the awaiting request, which decides
                outcome, failed = error, True
            finally:
                _job_state.reset(token)
                if state.holds_lane:
                    self._lane.release()
            self._loop.call_soon_threadsafe(_settle, job.future, outcome, failed)
            if state.demoted:  # its replacement started when it turned hard
                return

    def _replace(self) -> None:
        self._workers -= 1
        self._spawn()

    def _hard(self, budget: Budget) -> bool:
        """``Budget.on_slow``: lower this thread's priority and wait for a hard lane."""
        state = _job_state.get()
        if state is None or state.holds_lane:
            return True
        if not state.demoted:
            state.demoted = True
            # A fresh thread takes this one's place among the workers at once, so hard clouds
            # waiting for a lane never hold up easy ones; this thread ends with its job.
            self._loop.call_soon_threadsafe(self._replace)
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HARD_NICE)
            except (OSError, AttributeError):  # not Linux-like: the lane alone still serializes
                pass
        if self.hard_in_processes and self.hard_ready():
            raise TurnedHard  # the job hands the rest to a hard-cloud process (service.hard)
        remaining = budget.remaining_s()
        acquired = self._lane.acquire(timeout=None if remaining is None else max(0.0, remaining))
        state.holds_lane = acquired
        return acquired


def _settle(future: asyncio.Future, outcome: Any, failed: bool) -> None:
    if future.done():  # the request went away (client disconnect) while its job ran
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
