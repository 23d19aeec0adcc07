"""Reading an expression query's model into its command, with Grafana's parse failures as BuildErrors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.expressions.classic import _CLASSIC_REDUCERS, MAX_CONDITIONS, ClassicConditions, _Condition
from gateway.expressions.errors import BuildError
from gateway.expressions.matheval import MathCommand
from gateway.expressions.mathparse import parse_math
from gateway.expressions.reduce import REDUCERS, Reduce, _Mapper
from gateway.expressions.resample import Resample
from gateway.expressions.threshold import _PREDICATES, Threshold
from gateway.expressions.values import _NS
from gateway.gtime import parse_duration

Command = MathCommand | Reduce | Resample | Threshold | ClassicConditions


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
    if raw is not None and len(raw) > MAX_CONDITIONS:
        return ClassicConditions(ref_id, (), refused=len(raw))  # an error of this refId alone, when it runs
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
