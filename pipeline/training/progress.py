"""Progress of long commands on stderr: a bar on a terminal, periodic lines otherwise.

A log file or CI job cannot show a bar, so without a terminal :class:`ProgressReport` writes a
line at every tenth of the work (at most one every 2 s) or every 30 s, whichever comes first,
each with the time spent and the time left at the pace so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType

LOG_EVERY_FRACTION = 0.1
LOG_EVERY_S = 30.0
LOG_AT_MOST_EVERY_S = 2.0  # a task of seconds needs no line per tenth


def format_duration(seconds: float) -> str:
    """``45 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressReport:
    """One long task's progress (use as a context manager).

    Args:
        description: what is being done, e.g. ``bench`` or ``train``.
        total: the amount of work, in ``unit``.
        unit: e.g. ``clouds``, ``steps`` or ``s``.
        interactive: draw a bar (rich) rather than lines; stderr being a terminal by default.
        estimate_after: once this much work is done, say once how long the whole will take.
        enabled: False makes every call a no-op (the other ranks of a distributed run).
        write: where lines go (stderr by default).
        every_fraction / min_interval_s / max_interval_s: without a bar, a line at every
            ``every_fraction`` of the work but at most one per ``min_interval_s``, and one at
            least every ``max_interval_s``.
    """

    def __init__(
        self,
        description: str,
        total: float,
        *,
        unit: str = "",
        interactive: bool | None = None,
        estimate_after: float | None = None,
        enabled: bool = True,
        write: Callable[[str], None] | None = None,
        every_fraction: float = LOG_EVERY_FRACTION,
        min_interval_s: float = LOG_AT_MOST_EVERY_S,
        max_interval_s: float = LOG_EVERY_S,
    ) -> None:
        self.description = description
        self.total = max(float(total), 1e-9)
        self.unit = unit
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.estimate_after = estimate_after
        self.enabled = enabled
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.every_fraction, self.min_interval_s, self.max_interval_s = (
            every_fraction,
            min_interval_s,
            max_interval_s,
        )
        self.completed = 0.0
        self.status = ""
        self._started = time.perf_counter()
        self._last_line_at = self._started
        self._last_line_fraction = 0.0
        self._estimated = False
        self._first: tuple[float, float] | None = None  # (time, completed) of the first update
        self._bar = None
        self._task = None

    def __enter__(self) -> ProgressReport:
        self._started = self._last_line_at = time.perf_counter()
        if self.enabled and self.interactive:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f} " + self.unit),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, status="")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, traceback)
            self._bar = None
        elif self.enabled and kind is None and self._last_line_fraction < 1.0:
            self._line()

    def update(self, completed: float, status: str = "") -> None:
        """Record that ``completed`` of the work is done; ``status`` is a short note (losses)."""
        if not self.enabled:
            return
        self.completed, self.status = float(completed), status
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, self.completed)
        if (
            self.estimate_after is not None
            and not self._estimated
            and self.completed >= self.estimate_after
            and self.completed < self.total
        ):
            self._estimated = True
            whole = now - self._started + self._remaining_s(now)
            self.say(
                f"{self.description}: about {format_duration(whole)} in all at the pace of the first "
                f"{self.completed:.0f} {self.unit}"
            )
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, status=status)
            return
        fraction = self.completed / self.total
        since = now - self._last_line_at
        share = fraction - self._last_line_fraction >= self.every_fraction - 1e-9
        if (share and since >= self.min_interval_s) or since >= self.max_interval_s:
            self._line()

    def _remaining_s(self, now: float) -> float:
        """Time left at the pace since the first update (setup before it does not count)."""
        if self._first is None or self.completed <= self._first[1] or now <= self._first[0]:
            return float("nan")
        rate = (self.completed - self._first[1]) / (now - self._first[0])
        return (self.total - self.completed) / rate

    def _amount(self, value: float) -> str:
        return f"{value:.0f}" if self.total >= 20 or float(self.total).is_integer() else f"{value:.1f}"

    def say(self, line: str) -> None:
        """Print a line (above the bar, when there is one)."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            self.write(line)

    def _line(self) -> None:
        now = time.perf_counter()
        elapsed = now - self._started
        fraction = min(1.0, self.completed / self.total)
        line = (
            f"{self.description}: {self._amount(self.completed)}/{self._amount(self.total)} {self.unit} "
            f"({fraction:.0%}), {format_duration(elapsed)} elapsed"
        )
        remaining = self._remaining_s(now)
        if 0 < fraction < 1 and remaining == remaining:  # not NaN
            line += f", about {format_duration(remaining)} to go"
        if self.status:
            line += f"; {self.status}"
        self.write(line)
        self._last_line_at, self._last_line_fraction = now, fraction
