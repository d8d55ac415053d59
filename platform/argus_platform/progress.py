"""Progress lines with a rate and an ETA for long stages (generation, preparation, evaluation).

One line at most every `every_s` seconds, and a closing line with the total and the time it took:

    [argus] synthetic log: 1,200,000/10,000,000 events (41,230/s, ETA 3m33s)
"""

from __future__ import annotations

import time

import psutil


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts `unit`s of `label` towards `total` (None = unknown: no ETA) and prints as it goes.

    enabled=False counts silently (e.g. every rank but 0); `close_below_s`: no closing line for work
    that took less (a line a second on a small run's every evaluation is noise)."""

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str,
        enabled: bool = True,
        every_s: float = 10.0,
        close_below_s: float = 0.0,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.enabled, self.every_s, self.close_below_s = enabled, every_s, close_below_s
        self.done = 0
        self.started = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            print(f"[argus] {self.label}: {self._count()} ({self._rate(now)}{self._eta(now)})", flush=True)

    def close(self, extra: str = "") -> float:
        """Prints the closing line (when enabled) and returns the seconds taken."""
        seconds = time.monotonic() - self.started
        if self.enabled and seconds >= self.close_below_s:
            tail = f"; {extra}" if extra else ""
            print(
                f"[argus] {self.label}: {self.done:,} {self.unit} in {duration(seconds)} "
                f"({self._rate(time.monotonic())}){tail}",
                flush=True,
            )
        return seconds

    def _count(self) -> str:
        return f"{self.done:,}/{self.total:,} {self.unit}" if self.total else f"{self.done:,} {self.unit}"

    def _rate(self, now: float) -> str:
        return f"{self.done / max(now - self.started, 1e-9):,.0f}/s"

    def _eta(self, now: float) -> str:
        if not self.total or self.done <= 0:
            return ""
        left = (self.total - self.done) * (now - self.started) / self.done
        return f", ETA {duration(left)}"


class StolenCpu:
    """The share of the machine's CPU time the hypervisor gave to other guests ("steal" in
    /proc/stat) between `__init__` and `fraction()`; None where the OS does not report it. A
    throughput figure taken on a shared VM means little without it (a noisy neighbour slows a
    2-core step by a third)."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float] | None:
        times = psutil.cpu_times()
        steal = getattr(times, "steal", None)
        # guest time is already counted in user time (Linux), so it is left out of the total
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        return None if steal is None else (steal, total)

    def fraction(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or end[1] <= self.start[1]:
            return None
        return (end[0] - self.start[0]) / (end[1] - self.start[1])
