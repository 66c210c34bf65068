"""A one-line progress display on stderr (evaluations, rate, ETA), or a callback.

Kept dependency-free: a line rewritten in place with a carriage return, throttled to a
few updates a second. Passing a callable instead of True gets `(done, total)` calls,
which is how tests interrupt a run at a chosen point.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Union

__all__ = ["Progress", "ProgressArg"]

ProgressArg = Union[bool, Callable[[int, int], None], None]


class Progress:
    def __init__(self, total: int, label: str, progress: ProgressArg, *, start: int = 0) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.callback = progress if callable(progress) else None
        self.show = progress is True
        self.t0 = time.perf_counter()
        self.start = start
        self.last = 0.0
        self.done = start
        self.shown = -1

    def update(self, done: int) -> None:
        self.done = done
        if self.callback is not None:
            self.callback(done, self.total)
        if not self.show:
            return
        now = time.perf_counter()
        if now - self.last < 0.2 and done < self.total:
            return
        self.last = now
        self.shown = done
        elapsed = now - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 24
        filled = int(width * min(done / self.total, 1.0))
        bar = "#" * filled + "-" * (width - filled)
        eta_s = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
        sys.stderr.write(f"\r{self.label} [{bar}] {done:,}/{self.total:,} {rate:,.0f} evals/s "
                         f"elapsed {elapsed:5.1f}s eta {eta_s} ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.show:
            if self.shown != self.done:
                self.last = 0.0
                self.update(self.done)
            sys.stderr.write("\n")
            sys.stderr.flush()
