"""The frame encoder against Grafana's own golden files (../shared/golden, read in place)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.frames import (
    DataResponse,
    Field,
    Frame,
    decode_frames,
    encode_frame,
    encode_frames,
    encode_json,
    encode_msgpack,
    meta,
)

GOLDEN = Path(__file__).resolve().parent.parent.parent / "shared" / "golden"


def load(path: Path) -> Any:
    """A golden file: JSON, or .jsonc with its leading // comment block."""
    text = path.read_text()
    if path.suffix == ".jsonc":
        text = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    return json.loads(text)


def frame_from_wire(wire: dict[str, Any]) -> Frame:
    """Grafana's frame JSON read back by gateway's decoder (the query cache's): NaN and infinities back in the
    columns, RawMessage as Raw."""
    return decode_frames(json.dumps([wire]).encode())[0]


def _frame_goldens() -> list[Path]:
    files = sorted(GOLDEN.rglob("*.jsonc")) + sorted(GOLDEN.glob("frames/*.json"))
    return [path for path in files if path.name != "frame.schema.json"]


def _frames_in(document: Any) -> list[dict[str, Any]]:
    if "schema" in document:
        return [document]
    if "results" in document:
        return [frame for result in document["results"].values() for frame in result.get("frames") or []]
    return list(document.get("frames") or [])


GOLDEN_FILES = _frame_goldens()


def test_the_golden_files_are_there():
    assert len(GOLDEN_FILES) > 80 and len(WHOLE_RESPONSES) == 12
    assert sum(len(_frames_in(load(path))) for path in GOLDEN_FILES) > 150


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda path: str(path.relative_to(GOLDEN)))
def test_every_golden_frame_encodes_exactly_as_grafana_wrote_it(path):
    for wire in _frames_in(load(path)):
        assert json.loads(encode_frame(frame_from_wire(wire))) == wire


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda path: str(path.relative_to(GOLDEN)))
def test_frames_decoded_from_their_own_json_encode_to_the_same_bytes(path):
    frames = [frame_from_wire(wire) for wire in _frames_in(load(path))]
    encoded = encode_frames(frames, "A")
    again = decode_frames(encoded)
    assert encode_frames(again, "A") == encoded
    assert encode_msgpack({"A": DataResponse(again)}) == encode_msgpack({"A": DataResponse(frames)})


@pytest.mark.parametrize("data", [b"", b"{}", b"[1]", b'[{"schema":{"fields":[]},"data":{"values":[[1]]}}]',
                                  b'[{"schema":{"fields":[{"type":"number","typeInfo":{"frame":"float64"}}]},'
                                  b'"data":{"values":[[null]],"entities":[{"NaN":[3]}]}}]',
                                  b'[{"schema":{"fields":[{"typeInfo":{"frame":"decimal"}}]},"data":{"values":[[1]]}}]'])
def test_frame_json_that_was_not_written_by_the_encoder_is_a_value_error(data):
    with pytest.raises(ValueError):
        decode_frames(data)


WHOLE_RESPONSES = [path for path in sorted(GOLDEN.glob("frames/*.json")) if '"results"' in path.read_text()[:200]]


@pytest.mark.parametrize("path", WHOLE_RESPONSES, ids=lambda path: path.name)
def test_whole_query_responses_match_grafanas_bytes_as_json(path):
    document = load(path)
    results = {
        ref_id: DataResponse([frame_from_wire(frame) for frame in result.get("frames", [])]
                             if "frames" in result else None, error=result.get("error"),
                             status=result.get("status", 0), error_source=result.get("errorSource", ""))
        for ref_id, result in document["results"].items()
    }
    body = encode_json(results)
    assert body.endswith(b"\n") and json.loads(body) == document
    assert list(json.loads(body)["results"]) == sorted(document["results"])


def test_entities_mark_nan_and_infinities_and_values_are_null():
    frame = Frame([Field("v", "float64", [1.0, math.nan, math.inf, -math.inf, 2.0]),
                   Field("n", "float64", [None, math.nan, 3.0, None, None], nullable=True),
                   Field("ok", "float64", [1e308, 1e308, 1.0, 1.0, 1.0])])  # overflows the sum, stays finite
    wire = json.loads(encode_frame(frame))
    assert wire["data"]["values"][0] == [1.0, None, None, None, 2.0]
    assert wire["data"]["entities"] == [{"NaN": [1], "Inf": [2], "NegInf": [3]}, {"NaN": [1]}, None]


def test_nanos_only_when_some_time_has_a_sub_millisecond_part():
    plain = Frame([Field("t", "time.Time", [1, 2], nanos=[0, 0])])
    assert "nanos" not in json.loads(encode_frame(plain))["data"]
    fine = Frame([Field("t", "time.Time", [1, 2], nanos=[0, 999_999]), Field("v", "int64", [1, 2])])
    assert json.loads(encode_frame(fine))["data"]["nanos"] == [[0, 999_999], None]


def test_errors_always_carry_an_error_source_and_results_are_sorted():
    body = json.loads(encode_json({"B": DataResponse(error="boom"), "A": DataResponse([]),
                                   "C": DataResponse(error="late", status=504, error_source="downstream")}))
    assert list(body["results"]) == ["A", "B", "C"]
    assert body["results"]["A"] == {"status": 200, "frames": []}
    assert body["results"]["B"] == {"error": "boom", "errorSource": "", "status": 500}
    assert body["results"]["C"] == {"error": "late", "errorSource": "downstream", "status": 504}


def test_frames_get_the_refid_of_their_result():
    body = json.loads(encode_json({"A": DataResponse([Frame([Field("v", "int64", [1])])])}))
    assert body["results"]["A"]["frames"][0]["schema"]["refId"] == "A"


def test_msgpack_carries_the_same_structure():
    wire = load(GOLDEN / "frames" / "all_types.golden.json")
    results = {"A": DataResponse([frame_from_wire(wire)])}
    as_json = json.loads(encode_json(results))
    as_msgpack = msgspec.msgpack.decode(encode_msgpack(results))
    # NaN travels natively in MessagePack; compare with JSON's nulls
    def nulls(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, list):
            return [nulls(item) for item in value]
        if isinstance(value, dict):
            return {key: nulls(item) for key, item in value.items()}
        return value
    assert nulls(as_msgpack) == as_json


def test_msgpack_writes_integers_past_64_bits_as_floats_as_go_read_them():
    frame = Frame([Field("v", "json.RawMessage", [msgspec.Raw(b'{"n":123456789012345678901234567890}')])],
                  meta=meta(custom={"big": -(2**63) - 1, "huge": [10**400], "fine": 2**64 - 1}))
    decoded = msgspec.msgpack.decode(encode_msgpack({"A": DataResponse([frame])}))
    wire = decoded["results"]["A"]["frames"][0]
    assert wire["data"]["values"] == [[{"n": 1.2345678901234568e29}]]
    assert wire["schema"]["meta"]["custom"] == {"big": -9.223372036854776e18, "huge": [math.inf], "fine": 2**64 - 1}


def test_msgpack_writes_json_cells_python_cannot_hold_as_their_text():
    cells = [b"[" * 5000 + b"]" * 5000, b"1e400", b'"\\ud800"', b'{"a":[1]}']
    frame = Frame([Field("j", "json.RawMessage", [msgspec.Raw(cell) for cell in cells])])
    decoded = msgspec.msgpack.decode(encode_msgpack({"A": DataResponse([frame])}))
    assert decoded["results"]["A"]["frames"][0]["data"]["values"] == [[cell.decode() for cell in cells[:3]] + [
        {"a": [1]}]]


def test_a_response_writes_its_encoded_frames_until_they_are_read():
    frame = Frame([Field("v", "float64", [1.5])])
    encoded = encode_frames([frame], "A")
    response = DataResponse([frame], encoded=encoded.replace(b"1.5", b"2.5"))  # the bytes win while untouched
    assert b"2.5" in encode_json({"A": response})
    response.frames[0].fields[0].values[0] = 3.5  # read (and changed): the frames are written
    assert response.encoded is None and b"3.5" in encode_json({"A": response})


def test_fields_of_different_lengths_are_refused():
    with pytest.raises(ValueError):
        encode_frame(Frame([Field("a", "int64", [1]), Field("b", "int64", [1, 2])]))
