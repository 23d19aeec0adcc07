"""Go's float64 arithmetic and the math language's functions: x/0 is ±Inf, log(0) is -Inf, never a raise."""

from __future__ import annotations

import math
from collections.abc import Callable

from gateway.expressions.values import _NAN

_INF = math.inf


def _odd_integer(y: float) -> bool:
    return math.isfinite(y) and y == math.floor(y) and abs(y) < 2**53 and int(y) % 2 == 1


def _pow(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except OverflowError:
        return -_INF if a < 0 and _odd_integer(b) else _INF
    except ValueError:
        if a == 0:  # Go: Pow(±0, y<0) is ±Inf
            return math.copysign(_INF, a) if _odd_integer(b) else _INF
        return _NAN  # a negative base with a non-integer exponent


def _div(a: float, b: float) -> float:
    if b == 0:
        if a == 0:
            return _NAN
        return math.copysign(_INF, a) * math.copysign(1.0, b)
    return a / b


def _mod(a: float, b: float) -> float:
    try:
        return math.fmod(a, b)
    except ValueError:  # Go: Mod(±Inf, y) and Mod(x, 0) are NaN
        return _NAN


def _compare(test: Callable[[float, float], bool]) -> Callable[[float, float], float]:
    return lambda a, b: 1.0 if test(a, b) else 0.0


_BINARY: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": _div, "%": _mod,
    "**": _pow,
    "==": _compare(lambda a, b: a == b), "!=": _compare(lambda a, b: a != b), ">": _compare(lambda a, b: a > b),
    ">=": _compare(lambda a, b: a >= b), "<": _compare(lambda a, b: a < b), "<=": _compare(lambda a, b: a <= b),
    "&&": _compare(lambda a, b: a != 0 and b != 0), "||": _compare(lambda a, b: a != 0 or b != 0),
}


def _binary(op: str, a: float, b: float) -> float:
    """Grafana's binaryOp: || and && short-circuit before NaN, then NaN in gives NaN out."""
    if op == "||" and a != 0:
        return 1.0
    if op == "&&" and a == 0:
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return _NAN
    return _BINARY[op](a, b)  # Python float + - * overflow to ±Inf as Go's do; / % ** are guarded above


def _unary(op: str, a: float) -> float:
    if math.isnan(a):
        return _NAN
    if op == "!":
        return 1.0 if a == 0 else 0.0
    return -a


def _log(x: float) -> float:
    if x == 0:
        return -_INF
    if x < 0 or math.isnan(x):
        return _NAN
    return math.log(x)


def _round(x: float) -> float:
    """Go's math.Round: half away from zero."""
    if not math.isfinite(x):
        return x
    whole = float(math.trunc(x))
    if abs(x - whole) >= 0.5:
        whole += math.copysign(1.0, x)
    return whole


def _finite_only(f: Callable[[float], float]) -> Callable[[float], float]:
    return lambda x: f(x) if math.isfinite(x) else x


_PER_FLOAT: dict[str, Callable[[float], float]] = {
    "abs": math.fabs, "log": _log, "round": _round,
    "ceil": _finite_only(lambda x: float(math.ceil(x))), "floor": _finite_only(lambda x: float(math.floor(x))),
    "is_nan": lambda x: 1.0 if math.isnan(x) else 0.0, "is_inf": lambda x: 1.0 if math.isinf(x) else 0.0,
}
_PER_NULLABLE: dict[str, Callable[[float | None], float | None]] = {
    "is_null": lambda x: 1.0 if x is None else 0.0,
    "is_number": lambda x: 0.0 if x is None or not math.isfinite(x) else 1.0,
}
_CONSTANTS: dict[str, float | None] = {"nan": _NAN, "inf": _INF, "infn": -_INF, "null": None}
FUNCTIONS = frozenset(_PER_FLOAT) | frozenset(_PER_NULLABLE) | frozenset(_CONSTANTS)
