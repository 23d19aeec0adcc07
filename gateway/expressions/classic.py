"""The classic_conditions command: legacy alerting's reducers and evaluators, combined into one Number."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from gateway.expressions.arithmetic import _div
from gateway.expressions.errors import ExecutionError
from gateway.expressions.reduce import _mean, _sum
from gateway.expressions.threshold import _PREDICATES
from gateway.expressions.values import NoData, Number, Series, Value, _kind
from gateway.gtime import TimeRange


def _valid(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def _classic_diff(values: Sequence[float | None], f: Callable[[float, float], float]) -> float | None:
    """newest - oldest of the valid points (one valid point at index 0 gives 0, none gives no value)."""
    newest_at = next((i for i in range(len(values) - 1, -1, -1)
                      if values[i] is not None and not math.isnan(values[i] or 0.0)), -1)
    if newest_at < 0:
        return None
    if newest_at == 0:
        return 0.0
    newest = values[newest_at]
    oldest = next(v for v in values if v is not None and not math.isnan(v))
    assert newest is not None
    return f(newest, oldest)


def _classic_median(valid: list[float]) -> float:
    valid.sort()
    mid = len(valid) // 2
    return valid[mid] if len(valid) % 2 else (valid[mid - 1] + valid[mid]) / 2


# classic reducers skip null and NaN; no valid point is no value (count counts every point)
_CLASSIC_REDUCERS: dict[str, Callable[[Sequence[float | None]], float | None]] = {
    "avg": lambda v: _mean(_valid(v)) if _valid(v) else None,
    "sum": lambda v: _sum(_valid(v)) if _valid(v) else None,
    "min": lambda v: min(_valid(v)) if _valid(v) else None,
    "max": lambda v: max(_valid(v)) if _valid(v) else None,
    "count": lambda v: float(len(v)),
    "last": lambda v: _valid(v)[-1] if _valid(v) else None,
    "median": lambda v: _classic_median(_valid(v)) if _valid(v) else None,
    "diff": lambda v: _classic_diff(v, lambda n, o: n - o),
    "diff_abs": lambda v: _classic_diff(v, lambda n, o: abs(n - o)),
    "percent_diff": lambda v: _classic_diff(v, lambda n, o: _div(n - o, abs(o)) * 100),
    "percent_diff_abs": lambda v: _classic_diff(v, lambda n, o: abs(_div(n - o, o) * 100)),
    "count_non_null": lambda v: float(len(_valid(v))) if _valid(v) else None,
}


def _classic_test(kind: str, params: tuple[float, ...], value: float | None) -> bool:
    """A classic evaluator: no_value fires on no value; every other never fires on it."""
    if kind == "no_value":
        return value is None
    if value is None:
        return False
    if len(params) == 1:
        return _PREDICATES[kind][1](value, params)
    low, high = params
    if kind == "within_range":
        return low < value < high or high < value < low
    if kind == "outside_range":
        return (high < value and low < value) or (high > value and low > value)
    if kind == "within_range_included":
        return low <= value <= high or high <= value <= low
    return (high <= value and low <= value) or (high >= value and low >= value)


def _go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64): the shortest digits, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


class _Condition(NamedTuple):
    source: str
    reducer: str
    kind: str
    params: tuple[float, ...]
    operator: str


MAX_CONDITIONS = 100  # conditions one classic_conditions expression may hold


class ClassicConditions(NamedTuple):
    """classic_conditions: reduce and evaluate each condition, combine them left to right into one Number."""

    ref_id: str
    conditions: tuple[_Condition, ...]
    refused: int = 0  # the number of conditions sent, when more than MAX_CONDITIONS (none were read)

    def needs(self) -> list[str]:
        """The refIds this command reads."""
        return [condition.source for condition in self.conditions]

    def run(self, variables: Mapping[str, list[Value]], time_range: TimeRange) -> list[Value]:
        """The command's values from the results so far; ExecutionError when it cannot run."""
        if self.refused:
            raise ExecutionError(f"classic_conditions has {self.refused} conditions; gateway evaluates at most "
                                 f"{MAX_CONDITIONS} conditions per classic_conditions expression")
        firing = no_data = False
        matches: list[dict[str, Any]] = []
        for index, condition in enumerate(self.conditions):
            cond_firing, cond_no_data = self.check(condition, variables[condition.source], matches)
            if index == 0:
                firing, no_data = cond_firing, cond_no_data
            elif condition.operator == "or":
                firing, no_data = firing or cond_firing, no_data or cond_no_data
            else:
                firing, no_data = firing and cond_firing, no_data and cond_no_data
        result = Number("", None, None if no_data else (1.0 if firing else 0.0))
        result.custom = matches
        return [result]

    @staticmethod
    def check(condition: _Condition, values: list[Value], matches: list[dict[str, Any]]) -> tuple[bool, bool]:
        """(firing, no data) of one condition, its matches appended."""
        if not values and condition.kind == "no_value":
            matches.append({"value": "", "metric": "", "labels": None})
            return True, False
        firing = False
        no_data = 0
        for value in values:
            if isinstance(value, NoData):
                name, number, labels = "", None, None
            elif isinstance(value, Number):
                name, number, labels = value.name, value.value, value.labels
            elif isinstance(value, Series):
                name, labels = value.name, value.labels
                number = _CLASSIC_REDUCERS[condition.reducer](value.values) if value.values else None
            else:
                raise ExecutionError(f"can only reduce type series, got type {_kind(value)}")
            if _classic_test(condition.kind, condition.params, number):
                firing = True
                matches.append({"value": "" if number is None else _go_float(number), "metric": name,
                                "labels": dict(labels) if labels is not None else None})
            elif number is None:
                no_data += 1
        if no_data == len(values):
            matches.append({"value": "", "metric": "NoData", "labels": None})
        return firing, no_data == len(values)
