"""Progress of long loops, readable on a terminal, in log files and on SLURM.

:func:`progress` wraps an iterable (or counts :meth:`Progress.update` calls) like tqdm:

* on a terminal (stderr is a TTY) it shows a live tqdm bar there;
* in every case it writes plain lines through :mod:`logging` at most once every
  ``interval`` seconds (and once at the end)::

      epoch 3/500: 120/400 step (30%), 4.1 step/s, elapsed 0:00:29, ETA 0:01:08, loss=4.7
      epoch 3/500: done, 400 step in 0:01:37 (4.1 step/s), loss=4.6

  (a loop created with ``leave=False``, e.g. one epoch of many that its caller logs
  itself, writes its final line only when it ran long enough for a periodic one);

  Snakemake scripts call :func:`lesioncl.utils.setup_logging` with the rule's log, so the
  lines reach ``logs/<rule>/...``; when stderr is not a terminal (a log file, a SLURM
  job's output) they are also what stderr gets, instead of carriage-return floods. While
  a bar is live, the lines skip handlers that write to the terminal, so the bar is not
  interrupted.

``LESIONCL_PROGRESS_INTERVAL`` (seconds, default 30) sets the rate of the plain lines;
``LESIONCL_PROGRESS=lines`` turns the bar off on a terminal (e.g. for several local jobs
at once), ``LESIONCL_PROGRESS=off`` turns both off.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

log = logging.getLogger("lesioncl.progress")

DEFAULT_INTERVAL = 30.0


def default_interval() -> float:
    """Seconds between plain progress lines (``LESIONCL_PROGRESS_INTERVAL``, default 30)."""
    value = os.environ.get("LESIONCL_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_INTERVAL
    except ValueError:
        raise ValueError(
            f"LESIONCL_PROGRESS_INTERVAL={value!r} is not a number of seconds; unset it or set "
            "e.g. 30"
        ) from None


def format_duration(seconds: float) -> str:
    """0:01:08 (h:mm:ss); '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _terminal_handler(handler: logging.Handler) -> bool:
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and _is_tty(handler.stream)
    )


class Progress:
    """A tqdm-like progress counter; see the module docstring. Use :func:`progress`."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        *,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        leave: bool = True,
        interval: float | None = None,
        stream: TextIO | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        mininterval: float | None = None,
        **_tqdm_only: Any,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        mode = os.environ.get("LESIONCL_PROGRESS", "auto").lower()
        if mode not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"LESIONCL_PROGRESS={mode!r}: use auto, bar, lines or off")
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.disable = disable or mode == "off"
        self.interval = default_interval() if interval is None else interval
        self.logger = logger or log
        self.clock = clock
        self.postfix = ""
        self.start = clock()
        self.last_line = self.start
        self.closed = False
        self.leave = leave
        self.lines = 0  # periodic lines written
        self.bar = None
        stream = sys.stderr if stream is None else stream
        if not self.disable and (mode == "bar" or (mode == "auto" and _is_tty(stream))):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                leave=leave,
                file=stream,
                dynamic_ncols=True,
                mininterval=mininterval or 0.5,
            )

    # ---- tqdm-compatible interface -------------------------------------------------
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("progress() without an iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("progress of unknown length")
        return self.total

    def update(self, n: int = 1) -> None:
        if self.disable or self.closed:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self.lines += 1
            self._emit(self.line(now))

    def set_postfix(
        self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())
        if self.bar is not None:
            self.bar.set_postfix(items, refresh=refresh)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        if not self.disable and (self.leave or self.lines):
            self._emit(self.final_line(self.clock()))

    # ---- plain lines ---------------------------------------------------------------
    def rate(self, now: float) -> float:
        elapsed = now - self.start
        return (self.n - self.initial) / elapsed if elapsed > 0 else math.nan

    def line(self, now: float) -> str:
        """'desc: 120/400 step (30%), 4.1 step/s, elapsed 0:00:29, ETA 0:01:08, postfix'."""
        rate = self.rate(now)
        if self.total:
            count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
            eta = (self.total - self.n) / rate if rate and rate > 0 else math.nan
        else:
            count, eta = f"{self.n} {self.unit}", math.nan
        parts = [
            count,
            f"{rate:.3g} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s",
            f"elapsed {format_duration(now - self.start)}",
        ]
        if self.total:
            parts.append(f"ETA {format_duration(eta)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc + ': ' if self.desc else ''}" + ", ".join(parts)

    def final_line(self, now: float) -> str:
        rate = self.rate(now)
        done = (
            "done"
            if self.total is None or self.n >= self.total
            else f"stopped at {self.n}/{self.total}"
        )
        text = (
            f"{self.desc + ': ' if self.desc else ''}{done}, "
            f"{self.n - self.initial} {self.unit} in "
            f"{format_duration(now - self.start)}"
        )
        if math.isfinite(rate):
            text += f" ({rate:.3g} {self.unit}/s)"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _emit(self, message: str) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (), None)
        if self.bar is None:
            logger.handle(record)
            return
        # a live bar owns the terminal: the line goes to the other handlers (the rule's log)
        current: logging.Logger | None = logger
        while current is not None:
            for handler in current.handlers:
                if not _terminal_handler(handler) and record.levelno >= handler.level:
                    handler.handle(record)
            current = current.parent if current.propagate else None


def progress(iterable: Iterable | None = None, total: int | None = None, **kwargs: Any) -> Progress:
    """Progress over ``iterable`` (or ``total`` :meth:`Progress.update` steps).

    See the module docstring.
    """
    return Progress(iterable, total, **kwargs)
