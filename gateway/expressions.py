"""Server-side expressions (`__expr__`, spec-query §10): the value model, the command models, the pipeline.

`build()` reads every query of an expression request into a node (a data source query or a command: math,
reduce, resample, threshold), links commands to the refIds they name and orders them; any problem there is
a BuildError, which the caller answers as Grafana does (500 "Query data error", the reason only logged).
The caller runs the data source nodes through the ordinary fan-out and hands their responses to
`Pipeline.evaluate()`, which converts them to Series/Numbers, runs the commands in order and answers each
refId; failures there belong to one node (and, as dependency errors, to the nodes that needed it).

Times are integer nanoseconds inside the engine (frames carry milliseconds plus `nanos`); values are Python
floats with None for null, and follow Go's float64 arithmetic (x/0 is ±Inf, log(0) is -Inf, never a raise).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec

from gateway.backends.base import DataQuery
from gateway.frames import DataResponse, Field, Frame, FrameMeta, Notice, meta
from gateway.gtime import TimeRange, parse_duration

MAX_EXPRESSION_LENGTH = 4096  # characters of one math expression
MAX_DEPTH = 64  # nesting (parentheses, unary operators, function calls) of one math expression
MAX_HEIGHT = 256  # height of one math expression's tree: evaluation recurses this deep
MAX_RESAMPLED_POINTS = 1_000_000  # points one resample may produce per series
DEFAULT_INTERVAL_MS = 64  # what Grafana's expression engine gives a data source query without intervalMs
DEFAULT_MAX_DATA_POINTS = 5000
NAME_LABEL = "__name__"
# types whose unlabelled series Grafana names by a `__name__` label (pkg/expr/converter.go)
_NAME_FIXED_TYPES = frozenset({"graphite", "grafana-testdata-datasource", "testdata", "dynatrace", "influxdb"})
_NS = 1_000_000
_NAN = math.nan
_INF = math.inf


class BuildError(Exception):
    """The pipeline cannot be built; the client sees 500 "Query data error", the message goes to the log."""


class ExecutionError(Exception):
    """One command failed; its refId carries the message."""


# -- values -------------------------------------------------------------------------------------------------

Labels = dict[str, str] | None


class Series:
    """A time series: sorted or not, as its source gave it; values None for null."""

    __slots__ = ("config", "frame_name", "labels", "name", "notices", "time_config", "time_name", "times",
                 "values")

    def __init__(self, name: str, labels: Labels, times: list[int], values: list[float | None], *,
                 time_name: str = "Time", frame_name: str = "", time_config: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.labels = labels
        self.times = times
        self.values = values
        self.time_name = time_name
        self.frame_name = frame_name
        self.time_config = time_config
        self.config = config
        self.notices: list[Notice] = []


class Number:
    """A labelled single value."""

    __slots__ = ("config", "custom", "labels", "name", "notices", "value")

    def __init__(self, name: str, labels: Labels, value: float | None, config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.labels = labels
        self.value = value
        self.config = config
        self.notices: list[Notice] = []
        self.custom: list[dict[str, Any]] | None = None  # classic conditions: their matches


class Scalar:
    """An unlabelled constant."""

    __slots__ = ("name", "notices", "value")

    def __init__(self, name: str, value: float | None) -> None:
        self.name = name
        self.value = value
        self.notices: list[Notice] = []


class NoData:
    """No data, with the data source's empty frame when there was one."""

    __slots__ = ("frame", "notices")

    def __init__(self, frame: Frame | None = None) -> None:
        self.frame = frame
        self.notices: list[Notice] = []


Value = Series | Number | Scalar | NoData


def _kind(value: Value) -> str:
    """Grafana's name of a value type, for error messages."""
    return {Series: "seriesSet", Number: "numberSet", Scalar: "scalar", NoData: "noData"}[type(value)]


def _frame(value: Value) -> Frame:
    """The frame Grafana writes for one value (spec-query §10.2)."""
    notices = list(value.notices) or None
    if isinstance(value, Series):
        millis = [t // _NS for t in value.times]
        nanos = [t % _NS for t in value.times]
        return Frame([Field(value.time_name, "time.Time", millis, config=value.time_config,
                            nanos=nanos if any(nanos) else None),
                      Field(value.name, "float64", list(value.values), nullable=True, labels=value.labels,
                            config=value.config)],
                     name=value.frame_name, meta=meta("timeseries-multi", (0, 1), notices=notices))
    plain = FrameMeta(type_version=(0, 0), notices=notices) if notices else None
    if isinstance(value, Number):
        if value.custom is not None:
            plain = FrameMeta(type_version=(0, 0), custom=value.custom, notices=notices)
        return Frame([Field(value.name, "float64", [value.value], nullable=True, labels=value.labels,
                            config=value.config)], meta=plain)
    if isinstance(value, Scalar):
        return Frame([Field(value.name, "float64", [value.value], nullable=True)], meta=plain)
    if value.frame is not None:  # a copy: the same value may answer several refIds
        return Frame(value.frame.fields, name=value.frame.name, meta=value.frame.meta)
    return Frame(name="no data", meta=plain)


# -- Go's float64 arithmetic --------------------------------------------------------------------------------

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


# -- the math language: lexer and recursive-descent parser ---------------------------------------------------

class Token(NamedTuple):
    """One lexeme of a math expression."""

    kind: str  # num, var, func, op, (, ), str, ",", eof
    text: str
    at: int


_SYMBOLS = frozenset("!<>=&|+-*/%")
_OPERATORS = frozenset({"!", "&&", "||", ">", "<", ">=", "<=", "==", "!=", "+", "-", "*", "**", "/", "%"})


def _var_char(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdigit()


def _lex(text: str) -> list[Token]:
    """Tokens as Grafana's lexer cuts them: a run of symbol characters is one operator (`*-` is an error)."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        start = i
        if c.isspace():
            i += 1
            continue
        if c == "$":
            i += 1
            if i < n and text[i] == "{":
                end = text.find("}", i)
                if end < 0:
                    raise BuildError("expr: unterminated variable missing closing }")
                inner = text[i + 1:end]
                if not inner or not all(_var_char(ch) or ch.isspace() for ch in inner):
                    raise BuildError("expr: incomplete variable" if not inner
                                     else "expr: unsupported variable character")
                tokens.append(Token("var", text[start:end + 1], start))
                i = end + 1
                continue
            while i < n and _var_char(text[i]):
                i += 1
            if i == start + 1:
                raise BuildError("expr: incomplete variable")
            tokens.append(Token("var", text[start:i], start))
        elif c in _SYMBOLS:
            while i < n and text[i] in _SYMBOLS:
                i += 1
            symbol = text[start:i]
            if symbol not in _OPERATORS:
                raise BuildError(f"expr: unexpected {symbol!r}")
            tokens.append(Token("op", symbol, start))
        elif c.isdigit() or c == ".":
            digits = "0123456789"
            if text.startswith(("0x", "0X"), i):
                i += 2
                digits = "0123456789abcdefABCDEF"
            while i < n and text[i] in digits:
                i += 1
            if i < n and text[i] == ".":
                i += 1
                while i < n and text[i] in digits:
                    i += 1
            if i < n and text[i] in "eE":
                i += 1
                if i < n and text[i] in "+-":
                    i += 1
                while i < n and text[i].isdigit():
                    i += 1
            tokens.append(Token("num", text[start:i], start))
        elif c.isalpha():
            while i < n and (text[i].isalpha() or text[i] == "_"):
                i += 1
            tokens.append(Token("func", text[start:i], start))
        elif c in "(),":
            i += 1
            tokens.append(Token(c, c, start))
        elif c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise BuildError("expr: unterminated string")
            i = end + 1
            tokens.append(Token("str", text[start:i], start))
        else:
            raise BuildError(f"expr: invalid character: {c}")
    tokens.append(Token("eof", "", n))
    return tokens


def _number(text: str) -> float:
    """A literal as Go's ParseUint(text, 0) then ParseFloat read it (0x1F is 31, 010 is 8)."""
    lowered = text.lower()
    try:
        if lowered.startswith("0x"):
            return float(int(lowered, 16))
        if len(text) > 1 and text.startswith("0") and text.isdigit():
            try:
                return float(int(text, 8))
            except ValueError:
                pass
        return float(text)
    except ValueError:
        raise BuildError(f"expr: illegal number syntax: {text!r}") from None


# AST nodes are tuples: ("num", value, text), ("var", name, text), ("unary", op, arg), ("binary", op, left,
# right), ("func", name, args)
Node = tuple[Any, ...]
_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"||"}), frozenset({"&&"}), frozenset({"==", "!=", ">", ">=", "<", "<="}), frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}), frozenset({"**"}),
)


class _Parser:
    """Grafana's grammar: || < && < comparisons < + - < * / % < ** (all left-associative); unary ! and -
    bind tightest; functions take one argument or none."""

    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.at = 0
        self.names: list[str] = []
        self.heights: dict[int, int] = {}
        self.keep: list[Node] = []

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def parse(self) -> Node:
        node = self.level(0, 0)
        if self.peek().kind != "eof":
            raise BuildError(f"expr: unexpected {self.peek().text!r} in root input")
        return node

    def grown(self, node: Node, *children: Node) -> Node:
        """`node`, refused when its tree is taller than MAX_HEIGHT (a long chain of operators is a tall tree)."""
        height = 1 + max((self.heights.get(id(child), 1) for child in children), default=0)
        if height > MAX_HEIGHT:
            raise BuildError(f"expr: the expression has more than {MAX_HEIGHT} levels of operations")
        self.heights[id(node)] = height
        self.keep.append(node)  # ids stay unique while the parse holds every node
        return node

    def level(self, index: int, depth: int) -> Node:
        if index == len(_LEVELS):
            return self.factor(depth)
        node = self.level(index + 1, depth)
        while self.peek().kind == "op" and self.peek().text in _LEVELS[index]:
            op = self.take().text
            right = self.level(index + 1, depth)
            node = self.grown(("binary", op, node, right), node, right)
        return node

    def factor(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise BuildError(f"expr: the expression nests deeper than {MAX_DEPTH}")
        token = self.take()
        if token.kind == "op" and token.text in ("!", "-"):
            arg = self.factor(depth + 1)
            return self.grown(("unary", token.text, arg), arg)
        if token.kind == "(":
            node = self.level(0, depth + 1)
            if self.take().kind != ")":
                raise BuildError("expr: unexpected token in input: F(), expected )")
            return node
        if token.kind == "num":
            return ("num", _number(token.text), token.text)
        if token.kind == "var":
            name = token.text[1:].removeprefix("{").removesuffix("}")
            self.names.append(name)
            return ("var", name, token.text)
        if token.kind == "func":
            return self.function(token.text, depth + 1)
        raise BuildError(f"expr: unexpected {token.text or 'EOF'!r} in input: F()")

    def function(self, name: str, depth: int) -> Node:
        if name not in FUNCTIONS:
            raise BuildError(f"expr: non existent function {name}")
        if self.take().kind != "(":
            raise BuildError("expr: unexpected token in func, expected (")
        args: list[Node] = []
        if self.peek().kind == ")":
            self.take()
        else:
            if self.peek().kind == "str":
                raise BuildError(f"expr: parse: expected variant for argument 0 of {name}, got string")
            args.append(self.level(0, depth + 1))
            if self.take().kind != ")":
                raise BuildError(f"expr: parse: too many arguments for {name}")
        wanted = 0 if name in _CONSTANTS else 1
        if len(args) != wanted:
            raise BuildError(f"expr: parse: {'not enough' if len(args) < wanted else 'too many'} arguments for {name}")
        return self.grown(("func", name, args), *args)


def parse_math(text: str) -> tuple[Node, list[str]]:
    """The tree of a math expression and the refIds it names, in order; BuildError when it does not parse."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise BuildError(f"math expression longer than {MAX_EXPRESSION_LENGTH} characters")
    parser = _Parser(text)
    return parser.parse(), parser.names


# -- evaluating math -----------------------------------------------------------------------------------------

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


# -- reduce, resample, threshold -----------------------------------------------------------------------------

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


class ClassicConditions(NamedTuple):
    """classic_conditions: reduce and evaluate each condition, combine them left to right into one Number."""

    ref_id: str
    conditions: tuple[_Condition, ...]

    def needs(self) -> list[str]:
        """The refIds this command reads."""
        return [condition.source for condition in self.conditions]

    def run(self, variables: Mapping[str, list[Value]], time_range: TimeRange) -> list[Value]:
        """The command's values from the results so far; ExecutionError when it cannot run."""
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


Command = MathCommand | Reduce | Resample | Threshold | ClassicConditions


# -- reading command models ------------------------------------------------------------------------------------

def _string(model: Mapping[str, Any], key: str, missing: str, wrong: str) -> str:
    if key not in model:
        raise BuildError(missing)
    value = model[key]
    if not isinstance(value, str):
        raise BuildError(f"{wrong}, got {type(value).__name__}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def command(ref_id: str, model: Mapping[str, Any]) -> Command:
    """The command an expression query describes; BuildError for Grafana's parse failures."""
    kind = model.get("type")
    if "type" not in model:
        raise BuildError(f"invalid command type in expression '{ref_id}': no expression command type in query")
    if not isinstance(kind, str):
        raise BuildError(f"invalid command type in expression '{ref_id}': expected expression command type to be "
                         f"a string, got type {type(kind).__name__}")
    if kind == "math":
        text = _string(model, "expression", "command is missing an expression",
                       "math expression is expected to be a string")
        tree, names = parse_math(text)
        return MathCommand(ref_id, tree, names)
    if kind == "reduce":
        source = _string(model, "expression", "no expression ID is specified to reduce. Must be a reference to an "
                         "existing query or expression", "expression ID is expected to be a string").removeprefix("$")
        reducer = _string(model, "reducer", "no reducer specified", "expected reducer to be a string").lower()
        if reducer not in REDUCERS:
            raise BuildError(f"reduction {reducer} not implemented")
        return Reduce(ref_id, source, reducer, _reduce_mapper(ref_id, model))
    if kind == "resample":
        source = _string(model, "expression", "no expression ID to resample. must be a reference to an existing "
                         "query or expression", "expected resample input variable to be type string").removeprefix("$")
        window = _string(model, "window", "no time duration specified for the window in resample command",
                         "resample window is expected to be a string")
        downsampler = _string(model, "downsampler", "no downsampler function specified in resample command",
                              "expected resample downsampler to be a string")
        upsampler = _string(model, "upsampler", "no upsampler specified in resample command",
                            "expected resample upsampler to be a string")
        try:
            window_ns = round(parse_duration(window) * _NS)
        except ValueError:
            raise BuildError(f'failed to parse resample "window" duration field {window!r}') from None
        return Resample(ref_id, source, window_ns, downsampler, upsampler)
    if kind == "threshold":
        return _threshold(ref_id, model)
    if kind == "sql":
        raise BuildError("sql expressions are disabled")
    if kind == "classic_conditions":
        return _classic(ref_id, model.get("conditions"))
    raise BuildError(f"invalid command type in expression '{ref_id}': '{kind}' is not a recognized expression type")


def _classic(ref_id: str, raw: Any) -> ClassicConditions:
    if raw is not None and not isinstance(raw, list):
        raise BuildError("failed to unmarshal remarshaled classic condition body")
    conditions: list[_Condition] = []
    for number, item in enumerate(raw or [], 1):
        if not isinstance(item, dict):
            raise BuildError("failed to unmarshal remarshaled classic condition body")
        parts = [item.get(key) or {} for key in ("operator", "query", "reducer", "evaluator")]
        if not all(isinstance(part, dict) for part in parts):
            raise BuildError("failed to unmarshal remarshaled classic condition body")
        operator, query, reducer, evaluator = parts
        op, sources, reduce_kind = operator.get("type") or "", query.get("params") or [], reducer.get("type") or ""
        kind, params = evaluator.get("type") or "", evaluator.get("params") or []
        if (not isinstance(op, str) or not isinstance(sources, list) or not all(isinstance(p, str) for p in sources)
                or not isinstance(reduce_kind, str) or not isinstance(kind, str) or not isinstance(params, list)
                or not all(_is_number(p) for p in params)):
            raise BuildError("failed to unmarshal remarshaled classic condition body")
        if number > 1 and op not in ("and", "or"):
            raise BuildError(f"condition {number} operator must be `and` or `or`")
        if not sources or not sources[0]:
            raise BuildError(f"condition {number} is missing the query RefID argument")
        if reduce_kind not in _CLASSIC_REDUCERS:
            raise BuildError(f"invalid reducer '{reduce_kind}' in condition {number}")
        if kind in ("gt", "lt", "eq", "ne", "gte", "lte"):
            if not params:
                raise BuildError(f"evaluator '{kind}' is missing the threshold parameter")
            params = params[:1]
        elif kind in ("within_range", "outside_range", "within_range_included", "outside_range_included"):
            if len(params) != 2:
                raise BuildError("ranged evaluator requires 2 parameters")
        elif kind != "no_value":
            raise BuildError(f"evaluator invalid evaluator type: {kind}")
        conditions.append(_Condition(sources[0], reduce_kind, kind, tuple(float(p) for p in params), op))
    return ClassicConditions(ref_id, tuple(conditions))


def _reduce_mapper(ref_id: str, model: Mapping[str, Any]) -> _Mapper | None:
    if "settings" not in model:
        return None
    settings = model["settings"]
    if not isinstance(settings, dict):
        raise BuildError(f"field settings must be an object, got {type(settings).__name__} for refId {ref_id}")
    mode = settings.get("mode")
    if mode is None or mode == "":
        return None
    if mode == "dropNN":
        return _Mapper(None)
    if mode == "replaceNN":
        if "replaceWithValue" not in settings:
            raise BuildError("setting replaceWithValue must be specified when mode is 'replaceNN'")
        value = settings["replaceWithValue"]
        if not _is_number(value):
            raise BuildError(f"setting replaceWithValue must be a number, got {type(value).__name__}")
        return _Mapper(float(value))
    raise BuildError(f"reducer mode '{mode}' is not supported. Supported only: [dropNN,replaceNN]")


def _threshold(ref_id: str, model: Mapping[str, Any]) -> Threshold:
    source = model.get("expression", "")
    conditions = model.get("conditions")
    if not isinstance(source, str) or (conditions is not None and not isinstance(conditions, list)):
        raise BuildError("failed to parse the threshold command")
    if not source:
        raise BuildError(f"no variable specified to reference for refId {ref_id}")
    if not conditions or len(conditions) != 1:
        raise BuildError("threshold expression requires exactly one condition")
    condition = conditions[0]
    evaluator = condition.get("evaluator") if isinstance(condition, dict) else None
    if evaluator is None:
        evaluator = {}
    if not isinstance(evaluator, dict):
        raise BuildError("failed to parse the threshold command")
    kind, params = evaluator.get("type", ""), evaluator.get("params") or []
    if not isinstance(kind, str) or not isinstance(params, list) or not all(_is_number(p) for p in params):
        raise BuildError("failed to parse the threshold command")
    if kind not in _PREDICATES:
        raise BuildError(f"invalid condition: expected threshold function to be one of [{', '.join(_PREDICATES)}], "
                         f"got {kind}")
    wanted = _PREDICATES[kind][0]
    if len(params) < wanted:
        raise BuildError(f"invalid condition: incorrect number of arguments for threshold function '{kind}': "
                         f"got {len(params)} but need {wanted}")
    # unloadEvaluator (hysteresis) needs alerting's loaded dimensions; a panel query evaluates the threshold alone
    return Threshold(ref_id, source, kind, tuple(float(p) for p in params))


# -- data source results into values ---------------------------------------------------------------------------

_NUMERIC = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
                      "float64"})


def _floats(field: Field) -> list[float | None]:
    """A value field as nullable float64 (SDK NullableFloatAt)."""
    if field.item_type in _NUMERIC:
        return [None if v is None else float(v) for v in field.values]
    if field.item_type == "bool":
        return [None if v is None else (1.0 if v else 0.0) for v in field.values]
    if field.item_type == "time.Time":
        return [None if v is None else float(v) for v in field.values]
    raise ValueError("unexpected value type, expected float64 but got string")


def _schema(frame: Frame) -> tuple[str, int, list[int]]:
    """The SDK's TimeSeriesSchema: (not|wide|long, time index, value indices)."""
    times = [i for i, f in enumerate(frame.fields) if f.item_type == "time.Time"]
    if not times:
        return "not", -1, []
    factors = {i for i, f in enumerate(frame.fields) if f.item_type == "string"}
    values = [i for i in range(len(frame.fields)) if i != times[0] and i not in factors]
    if not values:
        return "not", times[0], []
    return ("long" if factors else "wide"), times[0], values


def _series(frame: Frame, time_index: int, value_index: int, rename: bool) -> Series:
    time_field, value_field = frame.fields[time_index], frame.fields[value_index]
    nanos = time_field.nanos or [0] * len(time_field.values)
    times: list[int] = []
    for ms, extra in zip(time_field.values, nanos, strict=False):
        if ms is None:
            raise ValueError("time series with null time stamps are not supported")
        times.append(ms * _NS + extra)
    name = frame.name if rename and frame.name else value_field.name
    labels = dict(value_field.labels) if value_field.labels is not None else None
    return Series(name, labels, times, _floats(value_field), time_name=time_field.name, frame_name=frame.name,
                  time_config=time_field.config, config=value_field.config)


def _numbers(frame: Frame) -> list[Value]:
    """A table of one number column and string columns: one Number per row, the strings as labels."""
    numeric = next((i for i, f in enumerate(frame.fields) if f.item_type in _NUMERIC), -1)
    if numeric < 0:
        raise ValueError("no numeric field found in a numeric frame")
    strings = [f for f in frame.fields if f.item_type == "string"]
    field = frame.fields[numeric]
    out: list[Value] = []
    for row, value in enumerate(_floats(field)):
        labels = {f.name: str(f.values[row]) for f in strings} if strings else None
        out.append(Number(field.name, labels, _NAN if value is None else value, field.config))
    return out


def convert(ds_type: str, frames: list[Frame] | None) -> list[Value]:
    """A data source's frames as values (Grafana's ResultConverter); ValueError when they are not numbers or
    wide series."""
    if not frames:
        return [NoData()]
    first = frames[0]
    if first.meta is not None and first.meta.type and first.meta.type_version != (0, 0):
        return _dataplane(frames)
    if len(frames) == 1:
        if not first.fields:
            return [NoData(first)]
        kind, _, _ = _schema(first)
        numeric = sum(f.item_type in _NUMERIC for f in first.fields)
        other = sum(f.item_type not in _NUMERIC and f.item_type != "string" for f in first.fields)
        if kind == "not" and numeric == 1 and other == 0:
            return _numbers(first)
    series: list[Series] = []
    fields: list[Field] = []
    for frame in frames:
        kind, time_index, value_indices = _schema(frame)
        if kind != "wide":
            raise ValueError(f"input data must be a wide series but got type {kind} (input refid)")
        series.extend(_series(frame, time_index, index, True) for index in value_indices)
        fields.extend(frame.fields[index] for index in value_indices)
    if ds_type in _NAME_FIXED_TYPES and not any(s.labels for s in series):
        _name_series(series, fields)
    return list(series)


def _name_series(series: list[Series], fields: list[Field]) -> None:
    """Label unlabelled series `__name__` by the first of their fields' displayNameFromDS, displayName and name
    that is set and unique for every one of them."""
    for key in ("displayNameFromDS", "displayName", None):
        names = [f.name if key is None else str((f.config or {}).get(key) or "") for f in fields]
        if all(names) and len(set(names)) == len(names):
            for s, name in zip(series, names, strict=True):
                s.labels = {NAME_LABEL: name}
            return


def _dataplane(frames: list[Frame]) -> list[Value]:
    """Frames that declare a dataplane type: time series (multi/wide) or numbers (multi/wide/long)."""
    frame_type = frames[0].meta.type if frames[0].meta is not None else ""
    out: list[Value] = []
    if frame_type.startswith("timeseries-"):
        for frame in frames:
            kind, time_index, value_indices = _schema(frame)
            if kind == "not" and not frame.fields:
                continue
            if kind != "wide":
                raise ValueError(f"can not read {frame_type} data with a frame of type {kind}")
            out.extend(_series(frame, time_index, index, False) for index in value_indices)
    elif frame_type.startswith("numeric-"):
        for frame in frames:
            if any(f.item_type == "string" for f in frame.fields):
                out.extend(_numbers(frame))
                continue
            for field in frame.fields:
                if field.item_type in _NUMERIC:
                    out.extend(Number(field.name, dict(field.labels) if field.labels is not None else None,
                                      value, field.config) for value in _floats(field))
    else:
        raise ValueError(f"kind {frame_type} not supported by server side expressions")
    return out or [NoData()]


# -- the pipeline ------------------------------------------------------------------------------------------------

class PipelineNode(NamedTuple):
    """One query of the pipeline: a data source query (its type) or a command."""

    ref_id: str
    ds_type: str | None  # None: a command
    command: Command | None
    hidden: bool


def data_query(model: dict[str, Any], raw: msgspec.Raw, ref_id: str, query_type: str,
               time_range: TimeRange) -> DataQuery:
    """A data source query as Grafana's expression engine sends it: intervalMs 64 and maxDataPoints 5000 unless
    the query gives numbers."""
    numbers = []
    for key, default in (("intervalMs", DEFAULT_INTERVAL_MS), ("maxDataPoints", DEFAULT_MAX_DATA_POINTS)):
        if key not in model:
            numbers.append(default)
            continue
        value = model[key]
        if not _is_number(value) or not math.isfinite(value) or abs(value) >= 2**63:
            raise BuildError(f"expected {key} to be an float64, got type {type(value).__name__} for refId {ref_id}")
        numbers.append(int(value))
    return DataQuery(ref_id=ref_id, query_type=query_type, max_data_points=numbers[1], interval_ms=numbers[0],
                     time_range=time_range, model=raw)


def _hidden(model: Mapping[str, Any], ref_id: str) -> bool:
    hide = model.get("hide")
    if hide is not None and not isinstance(hide, bool):
        raise BuildError(f"json: cannot unmarshal {type(hide).__name__} into Go struct field .hide of type bool "
                         f"(refId {ref_id})")
    return hide is True


class Pipeline:
    """The nodes of one expression request in execution order: data source queries first, then commands."""

    def __init__(self, nodes: list[PipelineNode], time_range: TimeRange) -> None:
        self.nodes = nodes
        self.time_range = time_range

    def evaluate(self, answers: Mapping[str, DataResponse]) -> dict[str, DataResponse]:
        """Every refId's answer, from the data sources' `answers` and the commands run over them in order."""
        variables: dict[str, list[Value]] = {}
        errors: dict[str, str] = {}
        for node in self.nodes:
            if node.command is None:
                answer = answers.get(node.ref_id)
                if answer is not None and answer.error is not None:
                    errors[node.ref_id] = (f"[sse.dataQueryError] failed to execute query [{node.ref_id}]: "
                                           f"{answer.error}")
                    continue
                try:
                    variables[node.ref_id] = convert(node.ds_type or "", answer.frames if answer else None)
                except ValueError as failure:
                    errors[node.ref_id] = f"[sse.readDataError] [{node.ref_id}] got error: {failure}"
                continue
            failed = next((name for name in node.command.needs() if name in errors), None)
            if failed is not None:
                errors[node.ref_id] = (f"[sse.dependencyError] did not execute expression [{node.ref_id}] due to a "
                                       f"failure to of the dependent expression or query [{failed}]")
                continue
            try:
                variables[node.ref_id] = node.command.run(variables, self.time_range)
            except ExecutionError as failure:
                errors[node.ref_id] = str(failure)
        results: dict[str, DataResponse] = {}
        for node in self.nodes:
            if node.hidden:
                continue
            if node.ref_id in errors:
                results[node.ref_id] = DataResponse([], error=errors[node.ref_id])
                continue
            frames = [_frame(value) for value in variables[node.ref_id]]
            for frame in frames:
                frame.ref_id = node.ref_id
            results[node.ref_id] = DataResponse(frames)
        return results


class Query(NamedTuple):
    """One query of an expression request: its refId, model and data source type (None: an expression)."""

    ref_id: str
    model: dict[str, Any]
    ds_type: str | None


def build(queries: Sequence[Query], time_range: TimeRange) -> Pipeline:
    """The pipeline of an expression request, or BuildError (unknown type, bad model, unknown or self
    reference, cycle)."""
    nodes: list[PipelineNode] = []
    index: dict[str, int] = {}
    for position, query in enumerate(queries):
        hidden = _hidden(query.model, query.ref_id)
        cmd = command(query.ref_id, query.model) if query.ds_type is None else None
        nodes.append(PipelineNode(query.ref_id, query.ds_type, cmd, hidden))
        index[query.ref_id] = position
    # edges: a command after every node it needs; Kahn's algorithm, smallest request position first
    waiting = [0] * len(nodes)
    after: list[list[int]] = [[] for _ in nodes]
    for position, node in enumerate(nodes):
        if node.command is None:
            continue
        for name in node.command.needs():
            if name not in index:
                raise BuildError(f"unable to find dependent node '{name}'")
            if index[name] == position:
                raise BuildError(f"expression '{name}' cannot reference itself. Must be query or another expression")
            needed = nodes[index[name]]
            if isinstance(node.command, ClassicConditions) and needed.command is not None:
                raise BuildError(f"only data source queries may be inputs to a classic condition, {name} is a "
                                 "Expression")
            if isinstance(needed.command, ClassicConditions):
                raise BuildError(f"classic conditions may not be the input for other expressions, but {name} is "
                                 f"the input for {node.ref_id}")
            after[index[name]].append(position)
            waiting[position] += 1
    ready = [position for position, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        position = heapq.heappop(ready)
        order.append(position)
        for follower in after[position]:
            waiting[follower] -= 1
            if waiting[follower] == 0:
                heapq.heappush(ready, follower)
    if len(order) != len(nodes):
        cycle = sorted(nodes[p].ref_id for p, count in enumerate(waiting) if count > 0)
        raise BuildError(f"cyclic dependency among {', '.join(cycle)}")
    ordered = [nodes[p] for p in order]
    return Pipeline([n for n in ordered if n.command is None] + [n for n in ordered if n.command is not None],
                    time_range)
