"""The threshold command and its evaluators (gt, lt, ranges ...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from gateway.expressions.matheval import _each
from gateway.expressions.values import Value
from gateway.gtime import TimeRange

_PREDICATES: dict[str, tuple[int, Callable[[float, Sequence[float]], bool]]] = {
    "gt": (1, lambda f, p: f > p[0]), "lt": (1, lambda f, p: f < p[0]), "eq": (1, lambda f, p: f == p[0]),
    "ne": (1, lambda f, p: f != p[0]), "gte": (1, lambda f, p: f >= p[0]), "lte": (1, lambda f, p: f <= p[0]),
    "within_range": (2, lambda f, p: p[0] < f < p[1]), "outside_range": (2, lambda f, p: f < p[0] or f > p[1]),
    "within_range_included": (2, lambda f, p: p[0] <= f <= p[1]),
    "outside_range_included": (2, lambda f, p: f <= p[0] or f >= p[1]),
}


class Threshold(NamedTuple):
    """threshold: each value 1 or 0 by one evaluator (null stays null)."""

    ref_id: str
    source: str
    kind: str
    params: tuple[float, ...]

    def needs(self) -> list[str]:
        """The refIds this command reads."""
        return [self.source]

    def run(self, variables: Mapping[str, list[Value]], time_range: TimeRange) -> list[Value]:
        """The command's values from the results so far; ExecutionError when it cannot run."""
        test = _PREDICATES[self.kind][1]
        params = self.params

        def check(value: float | None) -> float | None:
            return None if value is None else (1.0 if test(value, params) else 0.0)

        return [_each(self.ref_id, value, check) for value in variables[self.source]]
