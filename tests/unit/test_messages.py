"""The agents' control protocol (hosts/messages.py, hosts/codec.py): every message type round-trips
through the one codec, and a malformed message is refused naming the field."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hosts.codec import encode
from hosts.messages import (
    Disconnected,
    Error,
    Expect,
    Finished,
    FirstToken,
    Hello,
    Ping,
    Pong,
    Prefill,
    Prefilled,
    Received,
    Report,
    Reset,
    ResetDone,
    Send,
    Sent,
    Stop,
    Warm,
    Warmed,
)

ROOT = Path(__file__).resolve().parents[2]
MB = 1_000_000
NETNS = ("nkvtest-a", "nkvtest-b")


# --------------------------------------------------------------------------- control protocol
SAMPLES = [
    Reset({"seed": 1}, "decode", 2.0), Prefill(1, 10, 3000, 512, 4096, "10.0.0.2", 9470, 5),
    Expect(1, 10, 3000, 12), Send(1, 10, "10.0.0.2", 9470, 4096, 5),
    Send(2, 20, "10.0.0.2", 9470, 100, 5, [[1.5, 50], [2.5, 100]]), Warm((("10.0.0.2", 9470), ("10.1.0.2", 9470))),
    Ping(), Ping({"any": [1]}), Stop(), Hello("p0t0s0g0", 0, 123, "10.0.0.1", 9470), ResetDone("prefill", 5.0),
    Prefilled(1, 1.0, 2.0, 10), Sent(1, 10, 4096, 1.0, 2.0, "send", "10.0.0.2:9470", 0, 5, 0.5, 1.9),
    Received(1, 10, 4096, 1.1, 1.95, "recv", "10.0.0.1:40000", 0, 5), FirstToken(1, 2.0, 2.1, 10),
    Finished(1, 3.0), Error(None, "warm: refused"), Error(7, "reset by peer", "send", 70, 12, "10.0.0.2:9470"),
    Pong("abc", 4.0, 3), Warmed(2), Disconnected(),
]


def test_codec_round_trips_every_message_type() -> None:
    from hosts.codec import decode_line, encode_line
    from hosts.messages import Command, Message

    def kinds(cls: type) -> set[type]:
        return {c for sub in cls.__subclasses__() for c in ({sub} if "KIND" in sub.__dict__ else set()) | kinds(sub)}

    assert {type(m) for m in SAMPLES} == kinds(Message)  # every message class has a sample
    for msg in SAMPLES:
        line = encode_line(msg)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert decode_line(line) == msg == decode_line(line, Command if isinstance(msg, Command) else Report)
        assert json.loads(line)[msg.TAG] == msg.KIND
    # the wire objects are today's: tag first, optional fields only when set
    assert encode(SAMPLES[3]) == {"op": "send", "transfer_id": 1, "request_id": 10, "dst_ip": "10.0.0.2",
                                  "dst_port": 9470, "bytes": 4096, "dst_gpu": 5}
    assert encode(Error(None, "x")) == {"ev": "error", "transfer_id": None, "reason": "x"}
    assert encode(Finished(1, 3.0, agent="a")) == {"ev": "finished", "transfer_id": 1, "t_finish": 3.0, "agent": "a"}


@pytest.mark.parametrize("obj,needle", [
    ({"op": "prefill", "transfer_id": 1, "request_id": 2, "input_tokens": 9, "cached_tokens": 0, "bytes": "lots",
      "dst_ip": "a", "dst_port": 1, "dst_gpu": 0}, "prefill: field 'bytes' must be int, got 'lots'"),
    ({"op": "send", "transfer_id": 1, "request_id": True, "dst_ip": "a", "dst_port": 1, "bytes": 1, "dst_gpu": 0},
     "send: field 'request_id' must be int, got True"),
    ({"op": "send", "transfer_id": 1, "request_id": 2, "dst_ip": "a", "dst_port": 0, "bytes": 1, "dst_gpu": 0},
     "send: dst_port 0 out of range"),
    ({"op": "expect", "transfer_id": 1, "request_id": 2, "input_tokens": 9},
     "expect: field 'output_tokens' must be int"),
    ({"op": "warm", "peers": [["a"]]}, "warm: field 'peers'"),
    ({"ev": "sent", "transfer_id": 1}, "sent: field 'request_id'"),
    ({"ev": "hello", "name": "", "gpu": 0, "pid": 1, "listen_ip": "a", "listen_port": 1}, "hello: field 'name'"),
    ({"op": "dance"}, "unknown op 'dance'"),
    ([1, 2], "expected a JSON object, got list"),
])
def test_codec_rejects_malformed_messages_naming_the_field(obj: object, needle: str) -> None:
    from hosts.codec import decode
    from hosts.messages import ProtocolError

    with pytest.raises(ProtocolError, match=re.escape(needle)) as exc:
        decode(obj)
    assert exc.value.transfer_id == (1 if isinstance(obj, dict) and "transfer_id" in obj else None)


def test_roles_match_the_instance_model() -> None:
    """``hosts.messages.ROLES`` is a copy (importing the instance model would load numpy)."""
    from hosts.messages import ROLES
    from scheduler.model.instance import ROLES as MODEL_ROLES

    assert ROLES == MODEL_ROLES
