"""The resample command: each series onto evenly spaced points, down- and upsampled as the model says."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from gateway.expressions.errors import ExecutionError
from gateway.expressions.reduce import _DOWNSAMPLERS, REDUCERS
from gateway.expressions.values import _NS, NoData, Series, Value, _kind
from gateway.gtime import TimeRange

MAX_RESAMPLED_POINTS = 1_000_000  # points the resamples of one request may produce, all series together


class Resample(NamedTuple):
    """resample: each series onto points `window` apart from the range's start."""

    ref_id: str
    source: str
    window_ns: int
    downsampler: str
    upsampler: str

    def needs(self) -> list[str]:
        """The refIds this command reads."""
        return [self.source]

    def run(self, variables: Mapping[str, list[Value]], time_range: TimeRange) -> list[Value]:
        """The command's values from the results so far; ExecutionError when it cannot run."""
        out: list[Value] = []
        for value in variables[self.source]:
            if isinstance(value, Series):
                out.append(self.resample(value, time_range.from_ms * _NS, time_range.to_ms * _NS))
            elif isinstance(value, NoData):
                out.append(NoData())
                return out
            else:
                raise ExecutionError(f"can only resample type series, got type {_kind(value)}")
        return out

    def points(self, variables: Mapping[str, list[Value]], time_range: TimeRange) -> int:
        """How many points run() would produce (0 when it would fail before producing any)."""
        if self.window_ns <= 0:
            return 0
        slots = (time_range.to_ms - time_range.from_ms) * _NS // self.window_ns + 1
        return slots * sum(isinstance(value, Series) for value in variables[self.source])

    def resample(self, series: Series, start: int, end: int) -> Series:
        """One series on the points start, start+window, ... <= end (each slot takes the points in (t-window, t])."""
        length = math.trunc((end - start) / self.window_ns) if self.window_ns > 0 else 0
        if length <= 0:
            raise ExecutionError("the series cannot be sampled further; the time range is shorter than the interval")
        if length >= MAX_RESAMPLED_POINTS:
            raise ExecutionError(f"resampling would produce more than {MAX_RESAMPLED_POINTS} points per series")
        times: list[int] = []
        values: list[float | None] = []
        bookmark = 0
        last_seen: float | None = None
        t = start
        count = len(series.times)
        while t <= end and len(times) <= length:
            window: list[float | None] = []
            while bookmark < count and series.times[bookmark] <= t:
                last_seen = series.values[bookmark]
                window.append(last_seen)
                bookmark += 1
            value: float | None
            if not window:
                if self.upsampler == "pad":
                    value = last_seen
                elif self.upsampler == "backfilling":
                    value = series.values[bookmark] if bookmark < count else None
                elif self.upsampler == "fillna":
                    value = None
                else:
                    raise ExecutionError(f"upsampling {self.upsampler} not implemented")
            elif len(window) == 1:
                value = window[0]
            elif self.downsampler in _DOWNSAMPLERS:
                value = REDUCERS[self.downsampler](window)
            else:
                raise ExecutionError(f"downsampling {self.downsampler} not implemented")
            times.append(t)
            values.append(value)
            t += self.window_ns
        return Series(self.ref_id, series.labels, times, values)
