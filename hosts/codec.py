"""The codec of the control channel (``hosts.messages``): the one place a wire object becomes
a message and is checked, and back.

``decode`` checks every field of the message class the object's ``op``/``ev`` names against the
field's annotation (present, of its type, bools not numbers, every int >= 0), then the message's
own rules (``Message.check``); a ``ProtocolError`` names the message and the field. Lines are
compact JSON (``json.dumps(separators=(",", ":"))``), at most ``MAX_LINE`` bytes.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, fields
from typing import Any, TypeVar, overload

from hosts.messages import Message, ProtocolError, is_int, message_class

M = TypeVar("M", bound=Message)

MAX_LINE = 1 << 16
"""Longest control line in bytes (the longest, a ``reset`` with the whole default config, is 1.4 KiB)."""


def _field_value(kind: str, name: str, hint: str, value: object) -> object:
    """``value`` checked against the annotation ``hint`` (``"int"``, ``"float | None"``, ...)."""
    types = [t.strip() for t in hint.split("|")]
    if value is None and ("None" in types or "Any" in types):
        return None
    base = next(t for t in types if t != "None")
    if base == "Any":
        return value
    if base == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ProtocolError(f"{kind}: field {name!r} must be a number, got {value!r}")
        return float(value)
    if base == "int":
        if not is_int(value):
            raise ProtocolError(f"{kind}: field {name!r} must be int, got {value!r}")
        if value < 0:  # type: ignore[operator]
            raise ProtocolError(f"{kind}: {name} must be >= 0")
        return value
    if base == "tuple":  # a JSON array kept immutable
        if not isinstance(value, (list, tuple)):
            raise ProtocolError(f"{kind}: field {name!r} must be a list, got {value!r}")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    expected = {"str": str, "dict": dict, "list": list}[base]
    if not isinstance(value, expected):
        what = {"str": "str", "dict": "an object", "list": "a list"}[base]
        raise ProtocolError(f"{kind}: field {name!r} must be {what}, got {value!r}")
    return value


@overload
def decode(obj: object) -> Message: ...
@overload
def decode(obj: object, expect: type[M]) -> M: ...
def decode(obj: object, expect: type[Message] = Message) -> Message:
    """The message a JSON object carries (a ``Command`` when ``expect`` is ``Command``, a
    ``Report`` when ``Report``, either by default); ``ProtocolError`` naming the message and the
    field otherwise. Keys that are not fields are ignored."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    tid, rid = obj.get("transfer_id"), obj.get("request_id")
    ids = (tid if is_int(tid) else None, rid if is_int(rid) else None)
    tag = expect.TAG or ("ev" if "ev" in obj else "op")
    cls = message_class(tag, obj.get(tag))
    if cls is None or not issubclass(cls, expect):
        raise ProtocolError(f"unknown {tag} {obj.get(tag)!r}", *ids)
    try:
        values = {f.name: _field_value(cls.KIND, f.name, str(f.type), obj.get(f.name))
                  for f in fields(cls) if f.name in obj or f.default is MISSING}
        msg = cls(**values)
        msg.check()
    except ProtocolError as exc:
        raise ProtocolError(str(exc), *ids) from None
    return msg


def encode(msg: Message) -> dict[str, Any]:
    """The wire object of ``msg``: its tag, then its fields (optional ones only when set)."""
    out: dict[str, Any] = {msg.TAG: msg.KIND}
    for f in fields(msg):
        value = getattr(msg, f.name)
        if f.name != "agent" and (value is not None or f.default is MISSING):
            out[f.name] = value
    if getattr(msg, "agent", None) is not None:
        out["agent"] = msg.agent  # type: ignore[attr-defined]
    return out


def encode_line(msg: Message | dict[str, Any]) -> bytes:
    """One JSON line (a raw dict is sent as given: tests of the agents' refusals use it)."""
    obj = msg if isinstance(msg, dict) else encode(msg)
    line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise ProtocolError(f"control message of {len(line)} bytes exceeds {MAX_LINE}")
    return line


@overload
def decode_line(line: bytes) -> Message: ...
@overload
def decode_line(line: bytes, expect: type[M]) -> M: ...
def decode_line(line: bytes, expect: type[Message] = Message) -> Message:
    """The message of one JSON line; ``ProtocolError`` if it is not JSON or not a valid message."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    return decode(obj, expect)
