"""Progress of long work that reads well on a terminal and in a log file alike.

On a terminal a bar redraws in place (tqdm). Elsewhere (CI, batch jobs, SLURM logs: the stream is not a TTY) a
redraw would be one more line for every task, so plain lines are written instead: the first update, then one
about every :data:`LINE_INTERVAL_S` seconds or every :data:`LINE_STEP_PCT` % of the work, and the last one. Every
verb of the ``sftl`` command reports through :class:`Progress`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["LINE_INTERVAL_S", "LINE_STEP_PCT", "Progress"]

#: Outside a terminal, a line at least this often (s) while work advances.
LINE_INTERVAL_S = 10.0
#: Outside a terminal, a line each time the work crosses another step of this size (% of the total).
LINE_STEP_PCT = 10


class Progress:
    """A ``progress(done, total)`` callback over tasks: a bar on a terminal, a few plain lines elsewhere.

    Parameters
    ----------
    desc : str
        What is counted (``ingest``, ``retrieve`` ...): the bar's label, the start of each line.
    stream : text stream, optional
        Where to write (default: ``sys.stderr`` at the first update).
    interval_s : float
        Outside a terminal: the longest wait between two lines while work advances (s).
    step_pct : float
        Outside a terminal: a line each time ``done`` crosses another multiple of this share of ``total`` (%).
    clock : callable
        Seconds of a monotonic clock (tests pass their own).

    Notes
    -----
    Use it as a context manager, or call :meth:`close` when the work ends: the bar is closed, or the last count
    is written if no line has shown it yet.
    """

    def __init__(self, desc: str, *, stream: TextIO | None = None, interval_s: float = LINE_INTERVAL_S,
                 step_pct: float = LINE_STEP_PCT, clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.interval_s, self.step_pct, self.clock = desc, interval_s, step_pct, clock
        self._stream = stream
        self._bar: Any = None  # tqdm, on a terminal
        self._t0 = self._last_line_t = 0.0
        self._last: tuple[int, int] | None = None  # the last (done, total) seen
        self._shown: tuple[int, int] | None = None  # the last (done, total) written as a line

    @property
    def stream(self) -> TextIO:
        """The stream written to."""
        return self._stream if self._stream is not None else sys.stderr

    def _is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def __call__(self, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` tasks are complete."""
        first = self._last is None
        self._last = (done, total)
        if first and self._is_terminal():
            self._bar = tqdm(total=total, desc=self.desc, unit="task", file=self.stream, leave=True)
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()
            return
        now = self.clock()
        if first:
            self._t0 = now
        if (done, total) == self._shown:
            return
        if first or done >= total or now - self._last_line_t >= self.interval_s or \
                self._step(done, total) > self._step(*(self._shown or (0, total))):
            self._line(done, total, now)

    def _step(self, done: int, total: int) -> int:
        """How many whole steps of ``step_pct`` % ``done`` has crossed."""
        return int(100.0 * done / total // self.step_pct) if total > 0 else 0

    def _line(self, done: int, total: int, now: float) -> None:
        pct = f" ({100.0 * done / total:.0f} %)" if total > 0 else ""
        print(f"{self.desc}: {done}/{total} tasks{pct}, {now - self._t0:.0f} s", file=self.stream, flush=True)
        self._shown, self._last_line_t = (done, total), now

    def close(self) -> None:
        """End the report: close the bar, or write the last count if no line has shown it."""
        if self._bar is not None:
            self._bar.close()
        elif self._last is not None and self._last != self._shown:
            self._line(*self._last, self.clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
