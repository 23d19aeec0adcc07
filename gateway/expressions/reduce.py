"""The reduce command and Grafana's reducers (sum, mean, min, max, count, last, median)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from gateway.expressions.errors import ExecutionError
from gateway.expressions.values import _NAN, NoData, Number, Series, Value, _kind
from gateway.frames import Notice
from gateway.gtime import TimeRange


def _strict(values: Sequence[float | None]) -> list[float] | None:
    """The values when none is null or NaN, else None (Grafana's reducers then answer NaN)."""
    if any(v is None or math.isnan(v) for v in values):
        return None
    return [v for v in values if v is not None]


def _sum(values: Sequence[float | None]) -> float | None:
    clean = _strict(values)
    if clean is None:
        return _NAN
    total = 0.0
    for v in clean:  # left to right, as Go adds them
        total += v
    return total


def _mean(values: Sequence[float | None]) -> float | None:
    total = _sum(values)
    return _NAN if not values or total is None else total / len(values)


def _extreme(pick: Callable[[float, float], bool]) -> Callable[[Sequence[float | None]], float | None]:
    def reduce(values: Sequence[float | None]) -> float | None:
        clean = _strict(values)
        if clean is None or not clean:
            return _NAN
        best = clean[0]
        for v in clean[1:]:
            if pick(v, best):
                best = v
        return best
    return reduce


def _median(values: Sequence[float | None]) -> float | None:
    clean = _strict(values)
    if clean is None or not clean:
        return _NAN
    clean.sort()
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


REDUCERS: dict[str, Callable[[Sequence[float | None]], float | None]] = {
    "sum": _sum, "mean": _mean, "min": _extreme(lambda a, b: a < b), "max": _extreme(lambda a, b: a > b),
    "count": lambda values: float(len(values)), "last": lambda values: values[-1] if values else _NAN,
    "median": _median,
}
_DOWNSAMPLERS = ("sum", "mean", "min", "max", "last")


class _Mapper(NamedTuple):
    """Reduce settings: dropNN drops null/NaN/Inf (a NaN answer becomes null); replaceNN replaces them."""

    replace: float | None  # None: drop

    def input(self, value: float | None) -> float | None:
        if value is None or not math.isfinite(value):
            return self.replace
        return value

    def output(self, value: float | None) -> float | None:
        if value is not None and math.isnan(value):
            return self.replace
        return value


class Reduce(NamedTuple):
    """reduce: each series to one Number (Grafana's reducers; dropNN/replaceNN settings)."""

    ref_id: str
    source: str
    reducer: str
    mapper: _Mapper | None

    def needs(self) -> list[str]:
        """The refIds this command reads."""
        return [self.source]

    def run(self, variables: Mapping[str, list[Value]], time_range: TimeRange) -> list[Value]:
        """The command's values from the results so far; ExecutionError when it cannot run."""
        out: list[Value] = []
        reduce = REDUCERS[self.reducer]
        for index, value in enumerate(variables[self.source]):
            if isinstance(value, Series):
                points: Sequence[float | None] = value.values
                if self.mapper is not None:
                    points = [m for m in (self.mapper.input(v) for v in points) if m is not None]
                result = reduce(points)
                if self.mapper is not None:
                    result = self.mapper.output(result)
                out.append(Number(self.ref_id, dict(value.labels) if value.labels is not None else None, result))
            elif isinstance(value, Number):
                number = value.value
                if self.mapper is not None:
                    number = self.mapper.input(number)
                    if number is None:
                        continue
                copy = Number(self.ref_id, value.labels, number)
                if self.mapper is None and index == 0:  # on the first result only, as Grafana
                    copy.notices.append(Notice("warning", "Reduce operation is not needed. Input query or "
                                                          f"expression {self.source} is already reduced data."))
                out.append(copy)
            elif isinstance(value, NoData):
                out.append(NoData())
            else:
                raise ExecutionError(f"can only reduce type series, got type {_kind(value)}")
        return out
