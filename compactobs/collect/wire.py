"""OTLP trace requests read for speed: the spans' attributes as raw bytes, decoded by hand and remembered.

Reading a span's attributes through the protobuf runtime costs a Python object per key-value and another
per value (about 1 us each): most of what `collect` spent on a request. Here the request is parsed with a
mirror of the OTLP trace messages (the same field numbers; only the fields the store reads) in which a
span's and a resource's `attributes` are `repeated bytes`: the runtime hands over each `KeyValue`'s encoded
bytes, and those are decoded here,
- remembered by their bytes (a model name, a span kind, a token count that repeats costs one dict look-up),
- else read by hand when they are the plain form the official encoders write (a key, then a string, int,
  double or bool value, lengths below 128 bytes),
- else parsed by the protobuf runtime as a `KeyValue`, which gives every other form its protobuf meaning
  (arrays, key-value lists, bytes, repeated fields).

A key-value that protobuf cannot parse makes its span unreadable (`Unreadable`), not the request.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Final, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from compactobs._types import JSON, JSONObject
from compactobs.errors import CompactobsError

__all__ = ["TraceRequest", "Unreadable", "any_value", "attributes", "trace_request"]


class Unreadable(CompactobsError, ValueError):
    """A key-value that is not protobuf."""


def _mirror() -> type[Message]:
    f = FieldDescriptorProto
    optional, repeated = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    package = "compactobs.collect.mirror"
    file = descriptor_pb2.FileDescriptorProto(
        name="compactobs/collect/mirror.proto", package=package, syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str | None]) -> None:
        described = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = described.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name is not None:
                field.type_name = f".{package}.{type_name}"

    # Field numbers as opentelemetry/proto/trace/v1/trace.proto and common.proto give them.
    message(
        "Status", ("message", 2, f.TYPE_STRING, optional, None), ("code", 3, f.TYPE_INT32, optional, None)
    )
    message(
        "Span",
        ("trace_id", 1, f.TYPE_BYTES, optional, None),
        ("span_id", 2, f.TYPE_BYTES, optional, None),
        ("parent_span_id", 4, f.TYPE_BYTES, optional, None),
        ("name", 5, f.TYPE_STRING, optional, None),
        ("kind", 6, f.TYPE_INT32, optional, None),
        ("start_time_unix_nano", 7, f.TYPE_FIXED64, optional, None),
        ("end_time_unix_nano", 8, f.TYPE_FIXED64, optional, None),
        ("attributes", 9, f.TYPE_BYTES, repeated, None),
        ("status", 15, f.TYPE_MESSAGE, optional, "Status"),
    )
    message(
        "Scope",
        ("name", 1, f.TYPE_STRING, optional, None),
        ("version", 2, f.TYPE_STRING, optional, None),
        ("attributes", 3, f.TYPE_BYTES, repeated, None),
    )
    message(
        "ScopeSpans",
        ("scope", 1, f.TYPE_MESSAGE, optional, "Scope"),
        ("spans", 2, f.TYPE_MESSAGE, repeated, "Span"),
        ("schema_url", 3, f.TYPE_STRING, optional, None),
    )
    message("Resource", ("attributes", 1, f.TYPE_BYTES, repeated, None))
    message(
        "ResourceSpans",
        ("resource", 1, f.TYPE_MESSAGE, optional, "Resource"),
        ("scope_spans", 2, f.TYPE_MESSAGE, repeated, "ScopeSpans"),
    )
    message("Request", ("resource_spans", 1, f.TYPE_MESSAGE, repeated, "ResourceSpans"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Request"))


TraceRequest: Final = _mirror()
"""ExportTraceServiceRequest as read here: `TraceRequest.FromString(body)`."""


def trace_request(body: bytes) -> Message:
    """The request in `body` (protobuf). Raises DecodeError."""
    return TraceRequest.FromString(body)


_MAX_REMEMBERED: Final = 50_000
"""Key-values remembered: forgotten all at once when full."""
_MAX_REMEMBERED_BYTES: Final = 256
"""The longest encoded key-value remembered: model names, ids, token counts repeat; a prompt or response
text in another instrumentation's attribute does not, and 50,000 of them would hold gigabytes. So the
cache holds at most about 50,000 x (256 bytes + the decoded value), some 30 MB."""
_remembered: dict[bytes, tuple[str, JSON]] = {}
_valueless: list[bool] = []
"""Not empty once a key-value without a value was read: only then is a dict looked through for them."""
_double = struct.Struct("<d").unpack_from


def any_value(value: AnyValue) -> JSON:
    """An attribute value as the SDK holds it: str, bool, int, float, a tuple of them; bytes and key-value
    lists (which no compactobs attribute uses) as their JSON text."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return json.dumps({kv.key: any_value(kv.value) for kv in value.kvlist_value.values}, default=str)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _by_protobuf(raw: bytes) -> tuple[str, JSON]:
    try:
        pair = KeyValue.FromString(raw)
    except DecodeError as err:
        raise Unreadable(str(err)[:200]) from None
    return pair.key, any_value(pair.value) if pair.HasField("value") else None


def _read(raw: bytes) -> tuple[str, JSON]:
    """(key, value) of one encoded KeyValue; value None when it has none."""
    size = len(raw)
    # Field 1 (key: tag 0x0a), a one-byte length, the key; field 2 (value: tag 0x12), a one-byte length.
    if size < 2 or raw[0] != 0x0A or raw[1] & 0x80:
        return _by_protobuf(raw)
    end = 2 + raw[1]
    if end + 2 > size:
        return _by_protobuf(raw)  # no value, or cut short
    if raw[end] != 0x12 or raw[end + 1] & 0x80 or end + 2 + raw[end + 1] != size:
        return _by_protobuf(raw)
    try:
        key = raw[2:end].decode()
    except UnicodeDecodeError:
        return _by_protobuf(raw)
    start = end + 2
    if start == size:
        return key, None
    tag = raw[start]
    if tag == 0x0A:  # string_value
        if raw[start + 1] & 0x80 or start + 2 + raw[start + 1] != size:
            return _by_protobuf(raw)
        try:
            return key, raw[start + 2 :].decode()
        except UnicodeDecodeError:
            return _by_protobuf(raw)
    if tag == 0x18:  # int_value: a varint, two's complement in 64 bits
        value = shift = 0
        for i in range(start + 1, min(size, start + 11)):
            byte = raw[i]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if i + 1 != size:
                    break
                value &= 0xFFFF_FFFF_FFFF_FFFF
                return key, value - (1 << 64) if value >> 63 else value
        return _by_protobuf(raw)
    if tag == 0x21 and start + 9 == size:  # double_value
        return key, _double(raw, start + 1)[0]
    if tag == 0x10 and start + 2 == size and raw[start + 1] < 0x80:  # bool_value
        return key, raw[start + 1] != 0
    return _by_protobuf(raw)


def _pair(raw: bytes) -> tuple[str, JSON]:
    pair = _remembered.get(raw)
    if pair is None:
        pair = _read(raw)
        if pair[1] is None and not _valueless:
            _valueless.append(True)
        if len(raw) <= _MAX_REMEMBERED_BYTES:
            if len(_remembered) >= _MAX_REMEMBERED:
                _remembered.clear()
            _remembered[raw] = pair
    return pair


def attributes(encoded: Iterable[bytes]) -> JSONObject:
    """Encoded KeyValues as a dict, as `decode.attributes_of` gives them: values as the SDK holds them, a
    later key over an earlier one, key-values without a value left out. Raises Unreadable."""
    raws = list(encoded)
    # The common case in C-level passes: every key-value remembered, none without a value.
    found: list[tuple[str, JSON] | None] = list(map(_remembered.get, raws))
    if None in found:
        pairs = [pair if pair is not None else _pair(raw) for pair, raw in zip(found, raws, strict=True)]
    else:
        pairs = cast("list[tuple[str, JSON]]", found)  # none is None: checked above, in C
    out = dict(pairs)
    if _valueless and None in out.values():
        out = {}
        for key, value in pairs:
            if value is not None:
                out[key] = value
    return out
