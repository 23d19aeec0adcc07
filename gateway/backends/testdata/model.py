"""The query model: Grafana's kinds.TestDataQuery, decoded as Go's json.Unmarshal decodes it."""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi


class CSVWave(msgspec.Struct, rename="camel"):
    time_step: int = 0
    values_csv: str = msgspec.field(default="", name="valuesCSV")
    labels: str = ""
    name: str = ""


class PulseWave(msgspec.Struct, rename="camel"):
    time_step: int = 0
    on_count: int = 0
    off_count: int = 0
    on_value: float = 0.0
    off_value: float = 0.0


class Model(msgspec.Struct, rename="camel"):
    """The fields the scenarios read; start_value None means Grafana's default, a random value in [0, 100)."""

    scenario_id: str = "random_walk"
    alias: str = ""
    labels: str = ""
    string_input: str = ""
    csv_content: str = ""
    csv_wave: list[CSVWave] = msgspec.field(default_factory=list)
    drop_percent: float = 0.0
    error_source: str = ""
    level_column: bool = False
    start_value: float | None = None
    spread: float = 1.0
    noise: float = 0.0
    min_value: float | None = msgspec.field(default=None, name="min")
    max_value: float | None = msgspec.field(default=None, name="max")
    with_nil: bool = False
    lines: int = 10
    series_count: int = 1
    pulse_wave: PulseWave | None = None


S = TypeVar("S", bound=msgspec.Struct)
_KEEP = object()  # Go leaves the field as it was: a null, or a value of the wrong type


@cache
def _struct_fields(cls: type[msgspec.Struct]) -> tuple[dict[str, mi.Field], dict[str, mi.Field]]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return ({field.encode_name: field for field in info.fields},
            {field.encode_name.lower(): field for field in info.fields})


def go_decode(cls: type[S], data: Any) -> S:
    """`data` into `cls` as Go's json.Unmarshal fills a struct that holds defaults: keys match exactly, else
    case-insensitively; unknown keys are ignored; a value of the wrong type (a string for a number, a float
    for an int) leaves its field at the default and the rest still decodes. msgspec.convert would either
    refuse the whole model (strict) or coerce "5" into 5 (strict=False), which Go does not."""
    exact, folded = _struct_fields(cls)
    values: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            field = exact.get(key) or folded.get(key.lower())
            if field is not None:
                decoded = _go_value(value, field.type)
                if decoded is not _KEEP:
                    values[field.name] = decoded
    return cls(**values)


def _go_value(value: Any, kind: mi.Type) -> Any:
    optional = isinstance(kind, mi.UnionType)
    if isinstance(kind, mi.UnionType):
        kind = next(member for member in kind.types if not isinstance(member, mi.NoneType))
    if value is None:
        return None if optional else _KEEP  # null sets a pointer to nil and leaves anything else alone
    if isinstance(kind, mi.StrType):
        return value if isinstance(value, str) else _KEEP
    if isinstance(kind, mi.BoolType):
        return value if isinstance(value, bool) else _KEEP
    if isinstance(kind, mi.FloatType):
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _KEEP
    if isinstance(kind, mi.IntType):
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
        return value if ok else _KEEP
    if isinstance(kind, mi.StructType):
        return go_decode(kind.cls, value) if isinstance(value, dict) else _KEEP
    if isinstance(kind, mi.ListType) and isinstance(value, list):
        return [_go_element(item, kind.item_type) for item in value]
    return _KEEP


def _go_element(value: Any, kind: mi.Type) -> Any:
    """A slice element: what decodes, else the type's zero value."""
    decoded = _go_value(value, kind)
    if decoded is not _KEEP:
        return decoded
    if isinstance(kind, mi.StructType):
        return kind.cls()
    return {mi.StrType: "", mi.BoolType: False, mi.FloatType: 0.0, mi.IntType: 0}.get(type(kind))
