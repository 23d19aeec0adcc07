"""The math language: Grafana's lexer and a recursive-descent parser into a tree of tuples."""

from __future__ import annotations

from typing import Any, NamedTuple

from gateway.expressions.arithmetic import _CONSTANTS, FUNCTIONS
from gateway.expressions.errors import BuildError

MAX_EXPRESSION_LENGTH = 4096  # characters of one math expression
MAX_DEPTH = 64  # nesting (parentheses, unary operators, function calls) of one math expression
MAX_HEIGHT = 256  # height of one math expression's tree: evaluation recurses this deep


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
