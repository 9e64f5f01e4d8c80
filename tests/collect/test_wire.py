"""`collect`'s fast reading of span attributes gives what protobuf's own reading gives, for every form a
value can take on the wire (the official encoders' plain forms, and the ones read by protobuf)."""

from __future__ import annotations

import math

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from compactobs.collect import wire
from compactobs.collect.decode import attributes_of


def _pairs() -> list[KeyValue]:
    def kv(key: str, **value: object) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(**value))  # type: ignore[arg-type]

    return [
        kv("s", string_value="claude-opus-4-8"),
        kv("empty string", string_value=""),
        kv("unicode ✓", string_value="héllo ✓ \u202e"),
        kv("long", string_value="x" * 300),
        kv("k" * 200, int_value=1),
        kv("zero", int_value=0),
        kv("small", int_value=127),
        kv("two bytes", int_value=128),
        kv("big", int_value=2**63 - 1),
        kv("negative", int_value=-1),
        kv("most negative", int_value=-(2**63)),
        kv("double", double_value=0.1),
        kv("double zero", double_value=0.0),
        kv("infinite", double_value=math.inf),
        kv("true", bool_value=True),
        kv("false", bool_value=False),
        kv("bytes", bytes_value=b"\x00\xff"),
        kv("array", array_value=ArrayValue(values=[AnyValue(string_value="a"), AnyValue(int_value=2)])),
        kv("kvlist", kvlist_value=KeyValueList(values=[KeyValue(key="a", value=AnyValue(int_value=1))])),
        KeyValue(key="no value"),
        kv("twice", int_value=1),
        kv("twice", int_value=2),
        kv("kept", int_value=3),
        KeyValue(key="kept"),  # an empty later value leaves the earlier one, as protobuf's reading does
    ]


def test_every_form_reads_as_protobuf_reads_it() -> None:
    pairs = _pairs()
    expected = attributes_of(pairs)
    # 2**63 - 1, -1 and -(2**63): int64 in ten-byte two's complement varints.
    assert expected["big"] == 2**63 - 1 and expected["most negative"] == -(2**63)
    assert "no value" not in expected and expected["twice"] == 2 and expected["kept"] == 3
    for _ in range(2):  # the second time from what the first remembered
        got = wire.attributes(pair.SerializeToString() for pair in pairs)
        assert got == expected
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]


def test_a_key_value_that_is_not_protobuf_is_unreadable() -> None:
    with pytest.raises(wire.Unreadable):
        wire.attributes([b"\x0a\x05ab"])  # a key of 5 bytes, cut after 2


def test_long_values_are_read_but_not_remembered() -> None:
    """A long attribute (another instrumentation's prompt text) is read every time, never kept: 2,000
    distinct 100 KB values held by the cache would be 200 MB; short ones (models, ids) are remembered."""
    wire._remembered.clear()
    long = [
        KeyValue(key="gen_ai.prompt", value=AnyValue(string_value=f"{i:05d}" + "x" * 100_000))
        for i in range(3)
    ]
    short = KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="claude-opus-4-8"))
    encoded = [kv.SerializeToString() for kv in [*long, short]]
    read = wire.attributes(encoded)
    assert read["gen_ai.request.model"] == "claude-opus-4-8"
    assert read["gen_ai.prompt"] == "00002" + "x" * 100_000  # the later key wins, read whole
    assert list(wire._remembered) == [encoded[-1]]  # only the short one is kept
    assert sum(len(raw) for raw in wire._remembered) < 100
