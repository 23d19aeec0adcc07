"""CSV text as Grafana's TestData turns it into frames: Go's number parsing and `encoding/csv` reader (with
its error messages), the per-column type inference, `time` columns, and `{k="v"}` labels in headers.

TestData's own rules (G pkg/tsdb/grafana-testdata-datasource/csv_data.go): a column is nullable bool when its
first token is T/F/TRUE/FALSE, else nullable int64 when every present token is an integer, else nullable
float64, else nullable string; `null` and empty tokens are nulls, and a column with no present token is
string. A column whose name holds `time` becomes nullable time when some value reads as epoch milliseconds
or RFC 3339.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from gateway.errors import go_quote
from gateway.frames import Field, Frame

_INT64 = (-(2**63), 2**63 - 1)
_GO_INT = re.compile(rb"[+-]?[0-9]+")
_GO_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_GO_HEX = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+")
_GO_SPECIAL = re.compile(r"[+-]?(?:inf|infinity)|nan", re.IGNORECASE)
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(Z|[+-]\d{2}:\d{2})")


class CsvError(Exception):
    """The CSV cannot be read; the message is Go's."""


class LabelsPanic(Exception):
    """A labels text Grafana's parser panics on (a pair without `=`); the message is Go's runtime error."""


def go_int(token: str) -> int | None:
    """strconv.ParseInt(token, 10, 64), None where Go fails."""
    if not _GO_INT.fullmatch(token.encode()):
        return None
    value = int(token)
    return value if _INT64[0] <= value <= _INT64[1] else None


def go_float(token: str) -> float | None:
    """strconv.ParseFloat(token, 64), None where Go fails (bad syntax, or a magnitude beyond float64)."""
    if _GO_SPECIAL.fullmatch(token):
        return float(token.lower().replace("infinity", "inf"))
    if _GO_DECIMAL.fullmatch(token):
        value = float(token)
    elif _GO_HEX.fullmatch(token):
        sign = -1.0 if token[0] == "-" else 1.0
        try:
            value = sign * float.fromhex(token.lstrip("+-"))
        except OverflowError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def go_float_error(token: str) -> str:
    """The text of strconv.ParseFloat's error for a token go_float refuses."""
    reason = "value out of range" if _GO_DECIMAL.fullmatch(token) or _GO_HEX.fullmatch(token) else "invalid syntax"
    return f"strconv.ParseFloat: parsing {go_quote(token)}: {reason}"


def parse_labels(text: str, series_index: int) -> dict[str, str]:
    """parseLabelsString: `{job="foo", instance="bar"}` or `job=foo, instance=bar`; `$seriesIndex` in a value
    becomes the index. Empty (or shorter than two characters once braces are trimmed) is an empty map."""
    text = text.strip("{}")
    if len(text) < 2:
        return {}
    labels: dict[str, str] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep:
            raise LabelsPanic("runtime error: slice bounds out of range [:-1]")
        labels[key.strip()] = value.strip().strip('"').replace("$seriesIndex", str(series_index))
    return labels


# -- Go's encoding/csv -------------------------------------------------------------------------------------

class _Lines:
    """bufio-style line reader with encoding/csv's readLine normalisation (\\r\\n -> \\n, a final \\r dropped)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0
        self.number = 0

    def read(self) -> tuple[bytes, bool]:
        """(line, at_eof): the next line with its newline; at_eof when nothing was left to read."""
        if self.offset >= len(self.data):
            return b"", True
        end = self.data.find(b"\n", self.offset)
        if end < 0:
            line = self.data[self.offset:]
            self.offset = len(self.data)
            if line.endswith(b"\r"):
                line = line[:-1]
        else:
            line = self.data[self.offset:end + 1]
            self.offset = end + 1
        self.number += 1
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        return line, False


def _parse_error(start: int, line: int, column: int, message: str) -> CsvError:
    if start != line:
        return CsvError(f"record on line {start}; parse error on line {line}, column {column}: {message}")
    return CsvError(f"parse error on line {line}, column {column}: {message}")


_BARE_QUOTE = 'bare " in non-quoted field'
_QUOTE = 'extraneous or missing " in quoted-field'


def _record(lines: _Lines) -> tuple[list[str], int] | None:
    """csv.Reader.readRecord with Go's defaults (comma, no lazy quotes): the fields and the line the record
    starts on; None at the end of the input."""
    while True:
        line, eof = lines.read()
        if eof:
            return None
        if line != b"\n":
            break
    start = lines.number
    return _fields(lines, line, start), start


def _fields(lines: _Lines, line: bytes, start: int) -> list[str]:
    row, col = start, 1
    fields: list[str] = []
    buffer = bytearray()
    while True:
        if not line.startswith(b'"'):
            comma = line.find(b",")
            field = line[:comma] if comma >= 0 else line[:len(line) - line.endswith(b"\n")]
            quote = field.find(b'"')
            if quote >= 0:
                raise _parse_error(start, lines.number, col + quote, _BARE_QUOTE)
            fields.append(field.decode())
            if comma < 0:
                return fields
            line = line[comma + 1:]
            col += comma + 1
            continue
        line = line[1:]
        col += 1
        buffer.clear()
        while True:
            quote = line.find(b'"')
            if quote >= 0:
                buffer += line[:quote]
                line = line[quote + 1:]
                col += quote + 1
                if line.startswith(b'"'):
                    buffer += b'"'
                    line = line[1:]
                    col += 1
                elif line.startswith(b","):
                    line = line[1:]
                    col += 1
                    fields.append(buffer.decode())
                    break
                elif line in (b"", b"\n"):
                    fields.append(buffer.decode())
                    return fields
                else:
                    raise _parse_error(start, lines.number, col - 1, _QUOTE)
            elif line:
                buffer += line
                col += len(line)
                line, eof = lines.read()
                if line:
                    row, col = row + 1, 1
                if eof:
                    raise _parse_error(start, row, col, _QUOTE)
            else:
                raise _parse_error(start, row, col, _QUOTE)


def read_csv(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows, as Go's csv.Reader reads them (each row as long as the header)."""
    lines = _Lines(text.encode())
    try:
        first = _record(lines)
    except CsvError as error:
        raise CsvError(f"failed to read header line: {error}") from None
    if first is None:
        raise CsvError("failed to read header line: EOF")
    header = first[0]
    rows: list[list[str]] = []
    while True:
        try:
            record = _record(lines)
        except CsvError as error:
            raise CsvError(f"failed to read line: {error}") from None
        if record is None:
            return header, rows
        if len(record[0]) != len(header):
            raise CsvError(f"failed to read line: record on line {record[1]}: wrong number of fields")
        rows.append(record[0])


# -- values to fields -------------------------------------------------------------------------------------

def values_field(tokens: list[str]) -> Field:
    """csvValuesToField: the tokens of one column as a nullable bool, int64, float64 or string field."""
    if tokens[0].upper() in ("T", "F", "TRUE", "FALSE"):
        return Field("", "bool", [None if token.upper() in ("NULL", "") else token.upper() in ("T", "TRUE")
                                  for token in tokens], nullable=True)
    present = [token for token in tokens if token not in ("null", "")]
    for item_type, parse in (("int64", go_int), ("float64", go_float)):
        values: list[Any] = []
        for token in tokens:
            value = None if token in ("null", "") else parse(token)
            if value is None and token not in ("null", ""):
                break
            values.append(value)
        else:
            if present:
                return Field("", item_type, values, nullable=True)
    return Field("", "string", [None if token in ("null", "") else token for token in tokens], nullable=True)


def _rfc3339(text: str) -> tuple[int, int] | None:
    """(epoch ms, sub-ms nanoseconds) of an RFC 3339 time as Go's time.Parse reads it, else None."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    zone = match.group(8)
    try:
        moment = datetime.fromisoformat(f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
                                        f"{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return None
    nanos = int((match.group(7) or "0")[:9].ljust(9, "0"))
    ms = int(moment.timestamp()) * 1000 + nanos // 1_000_000
    return ms, nanos % 1_000_000


def time_field(field: Field) -> Field | None:
    """toTimeField: numbers as epoch milliseconds, strings as RFC 3339; None when no value converts."""
    times: list[int | None] = []
    nanos: list[int] = []
    if field.item_type in ("int64", "float64"):
        for value in field.values:  # Go converts a null, NaN or a number past an int64 to a nonsense time; null here
            ms = int(value) if value is not None and math.isfinite(value) else None
            times.append(ms if ms is not None and -(2**63) <= ms < 2**63 else None)
            nanos.append(0)
    elif field.item_type == "string":
        for value in field.values:
            parsed = None if value is None else _rfc3339(value)
            times.append(None if parsed is None else parsed[0])
            nanos.append(0 if parsed is None else parsed[1])
    else:
        return None
    if all(value is None for value in times):
        return None
    return Field(field.name, "time.Time", times, nullable=True, labels=field.labels, config=field.config,
                 nanos=nanos if any(nanos) else None)


def csv_frame(text: str, name: str) -> Frame:
    """LoadCsvContent: one frame named `name`, a field per column (columns without rows are left out)."""
    header, rows = read_csv(text)
    fields: list[Field] = []
    for index, raw_name in enumerate(header):
        column = [row[index].strip(" ") for row in rows]
        if not column:
            continue  # csvValuesToField refuses an empty column
        field_name = raw_name.strip(" ")
        field = values_field(column)
        if "time" in field_name.lower():
            field = time_field(field) or field
        brace = field_name.find("{")
        if brace >= 0:
            labels = parse_labels(field_name[brace:], index)
            if labels:
                field.labels = dict(sorted(labels.items()))
                field_name = field_name[:brace]
        field.name = field_name
        fields.append(field)
    return Frame(fields, name=name)
