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

from gateway.expressions.commands import command
from gateway.expressions.errors import BuildError
from gateway.expressions.mathparse import parse_math
from gateway.expressions.pipeline import Pipeline, Query, build, data_query
from gateway.expressions.values import Series, convert

__all__ = ["BuildError", "Pipeline", "Query", "Series", "build", "command", "convert", "data_query", "parse_math"]
