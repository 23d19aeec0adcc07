"""The pipeline of an expression request: build() orders its queries, Pipeline.evaluate() answers each refId."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from gateway.backends.base import DataQuery
from gateway.expressions.classic import ClassicConditions
from gateway.expressions.commands import Command, _is_number, command
from gateway.expressions.errors import BuildError, ExecutionError
from gateway.expressions.resample import MAX_RESAMPLED_POINTS, Resample
from gateway.expressions.values import Value, _frame, convert
from gateway.frames import DataResponse
from gateway.gtime import TimeRange

DEFAULT_INTERVAL_MS = 64  # what Grafana's expression engine gives a data source query without intervalMs
DEFAULT_MAX_DATA_POINTS = 5000


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

    def evaluate(self, answers: Mapping[str, DataResponse], deadline: float | None = None) -> dict[str, DataResponse]:
        """Every refId's answer, from the data sources' `answers` and the commands run over them in order; a
        command not started by `deadline` (time.monotonic()) is an error of its refId instead."""
        variables: dict[str, list[Value]] = {}
        errors: dict[str, str] = {}
        points_left = MAX_RESAMPLED_POINTS
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
            if deadline is not None and time.monotonic() > deadline:
                errors[node.ref_id] = (f"[sse.executionError] did not execute expression [{node.ref_id}]: the "
                                       "expressions ran out of time")
                continue
            if isinstance(node.command, Resample):
                points = node.command.points(variables, self.time_range)
                if points > points_left:
                    errors[node.ref_id] = (f"resample would make {points} points; gateway answers at most "
                                           f"{MAX_RESAMPLED_POINTS} resampled points per request (all resamples "
                                           "and series together)")
                    continue
                points_left -= points
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
