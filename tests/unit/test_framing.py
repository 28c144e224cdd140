"""The struct codec and the Scapy layer of the KV header agree byte for byte."""
from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from hosts.framing import (
    FLAG_ACK_REQ,
    FLAG_SYNTHETIC,
    HEADER_LEN,
    KV_PORT,
    MAGIC,
    MSG_DATA,
    MSG_DONE,
    FramingError,
    HeaderFields,
    KVHeader,
    decode_header,
    encode_header,
)

U64 = (1 << 64) - 1

CASES = [
    HeaderFields(MSG_DATA, 0, 0, 0, 0, 0, 0),
    HeaderFields(MSG_DATA, 1, 2, 50_000_000, 3, 63, FLAG_ACK_REQ | FLAG_SYNTHETIC),
    HeaderFields(MSG_DONE, U64, U64, U64, 0xFFFF, 0xFFFF, FLAG_SYNTHETIC),
    HeaderFields(MSG_DONE, 0x0102030405060708, 0x1122334455667788, 1 << 40, 257, 1, 0),
]


def _random_fields(rng: random.Random) -> HeaderFields:
    return HeaderFields(rng.choice([MSG_DATA, MSG_DONE]), rng.getrandbits(64), rng.getrandbits(64),
                        rng.getrandbits(64), rng.getrandbits(16), rng.getrandbits(16),
                        rng.choice([0, FLAG_ACK_REQ, FLAG_SYNTHETIC,
                                    FLAG_ACK_REQ | FLAG_SYNTHETIC]))


def _scapy(f: HeaderFields) -> KVHeader:
    return KVHeader(msg_type=f.msg_type, flags=f.flags, transfer_id=f.transfer_id,
                    request_id=f.request_id, total=f.total, src_gpu=f.src_gpu, dst_gpu=f.dst_gpu)


def test_header_length_and_layout() -> None:
    raw = encode_header(MSG_DATA, 0x0102030405060708, 9, 10, 11, 12, FLAG_ACK_REQ)
    assert len(raw) == HEADER_LEN == 40
    assert raw[:2] == MAGIC
    assert raw[2] == 1 and raw[3] == MSG_DATA
    assert raw[4:6] == b"\x00\x01"
    assert raw[6:8] == b"\x00\x28"
    assert raw[8:16] == bytes(range(1, 9))
    assert raw[32:36] == b"\x00\x0b\x00\x0c"
    assert raw[36:] == b"\x00" * 4


@pytest.mark.parametrize("fields", CASES)
def test_scapy_build_equals_encode(fields: HeaderFields) -> None:
    assert bytes(_scapy(fields)) == encode_header(**fields.__dict__) == fields.encode()


@pytest.mark.parametrize("fields", CASES)
def test_decode_of_scapy_bytes_and_scapy_dissect_of_encode(fields: HeaderFields) -> None:
    assert decode_header(bytes(_scapy(fields))) == fields
    pkt = KVHeader(fields.encode())
    assert pkt.to_fields() == fields
    assert (pkt.transfer_id, pkt.request_id, pkt.total) == (
        fields.transfer_id, fields.request_id, fields.total)
    assert (pkt.src_gpu, pkt.dst_gpu, int(pkt.flags), pkt.msg_type) == (
        fields.src_gpu, fields.dst_gpu, fields.flags, fields.msg_type)
    assert pkt.magic == MAGIC and pkt.version == 1 and pkt.hdr_len == HEADER_LEN


def test_random_round_trips() -> None:
    rng = random.Random(20260603)
    for _ in range(300):
        f = _random_fields(rng)
        raw = f.encode()
        assert bytes(_scapy(f)) == raw
        assert decode_header(raw) == f
        assert bytes(KVHeader(raw)) == raw


def test_decode_ignores_trailing_payload() -> None:
    f = CASES[1]
    assert decode_header(f.encode() + b"payload") == f
    assert decode_header(memoryview(bytearray(f.encode()))) == f


def test_tcp_binding_both_directions() -> None:
    f = CASES[1]
    for tcp in (TCP(sport=40000, dport=KV_PORT), TCP(sport=KV_PORT, dport=40000)):
        pkt = IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / tcp / Raw(f.encode() + b"kv")))
        assert KVHeader in pkt
        assert pkt[KVHeader].to_fields() == f
        assert pkt[Raw].load == b"kv"
    built = IP() / TCP(dport=KV_PORT) / _scapy(f)
    assert bytes(built[TCP].payload) == f.encode()


def test_mid_stream_segment_dissects_as_raw() -> None:
    pkt = IP(bytes(IP() / TCP(dport=KV_PORT) / Raw(bytes(range(200)))))
    assert KVHeader not in pkt
    assert pkt[Raw].load == bytes(range(200))
    short = IP(bytes(IP() / TCP(dport=KV_PORT) / Raw(MAGIC + b"\x01")))
    assert KVHeader not in short


def test_other_ports_are_not_dissected() -> None:
    pkt = IP(bytes(IP() / TCP(sport=1234, dport=80) / Raw(CASES[1].encode())))
    assert KVHeader not in pkt


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:HEADER_LEN - 1], "short header"),
    (lambda b: b"", "short header"),
    (lambda b: b"XK" + b[2:], "bad magic"),
    (lambda b: b[:2] + b"\x02" + b[3:], "unsupported version"),
    (lambda b: b[:3] + b"\x07" + b[4:], "unknown message type"),
    (lambda b: b[:4] + b"\x80\x00" + b[6:], "unknown flags"),
    (lambda b: b[:6] + b"\x00\x30" + b[8:], "header length"),
    (lambda b: b[:36] + b"\x00\x00\x00\x01", "reserved"),
])
def test_malformed_input_raises_framing_error(mutate, message: str) -> None:
    raw = mutate(CASES[1].encode())
    with pytest.raises(FramingError, match=message):
        decode_header(raw)


@pytest.mark.parametrize("kwargs, name", [
    ({"transfer_id": 1 << 64}, "transfer_id"),
    ({"request_id": -1}, "request_id"),
    ({"total": U64 + 1}, "total"),
    ({"src_gpu": 1 << 16}, "src_gpu"),
    ({"dst_gpu": -1}, "dst_gpu"),
    ({"flags": 0x8000}, "flags"),
    ({"msg_type": 9}, "msg_type"),
    ({"total": 1.5}, "total"),
    ({"transfer_id": True}, "transfer_id"),
])
def test_encode_rejects_out_of_range(kwargs: dict, name: str) -> None:
    base = dict(msg_type=MSG_DATA, transfer_id=1, request_id=1, total=1, src_gpu=0, dst_gpu=1)
    base.update(kwargs)
    with pytest.raises(FramingError, match=name):
        encode_header(**base)
