"""Wire header of a NetKV KV-cache stream, as a Scapy layer and as a fast struct codec.

A TCP connection carries one transfer at a time, any number of them one after another (the
agents pool their connections, ``hosts.kvstream``). The sender writes a DATA header followed by
exactly ``total`` payload bytes (synthetic KV cache); when the ``ACK_REQ`` flag is set, the
receiver answers on the same connection with a DONE header whose ``total`` is the number of
payload bytes it counted, so the sender learns when the last byte reached the receiving
application (not just its own kernel buffer) and may start the next transfer.

Layout (network byte order, ``HEADER_LEN`` = 40 bytes)::

    offset size field        meaning
    0      2    magic        b"NK"
    2      1    version      1
    3      1    msg_type     1 = DATA, 2 = DONE (receiver's acknowledgement)
    4      2    flags        bit 0 ACK_REQ (sender wants a DONE), bit 1 SYNTHETIC payload
    6      2    hdr_len      40 (header length in bytes; payload starts after it)
    8      8    transfer_id  unsigned 64-bit
    16     8    request_id   unsigned 64-bit
    24     8    total        payload bytes that follow (DATA) / bytes counted (DONE)
    32     2    src_gpu      sender's GPU index (unsigned 16-bit)
    34     2    dst_gpu      receiver's GPU index (unsigned 16-bit)
    36     4    reserved     0

``encode_header``/``decode_header`` are the hot-path codec (one ``struct`` call); ``KVHeader``
is the Scapy layer for building and dissecting captures, bound to TCP port ``KV_PORT`` in both
directions; segments on that port that do not start with a valid header (mid-stream payload)
dissect as ``Raw``. Scapy loads lazily, on first access to ``KVHeader`` (see
``load_scapy_layer``). Tests prove the two representations byte-identical.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

KV_PORT = 9470
"""Default TCP port of the agents' KV data listener (outside Linux's ephemeral range)."""
MAGIC = b"NK"
VERSION = 1
MSG_DATA = 1
MSG_DONE = 2
MSG_TYPES = {MSG_DATA: "DATA", MSG_DONE: "DONE"}
FLAG_ACK_REQ = 0x0001
FLAG_SYNTHETIC = 0x0002
FLAG_NAMES = ["ACK_REQ", "SYNTHETIC"]
KNOWN_FLAGS = FLAG_ACK_REQ | FLAG_SYNTHETIC

_STRUCT = struct.Struct("!2sBBHHQQQHHI")
HEADER_LEN = _STRUCT.size  # 40
_U64 = (1 << 64) - 1
_U16 = (1 << 16) - 1


class FramingError(ValueError):
    """Bytes are not a valid KV header, or a field value does not fit the wire format."""


@dataclass(frozen=True)
class HeaderFields:
    """Decoded header. ``version`` and ``hdr_len`` are implied by the format."""

    msg_type: int
    transfer_id: int
    request_id: int
    total: int
    src_gpu: int
    dst_gpu: int
    flags: int = 0

    def encode(self) -> bytes:
        return encode_header(**asdict(self))


def _check(name: str, value: int, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise FramingError(f"{name}={value!r} must be an integer in 0..{maximum}")


def encode_header(
    msg_type: int,
    transfer_id: int,
    request_id: int,
    total: int,
    src_gpu: int,
    dst_gpu: int,
    flags: int = 0,
) -> bytes:
    """The 40-byte wire header. Raises ``FramingError`` for out-of-range values."""
    if msg_type not in MSG_TYPES:
        raise FramingError(f"msg_type={msg_type!r} is not one of {sorted(MSG_TYPES)}")
    _check("flags", flags, KNOWN_FLAGS)
    _check("transfer_id", transfer_id, _U64)
    _check("request_id", request_id, _U64)
    _check("total", total, _U64)
    _check("src_gpu", src_gpu, _U16)
    _check("dst_gpu", dst_gpu, _U16)
    return _STRUCT.pack(MAGIC, VERSION, msg_type, flags, HEADER_LEN, transfer_id, request_id,
                        total, src_gpu, dst_gpu, 0)


def decode_header(data: bytes | bytearray | memoryview) -> HeaderFields:
    """Parse the first ``HEADER_LEN`` bytes of ``data`` (extra bytes are ignored).

    Raises ``FramingError`` naming the problem: short input, bad magic, unsupported version,
    unknown message type, unknown flags, wrong header length, non-zero reserved field."""
    if len(data) < HEADER_LEN:
        raise FramingError(f"short header: {len(data)} of {HEADER_LEN} bytes")
    magic, version, msg_type, flags, hdr_len, tid, rid, total, src, dst, reserved = (
        _STRUCT.unpack_from(data, 0))
    if magic != MAGIC:
        raise FramingError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FramingError(f"unsupported version {version}, expected {VERSION}")
    if msg_type not in MSG_TYPES:
        raise FramingError(f"unknown message type {msg_type}")
    if flags & ~KNOWN_FLAGS:
        raise FramingError(f"unknown flags 0x{flags:04x}")
    if hdr_len != HEADER_LEN:
        raise FramingError(f"header length {hdr_len}, expected {HEADER_LEN}")
    if reserved != 0:
        raise FramingError(f"reserved field is 0x{reserved:08x}, expected 0")
    return HeaderFields(msg_type, tid, rid, total, src, dst, flags)


_scapy_lock = threading.Lock()


def load_scapy_layer() -> type:
    """Define ``KVHeader`` and bind it to TCP port ``KV_PORT``; returns the class.

    Scapy is imported here, not at module import: it costs 0.3-2 s of CPU per process, which
    adds up with one agent per GPU on a 2-core machine, and agents only need the struct codec.
    Accessing ``hosts.framing.KVHeader`` calls this; call it explicitly before dissecting
    captures (``rdpcap``) so the port binding is in place."""
    with _scapy_lock:
        cached = globals().get("KVHeader")
        if cached is not None:
            return cached
        from scapy.config import conf
        from scapy.fields import (
            ByteEnumField,
            ByteField,
            FlagsField,
            IntField,
            LongField,
            ShortField,
            StrFixedLenField,
        )
        from scapy.layers.inet import TCP
        from scapy.packet import Packet, bind_layers

        class KVHeader(Packet):
            """Scapy view of the header; see the module docstring for the layout."""

            name = "NetKV KV-stream header"
            fields_desc: ClassVar[list[Any]] = [
                StrFixedLenField("magic", MAGIC, 2),
                ByteField("version", VERSION),
                ByteEnumField("msg_type", MSG_DATA, MSG_TYPES),
                FlagsField("flags", 0, 16, FLAG_NAMES),
                ShortField("hdr_len", HEADER_LEN),
                LongField("transfer_id", 0),
                LongField("request_id", 0),
                LongField("total", 0),
                ShortField("src_gpu", 0),
                ShortField("dst_gpu", 0),
                IntField("reserved", 0),
            ]

            @classmethod
            def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any,
                              **kargs: Any) -> type[Packet]:
                """Dissect bytes as ``KVHeader`` only when they start with the magic; TCP
                segments on ``KV_PORT`` that carry mid-stream payload become ``Raw``."""
                if _pkt is not None and (len(_pkt) < HEADER_LEN or _pkt[:2] != MAGIC):
                    return conf.raw_layer
                return cls

            def to_fields(self) -> HeaderFields:
                """The header as ``HeaderFields`` (validated through ``decode_header``)."""
                return decode_header(bytes(self)[:HEADER_LEN])

        bind_layers(TCP, KVHeader, dport=KV_PORT)
        bind_layers(TCP, KVHeader, sport=KV_PORT)
        KVHeader.__qualname__ = "KVHeader"  # pickle finds it through the module __getattr__
        globals()["KVHeader"] = KVHeader
        return KVHeader


def __getattr__(name: str) -> Any:
    if name == "KVHeader":
        return load_scapy_layer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
