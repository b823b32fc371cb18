"""The last minutes of a gateway's state as small time series, kept in memory for the cluster page.

Sans-IO: the sampler (`smg.ui.sampler`) feeds one row of values per step with the time it was
taken; rows share one time axis, so a series that appears later (a worker added) is padded with
gaps before its first value, and one that stops being fed (a worker removed) gets gaps until it
scrolls out, then is dropped. Counters become rates here (`Rates`), so a restart of the process
or a counter that went down shows as a gap, never a negative spike.
"""

from __future__ import annotations

from collections import deque
from typing import Any

STEP_SECS = 5.0
WINDOW_SECS = 15 * 60.0
MAX_SERIES = 256  # a fleet of hundreds of workers keeps a bounded page: the first series win


class SeriesSet:
    def __init__(self, step: float = STEP_SECS, window: float = WINDOW_SECS, max_series: int = MAX_SERIES) -> None:
        self.step = step
        self.capacity = max(2, int(window / step))
        self.max_series = max_series
        self.times: deque[float] = deque(maxlen=self.capacity)
        self.values: dict[str, deque[float | None]] = {}

    def add(self, at: float, row: dict[str, float | None]) -> None:
        """One sample of every series at wall time `at`; names missing from `row` get a gap."""
        self.times.append(at)
        for name, column in self.values.items():
            column.append(row.get(name))
        for name, value in row.items():
            if name not in self.values and len(self.values) < self.max_series:
                column = deque([None] * (len(self.times) - 1), maxlen=self.capacity)
                column.append(value)
                self.values[name] = column
        for name in [name for name, column in self.values.items() if all(v is None for v in column)]:
            del self.values[name]  # fed no value for the whole window: gone

    def as_json(self, prefixes: tuple[str, ...] = ("",)) -> dict[str, Any]:
        """{"step", "t": [times], "values": {name: [value or null]}} for the names that start with
        one of `prefixes` (a peer's view carries only the series the page draws per gateway)."""
        return {
            "step": self.step,
            "t": [round(t, 3) for t in self.times],
            "values": {name: list(column) for name, column in self.values.items() if name.startswith(prefixes)},
        }


class Rates:
    """Per-second rates and ratios of monotonic counters between two samples."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}  # name -> (time, value)

    def rate(self, name: str, at: float, value: float) -> float | None:
        """The counter's increase per second since its last sample; None the first time, after a
        reset (the value went down) or when no time passed."""
        last = self._last.get(name)
        self._last[name] = (at, value)
        if last is None or value < last[1] or at <= last[0]:
            return None
        return (value - last[1]) / (at - last[0])

    def ratio(self, name: str, part: float, whole: float) -> float | None:
        """part/whole over the counters' increases since their last sample: a cache hit rate
        (cached over prompt tokens) or a mean (summed lag over merges) over the last step; None
        when `whole` did not grow or a counter went down."""
        last = self._last.get(name)
        self._last[name] = (part, whole)
        if last is None:
            return None
        grown_part, grown_whole = part - last[0], whole - last[1]
        if grown_whole <= 0 or grown_part < 0:
            return None
        return grown_part / grown_whole

    def forget(self, keep: set[str]) -> None:
        """Drop the state of counters no longer sampled (removed workers)."""
        for name in [name for name in self._last if name not in keep]:
            del self._last[name]
