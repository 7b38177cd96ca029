"""Typed config: mappings (YAML, protobuf Struct, the engine's JSON form) to messages.

Decoding is strict. An unknown key is an error naming the key, where it was
found and the keys that are valid there. Enums take the full name
(``ACK_POLICY_EXPLICIT``), the short form (``explicit``) or the number;
durations take Go-style text (``"90s"``, ``"1m30s"``, ``"2h"``, ``"250ms"``) or
a number of seconds; integers may arrive as strings (the engine's JSON renders
int64 that way) and as whole floats (protobuf Struct numbers are doubles).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from .errors import ConfigError

M = TypeVar("M", bound=Message)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_INT_LIMITS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


MAX_DURATION = 315_576_000_000.0  # seconds: google.protobuf.Duration's upper bound


def parse_duration(value: Any, *, setting: str) -> float:
    """Seconds from ``"1m30s"``-style text, ``"1.5s"``, or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(setting, "expected a duration", value=value, fix='write it like "30s"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, duration_pb2.Duration):
        seconds = value.seconds + value.nanos / 1e9
    elif isinstance(value, str):
        seconds = _duration_text(value.strip(), setting)
    else:
        raise ConfigError(setting, "expected a duration", value=value, fix='write it like "30s"')
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise ConfigError(setting, "duration must be zero or positive", value=value)
    if seconds > MAX_DURATION:
        raise ConfigError(
            setting,
            "duration is longer than a protobuf Duration can carry (10,000 years)",
            value=value,
            fix='use a shorter duration, e.g. "24h"',
        )
    return seconds


def _duration_text(text: str, setting: str) -> float:
    sign = 1.0
    body = text
    if body and body[0] in "+-":
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    try:
        return sign * float(body)  # a bare number means seconds
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body) or not body:
        raise ConfigError(
            setting,
            "not a duration",
            value=text,
            fix='use Go duration text such as "500ms", "30s", "1m30s" or "2h"',
        )
    return sign * total


def to_duration(seconds: float) -> duration_pb2.Duration:
    whole = math.floor(seconds)
    return duration_pb2.Duration(seconds=int(whole), nanos=round((seconds - whole) * 1e9))


def duration_seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def format_duration(seconds: float) -> str:
    """Render seconds as the protobuf JSON form the engine accepts (``"90s"``)."""
    return f"{seconds:g}s"


def as_mapping(source: Any, *, setting: str) -> Mapping[str, Any]:
    """Accept a dict, a protobuf Struct, a JSON object string or None."""
    if source is None:
        return {}
    if isinstance(source, struct_pb2.Struct):
        return MessageToDict(source)
    if isinstance(source, str | bytes):
        try:
            source = json.loads(source or "{}")
        except ValueError as exc:
            raise ConfigError(setting, f"not valid JSON: {exc}", fix="pass a JSON object") from exc
    if not isinstance(source, Mapping):
        raise ConfigError(setting, "expected an object (mapping)", value=type(source).__name__)
    return source


def decode(cls: type[M], source: Any, *, setting: str, skip_private: bool = True) -> M:
    """Decode ``source`` into a new ``cls`` message, strictly."""
    msg = cls()
    fill(msg, as_mapping(source, setting=setting), setting=setting, skip_private=skip_private)
    return msg


def fill(
    msg: Message, data: Mapping[str, Any], *, setting: str, skip_private: bool = False
) -> None:
    """Set the fields of ``msg`` from ``data``; every key must name a field."""
    desc: Any = msg.DESCRIPTOR
    by_name = _field_index(desc)
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(setting, "keys must be strings", value=key)
        if skip_private and key.startswith("_"):
            continue  # the engine adds keys such as _config_dir
        field = by_name.get(key)
        if field is None:
            valid = ", ".join(sorted(f.name for f in desc.fields))
            raise ConfigError(
                f"{setting}.{key}",
                f"unknown key for {desc.name}",
                fix=f"valid keys are: {valid}",
            )
        if value is None:
            continue  # explicit null leaves the default
        _set_field(msg, field, value, f"{setting}.{field.name}")


def _field_index(desc: Any) -> dict[str, FieldDescriptor]:
    index: dict[str, FieldDescriptor] = {}
    for field in desc.fields:
        index[field.name] = field
        index[field.json_name] = field
    return index


def _set_field(msg: Message, field: Any, value: Any, setting: str) -> None:
    if _is_map(field):
        _set_map(msg, field, value, setting)
    elif field.is_repeated:
        items = value if isinstance(value, list | tuple) else [value]
        target = getattr(msg, field.name)
        for i, item in enumerate(items):
            item_setting = f"{setting}[{i}]"
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                _fill_message(target.add(), field, item, item_setting)
            else:
                target.append(_scalar(field, item, item_setting))
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        _fill_message(getattr(msg, field.name), field, value, setting)
    else:
        setattr(msg, field.name, _scalar(field, value, setting))


def _is_map(field: Any) -> bool:
    return bool(
        field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
    )


def _set_map(msg: Message, field: Any, value: Any, setting: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(setting, "expected an object of key: value", value=value)
    value_field = field.message_type.fields_by_name["value"]
    target = getattr(msg, field.name)
    for key, item in value.items():
        if item is None:
            continue
        target[str(key)] = _scalar(value_field, item, f"{setting}.{key}")


def _fill_message(target: Message, field: Any, value: Any, setting: str) -> None:
    if field.message_type.full_name == "google.protobuf.Duration":
        target.CopyFrom(to_duration(parse_duration(value, setting=setting)))
        return
    if isinstance(value, Message):
        target.CopyFrom(value)
        return
    if not isinstance(value, Mapping):
        raise ConfigError(setting, f"expected an object ({field.message_type.name})", value=value)
    fill(target, value, setting=setting)


def _scalar(field: Any, value: Any, setting: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(setting, "expected a string", value=value)
        return _number_text(value)
    if kind == FieldDescriptor.TYPE_BOOL:
        return _bool(value, setting)
    if kind == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        raise ConfigError(setting, "expected text or bytes", value=value)
    if kind == FieldDescriptor.TYPE_ENUM:
        return parse_enum(field.enum_type, value, setting=setting)
    if kind in _INT_LIMITS:
        return _int(value, setting, *_INT_LIMITS[kind])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(setting, "expected a number", value=value) from exc
    raise ConfigError(setting, "unsupported field type", value=value)  # pragma: no cover


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bool(value: Any, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise ConfigError(setting, "expected true or false", value=value)


def _int(value: Any, setting: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(setting, "expected an integer", value=value)
    number: int
    if isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value)
    ):
        number = int(value)
    else:
        raise ConfigError(setting, "expected an integer", value=value, fix="write a whole number")
    if not low <= number <= high:
        raise ConfigError(setting, f"out of range [{low}, {high}]", value=value)
    return number


def parse_enum(enum: EnumDescriptor, value: Any, *, setting: str) -> int:
    """Enum value from full name, short name (any case) or number."""
    if isinstance(value, bool):
        raise ConfigError(setting, "expected an enum name", value=value)
    if isinstance(value, int | float) and float(value).is_integer():
        number = int(value)
        if number in enum.values_by_number:
            return number
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text) and int(text) in enum.values_by_number:
            return int(text)
        prefix = _enum_prefix(enum)
        upper = text.upper()
        for candidate in (upper, prefix + upper):
            if candidate in enum.values_by_name:
                return enum.values_by_name[candidate].number
    choices = ", ".join(_enum_short_names(enum))
    raise ConfigError(
        setting, f"not a valid {enum.name}", value=value, fix=f"use one of: {choices}"
    )


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _enum_short_names(enum: EnumDescriptor) -> list[str]:
    prefix = _enum_prefix(enum)
    return [
        v.name.removeprefix(prefix).lower()
        for v in enum.values
        if not v.name.endswith("_UNSPECIFIED")
    ]


def enum_short_name(enum: EnumDescriptor, number: int) -> str:
    """``ACK_POLICY_EXPLICIT`` -> ``explicit`` (for messages and schemas)."""
    return enum.values_by_number[number].name.removeprefix(_enum_prefix(enum)).lower()
