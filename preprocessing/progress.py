"""Progress that reads well both on a terminal and in a log file.

On a terminal a tqdm bar redraws in place. Written to a file or a CI log, the same bar is
hundreds of kilobytes of carriage-return frames, so there it becomes `LineProgress`: one plain
line every `every` units, at the end, and whenever new figures are posted (`set_postfix`),
through a callback (a logger's `info`, or stderr). tqdm has no such mode of its own (its `mininterval` still writes `\\r` frames), hence
these few lines.
"""
from __future__ import annotations

import sys
import time
from typing import Callable


def on_terminal(stream=None) -> bool:
    """Whether progress may redraw in place: the stream is a TTY (never under CI=true)."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # closed or replaced streams
        return False


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class LineProgress:
    """tqdm's small interface (update, set_postfix, write, close) as one line per `every` units."""

    def __init__(self, total: int | None, desc: str = "", every: int | None = None, unit: str = "it",
                 initial: int = 0, emit: Callable[[str], None] | None = None):
        """every: units between lines (None: a tenth of `total`; 0: only on set_postfix and close)."""
        self.total, self.desc, self.unit = total, desc, unit
        self.every = max(1, (total or 10) // 10) if every is None else int(every)
        self.n = self.last = self.initial = int(initial)
        self.emit = emit or _stderr_line
        self.postfix: dict = {}
        self.t0 = time.perf_counter()
        self.closed = False

    def line(self) -> str:
        secs = time.perf_counter() - self.t0
        done = self.n - self.initial
        rate = f", {done / secs:.2f} {self.unit}/s" if secs > 0 and done > 0 else ""
        of = f"/{self.total}" if self.total else ""
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.n}{of} {self.unit}{extra} ({secs:.0f} s{rate})"

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every and self.n - self.last >= self.every:
            self.emit(self.line())
            self.last = self.n

    def set_postfix(self, refresh: bool = True, **kwargs) -> None:
        """As tqdm's: `refresh` shows the new values at once (here: one line now)."""
        self.postfix = dict(kwargs)
        if refresh:
            self.emit(self.line())
            self.last = self.n

    def write(self, text: str) -> None:
        self.emit(text)

    def close(self) -> None:
        if not self.closed and self.n != self.last:
            self.emit(self.line())
            self.last = self.n
        self.closed = True


def progress(total: int | None, desc: str = "", enabled: bool = True, every: int | None = None, unit: str = "it",
             initial: int = 0, emit: Callable[[str], None] | None = None, **tqdm_kwargs):
    """A tqdm bar on a terminal, `LineProgress` elsewhere, nothing at all when not `enabled`."""
    from tqdm.auto import tqdm
    if not enabled:
        return tqdm(total=total, disable=True)
    if on_terminal():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, **tqdm_kwargs)
    return LineProgress(total, desc, every, unit, initial, emit)
