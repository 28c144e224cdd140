"""Agent reports (control-channel JSON, see ``hosts.control``) as the replay's event dataclasses.

Kept apart from ``scheduler.emulate.orchestrator`` (which needs Mininet) so an in-process fake agent cluster can
use the same parsing without root.
"""
from __future__ import annotations

from hosts.control import Message
from scheduler.emulate.replay import AgentEvent, AgentFailure, FirstToken, Finished, KvReceived, Prefilled


def event_from_message(msg: Message) -> AgentEvent | None:
    """The replay event an agent message carries, or None for messages the replay does not
    consume (``hello``, ``sent``, ``pong``, ``warmed``, ``reset``). ``error`` and
    ``disconnected`` become :class:`AgentFailure`; so does a report missing a field."""
    ev = msg.get("ev")
    agent = str(msg.get("agent", "?"))
    tid = msg.get("transfer_id")
    tid = tid if isinstance(tid, int) and not isinstance(tid, bool) else None
    try:
        if ev == "prefilled":
            return Prefilled(int(msg["transfer_id"]), float(msg["t_start"]), float(msg["t_end"]))
        if ev == "received":
            return KvReceived(int(msg["transfer_id"]), float(msg["t_start"]), float(msg["t_end"]),
                              int(msg["bytes"]))
        if ev == "first_token":
            return FirstToken(int(msg["transfer_id"]), float(msg["t_join"]), float(msg["t_first"]))
        if ev == "finished":
            return Finished(int(msg["transfer_id"]), float(msg["t_finish"]))
    except (KeyError, TypeError, ValueError) as exc:
        return AgentFailure(tid, agent, f"malformed {ev!r} report ({exc!r}): {msg!r}")
    if ev == "error":
        role = msg.get("role")
        return AgentFailure(tid, agent, str(msg.get("reason", "error")), role if isinstance(role, str) else None)
    if ev == "disconnected":
        return AgentFailure(None, agent, "control connection closed (the agent exited)")
    return None
