"""The control-channel protocol between the orchestrator and the host agents, as typed messages.

Every message is a frozen dataclass, on the wire one JSON object whose ``"op"`` (command) or ``"ev"``
(report) names the class; ``hosts.codec`` alone checks wire objects (errors name message and field).

=============  ====  ==========================================================================
message        from  fields (``?`` optional)
=============  ====  ==========================================================================
Reset          orch  config (``ExperimentConfig.to_dict()``), role (prefill|decode), time_scale > 0
Prefill        orch  transfer_id, request_id, input_tokens, cached_tokens <= input_tokens, bytes,
                     dst_ip, dst_port, dst_gpu: compute the prompt, then stream its KV bytes
Expect         orch  transfer_id, request_id, input_tokens, output_tokens: decode it once its KV came
Send           orch  transfer_id, request_id, dst_ip, dst_port, bytes, dst_gpu, layer_schedule?
                     (``[[wall time, bytes so far], ...]``, see ``hosts.compute``)
Warm           orch  peers ``[[ip, port], ...]``: open one pooled connection to each
Ping / Stop    orch  seq? (any JSON, echoed) / nothing: the agent exits cleanly
Hello          agent name, gpu, pid, listen_ip, listen_port (the first line of every agent)
ResetDone      agent role, t_reset (``"ev": "reset"``)
Prefilled      agent transfer_id, t_start, t_end, request_id?
Sent/Received  agent transfer_id, request_id, bytes, t_start, t_end, role (send|recv), peer,
                     src_gpu, dst_gpu, t_connect?, t_local_end?
FirstToken     agent transfer_id, t_join, t_first, request_id?
Finished       agent transfer_id, t_finish, request_id?
Error          agent transfer_id (null when none), reason, role?, request_id?, bytes?, peer?
Pong / Warmed  agent seq, t, active (threads) / peers (connections opened)
Disconnected   server an agent's control connection closed
=============  ====  ==========================================================================

Times are ``time.time()`` stamps; :func:`replay_event` maps a report to the replay's events.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

ROLES = ("prefill", "decode")  # = scheduler.model.instance.ROLES (a test checks); not imported: it needs numpy


class ControlError(RuntimeError):
    """The control channel failed (not connected, closed, unknown agent)."""


class ProtocolError(ControlError):
    """A control line is not a valid message; carries the message's ``transfer_id`` and
    ``request_id`` when it had them (so the refusal can name the transfer)."""

    def __init__(self, reason: str, transfer_id: int | None = None,
                 request_id: int | None = None) -> None:
        super().__init__(reason)
        self.transfer_id, self.request_id = transfer_id, request_id


# ----------------------------------------------------------------------------- base classes
_REGISTRY: dict[tuple[str, str], type[Message]] = {}


def message_class(tag: str, kind: object) -> type[Message] | None:
    """The class whose wire objects have ``{tag: kind}`` (``"op"``/``"ev"``), or None."""
    return _REGISTRY.get((tag, kind)) if isinstance(kind, str) else None


@dataclass(frozen=True)
class Message:
    """One control message; ``TAG`` is its wire key (``op``/``ev``), ``KIND`` that key's value."""

    TAG: ClassVar[str] = ""
    KIND: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "KIND" in cls.__dict__:
            _REGISTRY[(cls.TAG, cls.KIND)] = cls

    def check(self) -> None:
        """Rules beyond field types; raises ``ProtocolError`` (``decode`` calls it)."""


@dataclass(frozen=True)
class Command(Message):
    """Orchestrator -> agent."""

    TAG: ClassVar[str] = "op"


@dataclass(frozen=True)
class Report(Message):
    """Agent -> orchestrator; ``agent`` is set by the control server on receipt."""

    TAG: ClassVar[str] = "ev"
    agent: str | None = field(default=None, compare=False, kw_only=True)


def is_int(value: object) -> bool:
    """An int that is not a bool (JSON true is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_port(kind: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ProtocolError(f"{kind}: dst_port {port} out of range")


# ----------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Reset(Command):
    """A fresh instance of ``role`` for ``config``; the agent's clock restarts."""

    KIND: ClassVar[str] = "reset"
    config: dict
    role: str
    time_scale: float

    def check(self) -> None:
        if self.role not in ROLES:
            raise ProtocolError(f"reset: field 'role' must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not 0 < self.time_scale < math.inf:
            raise ProtocolError(f"reset: field 'time_scale' must be a number > 0, got {self.time_scale!r}")


@dataclass(frozen=True)
class Send(Command):
    """Stream ``bytes`` synthetic KV bytes to ``dst_ip:dst_port`` (GPU ``dst_gpu``)."""

    KIND: ClassVar[str] = "send"
    transfer_id: int
    request_id: int
    dst_ip: str
    dst_port: int
    bytes: int
    dst_gpu: int
    layer_schedule: list | None = None

    def check(self) -> None:
        _check_port(self.KIND, self.dst_port)


@dataclass(frozen=True)
class Prefill(Command):
    """Queue a prompt on the prefill FIFO; at its end report ``prefilled`` and stream the KV."""

    KIND: ClassVar[str] = "prefill"
    transfer_id: int
    request_id: int
    input_tokens: int
    cached_tokens: int
    bytes: int
    dst_ip: str
    dst_port: int
    dst_gpu: int

    def check(self) -> None:
        _check_port(self.KIND, self.dst_port)
        if self.cached_tokens > self.input_tokens:
            raise ProtocolError(f"prefill: cached_tokens {self.cached_tokens} exceed input_tokens "
                                f"{self.input_tokens}")

    def stream(self, layer_schedule: list | None = None) -> Send:
        """The ``send`` of this prompt's KV bytes (``layer_schedule``: layer by layer)."""
        return Send(self.transfer_id, self.request_id, self.dst_ip, self.dst_port, self.bytes,
                    self.dst_gpu, layer_schedule)


@dataclass(frozen=True)
class Expect(Command):
    """Decode this request once transfer ``transfer_id`` has been received."""

    KIND: ClassVar[str] = "expect"
    transfer_id: int
    request_id: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Warm(Command):
    """Open one persistent connection to each ``(ip, port)`` ahead of the transfers."""

    KIND: ClassVar[str] = "warm"
    peers: tuple

    def check(self) -> None:
        ok = all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
                 and is_int(p[1]) for p in self.peers)
        if not ok:
            raise ProtocolError(f"warm: field 'peers' must be [[ip, port], ...], got {list(self.peers)!r}")


@dataclass(frozen=True)
class Ping(Command):
    """Liveness probe; ``seq`` (any JSON value) comes back in the ``pong``."""

    KIND: ClassVar[str] = "ping"
    seq: Any = None


@dataclass(frozen=True)
class Stop(Command):
    """Finish cleanly and exit."""

    KIND: ClassVar[str] = "stop"


# ----------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class Hello(Report):
    """An agent's first line: who it is and where its KV data port listens."""

    KIND: ClassVar[str] = "hello"
    name: str
    gpu: int
    pid: int
    listen_ip: str
    listen_port: int

    def check(self) -> None:
        if not self.name:
            raise ProtocolError("hello: field 'name' must not be empty")


@dataclass(frozen=True)
class ResetDone(Report):
    """The answer to ``reset``: the new instance's role and the wall time its clock started."""

    KIND: ClassVar[str] = "reset"
    role: str
    t_reset: float


@dataclass(frozen=True)
class Prefilled(Report):
    """The prefill instance computed the prompt from ``t_start`` to ``t_end`` (wall stamps)."""

    KIND: ClassVar[str] = "prefilled"
    transfer_id: int
    t_start: float
    t_end: float
    request_id: int | None = None


@dataclass(frozen=True)
class _Transfer(Report):
    """One side of a finished KV stream (``hosts.kvstream``): receiver ``t_start`` = first header
    byte in, ``t_end`` = last payload byte read; sender ``t_start`` = before the first header byte
    out, ``t_end`` = DONE in, ``t_connect`` = before connect (``t_start`` on a pooled connection),
    ``t_local_end`` = last byte handed to the kernel."""

    transfer_id: int
    request_id: int
    bytes: int
    t_start: float
    t_end: float
    role: str
    peer: str
    src_gpu: int
    dst_gpu: int
    t_connect: float | None = None
    t_local_end: float | None = None


@dataclass(frozen=True)
class Sent(_Transfer):
    """The sender's side of a finished KV stream (``role`` "send")."""

    KIND: ClassVar[str] = "sent"


@dataclass(frozen=True)
class Received(_Transfer):
    """The receiver's side of a finished KV stream (``role`` "recv")."""

    KIND: ClassVar[str] = "received"


@dataclass(frozen=True)
class FirstToken(Report):
    """The request joined the decode batch at ``t_join``; its first token came at ``t_first``."""

    KIND: ClassVar[str] = "first_token"
    transfer_id: int
    t_join: float
    t_first: float
    request_id: int | None = None


@dataclass(frozen=True)
class Finished(Report):
    """The request emitted its last token at ``t_finish``."""

    KIND: ClassVar[str] = "finished"
    transfer_id: int
    t_finish: float
    request_id: int | None = None


@dataclass(frozen=True)
class Error(Report):
    """A refused command, a failed KV stream (``role`` "send"/"recv") or a bad control line."""

    KIND: ClassVar[str] = "error"
    transfer_id: int | None
    reason: str
    role: str | None = None
    request_id: int | None = None
    bytes: int | None = None
    peer: str | None = None


@dataclass(frozen=True)
class Pong(Report):
    """The answer to ``ping``: its ``seq``, the agent's clock and its running threads."""

    KIND: ClassVar[str] = "pong"
    seq: Any
    t: float
    active: int


@dataclass(frozen=True)
class Warmed(Report):
    """The answer to ``warm``: ``peers`` connections are open."""

    KIND: ClassVar[str] = "warmed"
    peers: int


@dataclass(frozen=True)
class Disconnected(Report):
    """Queued by the control server when an agent's connection closes (never on the wire)."""

    KIND: ClassVar[str] = "disconnected"


# ----------------------------------------------------------------------------- replay events
@dataclass(frozen=True)
class KvReceived:
    """The decode instance received the KV bytes: first byte ``t_start``, last ``t_end``."""

    transfer_id: int
    t_start: float
    t_end: float
    nbytes: int


@dataclass(frozen=True)
class AgentFailure:
    """An agent reported an error (``role`` "send"/"recv" for a KV stream) or went away."""

    transfer_id: int | None
    agent: str
    reason: str
    role: str | None = None


AgentEvent = Prefilled | KvReceived | FirstToken | Finished | AgentFailure
"""What the real-time replay (``scheduler.emulate.replay``) consumes."""


def replay_event(report: Report) -> AgentEvent | None:
    """The replay event a report carries, or None for those the replay does not consume
    (``hello``, ``sent``, ``pong``, ``warmed``, ``reset``)."""
    agent = report.agent or "?"
    if isinstance(report, (Prefilled, FirstToken, Finished)):
        return report
    if isinstance(report, Received):
        return KvReceived(report.transfer_id, report.t_start, report.t_end, report.bytes)
    if isinstance(report, Error):
        return AgentFailure(report.transfer_id, agent, report.reason, report.role)
    if isinstance(report, Disconnected):
        return AgentFailure(None, agent, "control connection closed (the agent exited)")
    return None
