"""The math command: a math expression's tree evaluated over the values so far, label unions and all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from gateway.expressions.arithmetic import _CONSTANTS, _PER_FLOAT, _PER_NULLABLE, _binary, _unary
from gateway.expressions.mathparse import Node
from gateway.expressions.values import _NAN, Labels, NoData, Number, Scalar, Series, Value
from gateway.frames import Notice
from gateway.gtime import TimeRange


def _contains(big: Labels, small: Labels) -> bool:
    big = big or {}
    return all(big.get(key) == value for key, value in (small or {}).items())


def _labels_of(value: Value) -> Labels:
    return value.labels if isinstance(value, Series | Number) else None


def _union(a_values: list[Value], b_values: list[Value]) -> tuple[list[tuple[Labels, Value, Value]], list[bool],
                                                                   list[bool]]:
    """Pairs of values whose labels match exactly or as a subset (Grafana's union), and which values of each
    side were matched; one value on each side always pairs (and, as in Grafana, still counts as dropped)."""
    a_matched, b_matched = [False] * len(a_values), [False] * len(b_values)
    if not a_values or not b_values:
        return [], a_matched, b_matched
    if (len(a_values) == 1 or len(b_values) == 1) and (isinstance(a_values[0], NoData)
                                                       or isinstance(b_values[0], NoData)):
        return [(None, a_values[0], b_values[0])], a_matched, b_matched
    pairs: list[tuple[Labels, Value, Value]] = []
    for i, a in enumerate(a_values):
        for j, b in enumerate(b_values):
            a_labels, b_labels = _labels_of(a), _labels_of(b)
            if (a_labels or {}) == (b_labels or {}) or not a_labels or not b_labels:
                labels = b_labels if not a_labels else a_labels
            elif len(a_labels) == len(b_labels):
                continue
            elif _contains(a_labels, b_labels):
                labels = a_labels
            elif _contains(b_labels, a_labels):
                labels = b_labels
            else:
                continue
            pairs.append((labels, a, b))
            a_matched[i] = b_matched[j] = True
    if not pairs and len(a_values) == 1 and len(b_values) == 1:
        pairs.append((None, a_values[0], b_values[0]))
    return pairs, a_matched, b_matched


def _text(node: Node) -> str:
    """A tree as Grafana prints it in notices (parentheses are not kept)."""
    kind = node[0]
    if kind in ("num", "var"):
        return str(node[2])
    if kind == "unary":
        return f"{node[1]}{_text(node[2])}"
    if kind == "binary":
        return f"{_text(node[2])} {node[1]} {_text(node[3])}"
    return f"{node[1]}({', '.join(_text(arg) for arg in node[2])})"


def _label_text(labels: Labels) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted((labels or {}).items()))


def _series_scalar(ref_id: str, labels: Labels, op: str, series: Series, scalar: float | None,
                   series_first: bool) -> Series:
    values: list[float | None] = []
    for value in series.values:
        if value is None or scalar is None:
            values.append(None)
        else:
            values.append(_binary(op, value, scalar) if series_first else _binary(op, scalar, value))
    return Series(ref_id, labels, list(series.times), values)


def _series_series(ref_id: str, labels: Labels, op: str, a: Series, b: Series) -> Series:
    """Points where both series have the same time; the others are dropped."""
    by_time = dict(zip(b.times, b.values, strict=True))
    times: list[int] = []
    values: list[float | None] = []
    for time, a_value in zip(a.times, a.values, strict=True):
        if time not in by_time:
            continue
        b_value = by_time[time]
        times.append(time)
        values.append(None if a_value is None or b_value is None else _binary(op, a_value, b_value))
    return Series(ref_id, labels, times, values)


def _pair(ref_id: str, op: str, labels: Labels, a: Value, b: Value) -> Value:
    if isinstance(a, NoData):  # a new value: notices added to it must not reach the refId it came from
        return NoData(a.frame)
    if isinstance(b, NoData):
        return NoData(b.frame)
    if isinstance(a, Series):
        if isinstance(b, Series):
            return _series_series(ref_id, labels, op, a, b)
        return _series_scalar(ref_id, labels, op, a, b.value, True)
    if isinstance(b, Series):
        return _series_scalar(ref_id, labels, op, b, a.value, False)
    value = None if a.value is None or b.value is None else _binary(op, a.value, b.value)
    if isinstance(a, Scalar) and isinstance(b, Scalar):
        return Scalar(ref_id, value)
    return Number(ref_id, labels, value)


def _each(ref_id: str, value: Value, f: Callable[[float | None], float | None]) -> Value:
    if isinstance(value, Series):
        return Series(ref_id, value.labels, list(value.times), [f(v) for v in value.values])
    if isinstance(value, Number):
        return Number(ref_id, value.labels, f(value.value))
    if isinstance(value, Scalar):
        return Scalar(ref_id, f(value.value))
    return NoData()


class _Math:
    """One math command's evaluation over the results so far, noting what unions dropped."""

    def __init__(self, ref_id: str, variables: Mapping[str, list[Value]]) -> None:
        self.ref_id = ref_id
        self.variables = variables
        self.drops: dict[str, dict[str, list[Labels]]] = {}
        self.dropped = 0

    def run(self, tree: Node) -> list[Value]:
        """The expression's values, the first carrying Grafana's warning when unions dropped some."""
        out = self.walk(tree)
        if self.dropped and out:
            out[0].notices.append(Notice("warning", self.notice()))
        return out

    def notice(self) -> str:
        parts = [f"{self.dropped} items dropped from union(s)"]
        if self.drops:
            parts.append(": ")
            for count, (binary, sides) in enumerate(self.drops.items(), 1):
                parts.append(f'["{binary}": ')
                for side_count, (side, dropped) in enumerate(sides.items(), 1):
                    items = []
                    for labels in dropped[:5]:
                        items.append("{" + _label_text(labels) + "}")
                    more = f"...{len(dropped) - 5} more..." if len(dropped) > 5 else ""
                    parts.append(f"({side}: {' '.join(items)}{more})" + (" " if side_count < len(sides) else ""))
                # Grafana compares with the number of sides here, not of binary nodes; kept for equal text
                parts.append("]" + (" " if count < len(sides) else ""))
        return "".join(parts)

    def note_drops(self, node: Node, values: list[Value], matched: list[bool], side: Node) -> None:
        for value, hit in zip(values, matched, strict=True):
            if hit:
                continue
            sides = self.drops.setdefault(_text(node), {})  # as Grafana: made even when only no data is left
            if isinstance(value, NoData):
                continue
            self.dropped += 1
            sides.setdefault(_text(side), []).append(_labels_of(value))

    def walk(self, node: Node) -> list[Value]:
        kind = node[0]
        if kind == "num":
            return [Scalar(self.ref_id, node[1])]
        if kind == "var":
            return list(self.variables[node[1]])
        if kind == "unary":
            op = node[1]
            return [_each(self.ref_id, v, lambda x: None if x is None else _unary(op, x)) for v in self.walk(node[2])]
        if kind == "binary":
            left, right = self.walk(node[2]), self.walk(node[3])
            pairs, left_matched, right_matched = _union(left, right)
            if left and right:
                self.note_drops(node, left, left_matched, node[2])
                self.note_drops(node, right, right_matched, node[3])
            return [_pair(self.ref_id, node[1], labels, a, b) for labels, a, b in pairs]
        name, args = node[1], node[2]
        if name in _CONSTANTS:
            return [Scalar(self.ref_id, _CONSTANTS[name])]
        values = self.walk(args[0])
        if name in _PER_NULLABLE:
            nullable = _PER_NULLABLE[name]
            return [_each(self.ref_id, v, nullable) for v in values]
        per = _PER_FLOAT[name]
        return [_each(self.ref_id, v, lambda x: _NAN if x is None else per(x)) for v in values]


class MathCommand(NamedTuple):
    """math: an expression over the refIds it names."""

    ref_id: str
    tree: Node
    names: list[str]

    def needs(self) -> list[str]:
        """The refIds this command reads."""
        return self.names

    def run(self, variables: Mapping[str, list[Value]], time_range: TimeRange) -> list[Value]:
        """The command's values from the results so far; ExecutionError when it cannot run."""
        return _Math(self.ref_id, variables).run(self.tree)
