"""The real-time replay engine (the emulate backend's core) against an in-process fake agent
cluster, no root: every GPU runs the agents' own compute engine (``hosts.compute`` on
``InstanceModel``), and a fake network delivers each KV stream after bytes / idle bottleneck.
(Over 400 lines: one fake agent cluster serves every replay test.)"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time

import numpy as np
import pytest

from hosts.codec import decode, encode
from hosts.compute import ComputeEngine
from hosts.messages import (
    Command,
    Disconnected,
    Error,
    Expect,
    Prefill,
    ProtocolError,
    Received,
    Report,
    Reset,
    ResetDone,
    Send,
    Sent,
    replay_event,
)
from scheduler.decision.oracle import OracleQuery, StaticTierOracle
from scheduler.decision.telemetry import TelemetryHistory
from scheduler.emulate.replay import (
    AgentFailure,
    Clock,
    EmulationError,
    Finished,
    FirstToken,
    KvReceived,
    Prefilled,
    RealtimeReplay,
)
from scheduler.model.config import ExperimentConfig, build_config
from scheduler.model.trace import Request
from scheduler.policies import REGISTRY
from scheduler.sim.simulator import Simulator
from topology.model import FatTree

MIXED = ["cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"]
"""The layout whose GPU names the error-message tests below expect (round-robin's first pair)."""


class FakeAgents:
    """The agents of every GPU in-process. Compute: one ``ComputeEngine`` per GPU, exactly as in
    an agent. Network: a KV stream of ``nbytes`` (scaled) is received after the idle-fabric cost
    of ``nbytes / byte_scale`` real bytes (wall time stretched by the time scale), on a timer."""

    def __init__(self, tree: FatTree, byte_scale: float, fail: bool = False) -> None:
        self.events: queue.Queue = queue.Queue()
        self.oracle = StaticTierOracle(tree, setup_s=30e-6)
        self.byte_scale = byte_scale
        self.fail = fail
        self.time_scale = 1.0
        self.engines: dict[int, ComputeEngine] = {}
        self.commands: list[Command] = []
        self.schedules: list[tuple[int, list]] = []  # layer-wise streams: (transfer id, layer schedule)
        self.resets = 0

    def _emit(self, gpu: int, msg: Report) -> None:
        ev = replay_event(dataclasses.replace(msg, agent=f"gpu{gpu}"))
        if ev is not None:
            self.events.put(ev)

    def reset(self, cfg: ExperimentConfig, prefill_gpus, decode_gpus, time_scale: float) -> None:
        self.close()
        self.resets += 1
        self.time_scale = time_scale
        for role, gpus in (("prefill", prefill_gpus), ("decode", decode_gpus)):
            for g in gpus:
                eng = ComputeEngine(lambda m, g=g: self._emit(g, m), lambda cmd, g=g: self._stream(g, cmd))
                eng.reset(cfg.to_dict(), role, time_scale)
                self.engines[g] = eng

    def prefill(self, transfer_id, request_id, src, dst, input_tokens, cached_tokens, nbytes) -> None:
        cmd = Prefill(transfer_id, request_id, input_tokens, cached_tokens, nbytes, "10.0.0.1", 9470, dst)
        assert decode(encode(cmd)) == cmd  # a well-formed command
        self.commands.append(cmd)
        self.engines[src].prefill(cmd)

    def expect(self, transfer_id, request_id, dst, input_tokens, output_tokens) -> None:
        cmd = Expect(transfer_id, request_id, input_tokens, output_tokens)
        assert decode(encode(cmd)) == cmd
        self.commands.append(cmd)
        self.engines[dst].expect(cmd)

    def _cost(self, src: int, dst: int, nbytes: float) -> float:
        real = nbytes / self.byte_scale
        return float(self.oracle.cost(OracleQuery(src, np.array([dst]), np.array([real]), 0.0))[0])

    def _stream(self, src: int, cmd: Send) -> None:
        """Deliver after the idle cost of the bytes; a layer-wise stream (``layer_schedule``) on
        one bottleneck ends at max over its steps of (release time + cost of the bytes not yet
        released before it), the fluid model of a link fed step by step."""
        dst, nbytes, ts = cmd.dst_gpu, cmd.bytes, self.time_scale
        t0 = time.time()
        wall = ts * self._cost(src, dst, nbytes)  # wall seconds: the fabric runs time_scale x slower
        schedule = cmd.layer_schedule
        if schedule is not None:
            released = [0] + [b for _, b in schedule[:-1]]
            wall = max(t + ts * self._cost(src, dst, nbytes - before)
                       for (t, _), before in zip(schedule, released)) - t0
            self.schedules.append((cmd.transfer_id, schedule))

        def arrive() -> None:
            if self.fail:
                self._emit(src, Error(cmd.transfer_id, "connection refused", role="send",
                                      request_id=cmd.request_id, bytes=nbytes))
                return
            t1 = time.time()
            self._emit(dst, Received(cmd.transfer_id, cmd.request_id, nbytes, t0, t1, "recv", "10.0.0.2:1",
                                     src, dst))
            self.engines[dst].kv_received(cmd.transfer_id, t1)

        threading.Timer(max(wall, 0.0), arrive).start()

    def close(self) -> None:
        for eng in self.engines.values():
            eng.close()
        self.engines.clear()


class NoActions:
    def __init__(self) -> None:
        self.applied = []

    def apply(self, action) -> None:
        self.applied.append(action)


def _requests(n: int = 8, out: int = 12, gap: float = 0.3) -> list[Request]:
    rng = np.random.default_rng(3)
    reqs = []
    for i in range(n):
        tokens = int(rng.integers(600, 3000))
        reqs.append(Request(i, gap * i, tokens, out, tuple(range(i * 100, i * 100 + -(-tokens // 512)))))
    return reqs


def _replay(cfg, reqs, policy, agents, byte_scale, time_scale=1.0, **kw) -> RealtimeReplay:
    return RealtimeReplay(cfg, reqs, REGISTRY[policy](), [], agents, NoActions(), TelemetryHistory(),
                          Clock(time_scale), byte_scale=byte_scale, **kw)


def _replay_and_simulate(cfg, reqs, byte_scale: float):
    """(records of a round-robin replay on fake agents, records of the simulator on the same input,
    the agents, the replay)."""
    agents = FakeAgents(FatTree(cfg.topology), byte_scale=byte_scale)
    replay = _replay(cfg, reqs, "round-robin", agents, byte_scale)
    try:
        recs = replay.run()
    finally:
        agents.close()
    return recs, Simulator(cfg, reqs, REGISTRY["round-robin"]()).run(), agents, replay


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["round-robin", "netkv"])
def test_realtime_replay_matches_the_simulator_on_an_idle_fabric(policy):
    cfg = build_config(overrides=["topology.nic_gbit_s=20"])  # transfers of tens of ms, never overlapping
    reqs = _requests()
    agents = FakeAgents(FatTree(cfg.topology), byte_scale=1e-3)
    replay = _replay(cfg, reqs, policy, agents, 1e-3)
    try:
        recs = replay.run()
    finally:
        agents.close()
    # no telemetry reaches this replay (empty history): compare with the simulator's static oracle
    sim = Simulator(cfg, reqs, REGISTRY[policy](oracle_kind="static")).run()
    assert [r.decode for r in recs] == [r.decode for r in sim]
    assert [r.prefill for r in recs] == [r.prefill for r in sim]
    assert agents.resets == 1
    prefills = [c for c in agents.commands if isinstance(c, Prefill)]
    assert [c.KIND for c in agents.commands] == ["expect", "prefill"] * len(reqs)
    for r, s, c in zip(recs, sim, prefills):
        # the same bytes, scaled, were handed to the prefill agent
        assert r.kv_bytes == s.kv_bytes
        assert c.bytes == max(round(s.kv_bytes * 1e-3), 1) and c.cached_tokens == s.prefill_cached_tokens
        # the agents' compute is the simulator's: equal prefill durations, decode steps alike
        assert r.prefill_s == pytest.approx(s.prefill_s, abs=1e-6)
        assert r.tbt_mean_ms == pytest.approx(s.tbt_mean_ms, abs=1e-3)  # wall stamps carry ~0.2 us
        # queue, transfer and TTFT agree within timer/scheduling jitter of a shared machine
        assert r.queue_s == pytest.approx(s.queue_s, abs=0.03)
        assert r.transfer_s == pytest.approx(s.transfer_s, abs=0.03)
        assert r.ttft_s == pytest.approx(s.ttft_s, abs=0.05)
    assert max(replay.lag_s) < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("nic_gbit_s", [400, 20])
def test_layer_wise_streaming_replay_matches_the_simulator(nic_gbit_s):
    """timing.kv_streaming = layer-wise: the prefill agents stream each layer's KV as it is
    computed (a schedule of model.layers steps from the first layer's end to the prefill's end),
    and the replay's records follow the simulator's rate-capped flows, with a fast network
    (only the last layer's bytes move after the prefill: well under a ms) and with a slow one (the
    network, not the prefill, is the bottleneck: the transfer ends several ms after the prefill)."""
    cfg = build_config(overrides=[f"topology.nic_gbit_s={nic_gbit_s}", "timing.kv_streaming=layer-wise"])
    reqs = _requests(n=5, gap=0.5)
    recs, sim, agents, replay = _replay_and_simulate(cfg, reqs, 1e-3)
    after = Simulator(build_config(overrides=[f"topology.nic_gbit_s={nic_gbit_s}"]), reqs,
                      REGISTRY["round-robin"]()).run()
    layers = cfg.model.layers
    assert [tid for tid, _ in agents.schedules] == [replay.tid_base + i for i in range(len(reqs))]
    for (_, sched), r in zip(agents.schedules, recs):
        assert len(sched) == layers and sched[-1][1] == max(round(r.kv_bytes * 1e-3), 1)
        steps = np.diff([t for t, _ in sched])
        assert steps == pytest.approx(np.full(layers - 1, r.prefill_s / layers), abs=1e-6)
    for r, s, a in zip(recs, sim, after):
        assert r.prefill_s == pytest.approx(s.prefill_s, abs=1e-6)
        assert r.transfer_s == pytest.approx(s.transfer_s, abs=0.03)
        assert r.ttft_s == pytest.approx(s.ttft_s, abs=0.05)
        assert s.transfer_s < a.transfer_s  # the streaming hid part of the transfer
    if nic_gbit_s < 100:  # network-bound: streaming from the first layer on hides a third of it
        assert min(s.transfer_s for s in sim) > 0.005
    else:  # only the last layer's bytes are left after the prefill (after-prefill: 2-7 ms)
        assert max(s.transfer_s for s in sim) < 0.001


class BatchActions:
    """An executor that takes one instant's actions together (as the fabric's does)."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list]] = []

    def apply(self, action) -> None:
        raise AssertionError("apply_batch is there: actions must come in batches")

    def apply_batch(self, actions) -> None:
        self.batches.append((time.monotonic(), list(actions)))


def test_scenario_actions_of_one_instant_reach_the_executor_together():
    """The replay hands each instant's actions to the executor in one batch, in the scenario's
    order (stops before starts), both the pre-roll (t <= 0) and the ones released mid-run."""
    from scheduler.model.scenario import Action

    cfg = build_config(overrides=MIXED)
    acts = [Action(0.0, "flow_start", "a", 0, 5), Action(0.0, "flow_start", "b", 1, 6),
            Action(0.3, "flow_stop", "a", 0, 5), Action(0.3, "flow_stop", "b", 1, 6),
            Action(0.3, "flow_start", "c", 2, 7), Action(0.6, "link_capacity", links=(3,), factor=0.5)]
    agents = FakeAgents(FatTree(cfg.topology), byte_scale=1e-6)
    executor = BatchActions()
    replay = RealtimeReplay(cfg, _requests(4), REGISTRY["round-robin"](), acts, agents, executor,
                            TelemetryHistory(), Clock(1.0), byte_scale=1e-6, preroll_s=0.05)
    try:
        replay.run()
    finally:
        agents.close()
    got = [[(a.time_s, a.kind, a.flow_id) for a in batch] for _, batch in executor.batches]
    assert got == [[(0.0, "flow_start", "a"), (0.0, "flow_start", "b")],
                   [(0.3, "flow_stop", "a"), (0.3, "flow_stop", "b"), (0.3, "flow_start", "c")],
                   [(0.6, "link_capacity", None)]]
    (_t0, _), (t1, _), (t2, _) = executor.batches
    assert t2 - t1 == pytest.approx(0.3, abs=0.05)  # each batch when its instant comes


def test_busy_instances_queue_and_batch_like_the_simulator():
    """Arrivals faster than prefill on a 4-GPU cluster: prefill queues build up and decode
    batches hold several requests; the agents' times still follow the simulator's."""
    cfg = build_config(overrides=["topology.pods=1", "topology.tors_per_pod=1", "topology.servers_per_tor=1",
                                 "cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"])
    reqs = _requests(n=6, out=40, gap=0.02)
    recs, sim, _, _ = _replay_and_simulate(cfg, reqs, 1e-4)
    assert sum(r.queue_s > 0.05 for r in sim) >= 2  # the scenario does queue
    for r, s in zip(recs, sim):
        assert r.queue_s == pytest.approx(s.queue_s, abs=0.03)
        assert r.ttft_s == pytest.approx(s.ttft_s, abs=0.05)
        assert r.tbt_mean_ms == pytest.approx(s.tbt_mean_ms, rel=0.05)


def test_a_failed_transfer_stops_the_replay_with_the_reason():
    cfg = build_config(overrides=MIXED)
    reqs = _requests(3)
    agents = FakeAgents(FatTree(cfg.topology), byte_scale=1e-6, fail=True)
    replay = _replay(cfg, reqs, "round-robin", agents, 1e-6)
    try:
        with pytest.raises(EmulationError,
                           match=r"KV transfer of request 0 \(p0t0s1g0 -> p0t1s1g3\) failed: gpu4: connection refused"):
            replay.run()
    finally:
        agents.close()


class ScriptedAgents:
    """Answers each request with a fixed script of reports (for the replay's error paths)."""

    def __init__(self, script) -> None:
        self.events: queue.Queue = queue.Queue()
        self.script = script

    def reset(self, cfg, prefill_gpus, decode_gpus, time_scale) -> None:
        pass

    def expect(self, transfer_id, request_id, dst, input_tokens, output_tokens) -> None:
        pass

    def prefill(self, transfer_id, request_id, src, dst, input_tokens, cached_tokens, nbytes) -> None:
        for ev in self.script(transfer_id, time.time()):
            self.events.put(ev)


def test_reports_out_of_order_or_unknown_are_errors():
    cfg = build_config(overrides=MIXED)
    early_finish = ScriptedAgents(lambda tid, t: [Prefilled(tid, t, t), KvReceived(tid, t, t, 1), Finished(tid, t)])
    with pytest.raises(EmulationError, match=r"request 0 \(p0t0s1g0 -> p0t1s1g3\): finished before its received stage"):
        _replay(cfg, _requests(1), "round-robin", early_finish, 1e-6).run()
    stranger = ScriptedAgents(lambda tid, t: [Prefilled(tid + 99, t, t)])
    with pytest.raises(EmulationError, match="unknown or finished transfer 99"):
        _replay(cfg, _requests(1), "round-robin", stranger, 1e-6).run()
    gone = ScriptedAgents(lambda tid, t: [AgentFailure(None, "p0t0s0g0", "control connection closed")])
    with pytest.raises(EmulationError, match="agent p0t0s0g0 failed: control connection closed"):
        _replay(cfg, _requests(1), "round-robin", gone, 1e-6).run()


@pytest.mark.slow
def test_silent_agents_time_out_naming_the_request():
    cfg = build_config()
    mute = ScriptedAgents(lambda tid, t: [Prefilled(tid, t, t)])  # the KV never arrives
    replay = _replay(cfg, _requests(1), "round-robin", mute, 1e-6, transfer_timeout_s=0.3)
    with pytest.raises(EmulationError, match=r"1 KV transfers unfinished after 0.3 s, the oldest of request 0"):
        replay.run()
    stalled = ScriptedAgents(lambda tid, t: [Prefilled(tid, t, t), KvReceived(tid, t, t, 1),
                                             FirstToken(tid, t, t)])  # never finishes
    replay = _replay(cfg, _requests(1), "round-robin", stalled, 1e-6, transfer_timeout_s=0.3)
    with pytest.raises(EmulationError, match=r"no agent reported anything for 0.3 s .* last reported 'first_token'"):
        replay.run()


def test_event_parsing_of_agent_messages():
    def event(obj: dict):
        return replay_event(decode(obj, Report))

    assert event({"ev": "prefilled", "transfer_id": 3, "t_start": 1, "t_end": 2.5}) == Prefilled(3, 1.0, 2.5)
    assert event({"ev": "received", "transfer_id": 3, "request_id": 30, "t_start": 1, "t_end": 2, "bytes": 9,
                  "role": "recv", "peer": "10.0.0.1:5", "src_gpu": 0, "dst_gpu": 1}) == KvReceived(3, 1.0, 2.0, 9)
    assert event({"ev": "first_token", "transfer_id": 3, "t_join": 1, "t_first": 2}) == FirstToken(3, 1.0, 2.0)
    assert event({"ev": "finished", "transfer_id": 3, "t_finish": 4}) == Finished(3, 4.0)
    err = event({"ev": "error", "transfer_id": 3, "agent": "a", "reason": "boom", "role": "recv"})
    assert err == AgentFailure(3, "a", "boom", "recv")
    closed = AgentFailure(None, "a", "control connection closed (the agent exited)")
    assert replay_event(Disconnected(agent="a")) == closed
    with pytest.raises(ProtocolError, match="finished: field 't_finish' must be a number") as bad:
        decode({"ev": "finished", "transfer_id": 3, "agent": "a"})
    assert bad.value.transfer_id == 3
    for ignored in ({"ev": "hello", "name": "a", "gpu": 0, "pid": 1, "listen_ip": "::1", "listen_port": 2},
                    {"ev": "pong", "seq": None, "t": 1.0, "active": 0}, {"ev": "warmed", "peers": 1},
                    {"ev": "reset", "role": "decode", "t_reset": 1.0}):
        assert event(ignored) is None


class FakeControl:
    """A ControlServer stand-in: records commands; ``answer`` decides each reset's reply."""

    def __init__(self, answer) -> None:
        self.sent: list[tuple[str, Command]] = []
        self.answer = answer
        self.transport = None

    def send(self, name: str, msg: Command) -> None:
        from hosts.control import ControlError

        if name == "p3t1s1g3":
            raise ControlError(f"agent {name!r} is not connected")
        self.sent.append((name, msg))
        reply = self.answer(name, msg) if isinstance(msg, Reset) else None
        if reply is not None:
            threading.Timer(0.01, self.transport.on_event, args=(dataclasses.replace(reply, agent=name),)).start()


def test_agent_transport_resets_every_agent_and_formats_commands():
    from scheduler.emulate.transport import AgentTransport

    cfg = build_config()
    tree = FatTree(cfg.topology)
    control = FakeControl(lambda name, msg: ResetDone(msg.role, 0.0))
    tr = control.transport = AgentTransport(control, tree, port=9470, reset_timeout_s=2.0)
    tr.reset(cfg, [0, 2], [1, 3], 4.0)
    resets = dict(control.sent)
    assert {n: m.role for n, m in resets.items()} == {
        "p0t0s0g0": "prefill", "p0t0s0g2": "prefill", "p0t0s0g1": "decode", "p0t0s0g3": "decode"}
    assert all(m.time_scale == 4.0 and m.config == cfg.to_dict() for m in resets.values())
    tr.expect(7, 70, 5, 1000, 20)
    tr.prefill(7, 70, 0, 5, 1000, 512, 4096)
    (n1, expect), (n2, prefill) = control.sent[-2:]
    assert n1 == "p0t0s1g1" and n2 == "p0t0s0g0"
    assert decode(encode(expect)) == expect == Expect(7, 70, 1000, 20)
    assert decode(encode(prefill)) == prefill
    assert prefill.dst_gpu == 5 and prefill.dst_port == 9470 and prefill.bytes == 4096
    with pytest.raises(EmulationError, match="prefill to p3t1s1g3: agent 'p3t1s1g3' is not connected"):
        tr.prefill(8, 80, 63, 5, 10, 0, 1)
    # a failed stream is reported by both ends: the replay hears of it once
    tr.on_event(Error(7, "reset by peer", role="send", agent="a"))
    tr.on_event(Error(7, "closed", role="recv", agent="b"))
    tr.on_event(Sent(7, 70, 4096, 0.0, 1.0, "send", "10.0.0.1:9470", 0, 5, agent="a"))
    tr.on_event(Finished(9, 1.0, agent="b"))
    assert [tr.events.get_nowait() for _ in range(2)] == [
        AgentFailure(7, "a", "reset by peer", "send"), Finished(9, 1.0)]
    assert tr.events.empty()


def test_agent_transport_reset_failures_name_the_agents():
    from scheduler.emulate.transport import AgentTransport

    cfg = build_config()
    tree = FatTree(cfg.topology)
    silent = FakeControl(lambda name, msg: None if name == "p0t0s0g3" else ResetDone(msg.role, 0.0))
    tr = silent.transport = AgentTransport(silent, tree, reset_timeout_s=0.3)
    with pytest.raises(EmulationError, match=r"1 agent\(s\) did not answer reset within 0.3 s: p0t0s0g3"):
        tr.reset(cfg, [0, 2], [1, 3], 1.0)
    refusing = FakeControl(lambda name, msg: Error(None, "reset: bad config: boom") if name == "p0t0s0g1"
                           else ResetDone(msg.role, 0.0))
    tr = refusing.transport = AgentTransport(refusing, tree, reset_timeout_s=2.0)
    with pytest.raises(EmulationError, match="reset failed: p0t0s0g1: reset: bad config: boom"):
        tr.reset(cfg, [0, 2], [1, 3], 1.0)


def test_clock_dilation():
    c = Clock(4.0)
    c.start()
    time.sleep(0.2)
    assert 0.04 <= c.now() <= 0.1
    assert c.virtual(c.t0_wall + 8.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        Clock(0)


def test_agreement_and_transfer_agreement_arithmetic():
    from scheduler.emulate.agreement import agreement, transfer_agreement

    def row(ttft, hist, means):
        return {"ttft_mean_s": ttft, "tier_histogram": hist, "transfer_mean_s_by_tier": means}

    emu = {"cache-load": row(0.50, [2, 0, 6, 0], [0.004, None, 0.06, None]),
           "netkv": row(0.45, [4, 0, 0, 0], [0.010, None, None, None])}
    sim = {"cache-load": row(0.50, [1, 1, 6, 0], [0.002, 0.02, 0.05, None]),
           "netkv": row(0.44, [4, 0, 0, 0], [0.004, None, None, None])}
    a = agreement(emu, sim)["cache-load"]
    assert a["emulate_pct"] == pytest.approx(-10.0) and a["simulate_pct"] == pytest.approx(-12.0)
    assert a["same_sign"] and a["magnitude_ratio"] == pytest.approx(1.2) and a["within_1_5x"]
    assert not a["no_effect"]
    # no change worth the name on either backend (the idle scenario): no sign, no ratio to judge
    flat = agreement({"cache-load": row(0.500, [1], [0.01]), "netkv": row(0.5002, [1], [0.01])},
                     {"cache-load": row(0.500, [1], [0.01]), "netkv": row(0.4999, [1], [0.01])})["cache-load"]
    assert flat["no_effect"] and flat["same_sign"] and flat["magnitude_ratio"] is None
    opposite = agreement({"cache-load": row(0.50, [1], [0.01]), "netkv": row(0.52, [1], [0.01])},
                         {"cache-load": row(0.50, [1], [0.01]), "netkv": row(0.48, [1], [0.01])})["cache-load"]
    assert not opposite["no_effect"] and not opposite["same_sign"]
    t = transfer_agreement(emu, sim)
    # tier 0: emulate (2 x 4 + 4 x 10) / 6 = 8 ms, simulate (1 x 2 + 4 x 4) / 5 = 3.6 ms
    assert t["0"]["emulate_ms"] == pytest.approx(8.0) and t["0"]["simulate_ms"] == pytest.approx(3.6)
    assert t["0"]["ratio"] == pytest.approx(8.0 / 3.6) and t["0"]["transfers_emulate"] == 6
    assert t["2"]["ratio"] == pytest.approx(60 / 50)
    assert "1" not in t and "3" not in t  # no transfers on one backend / on both


@pytest.mark.slow
def test_a_lost_instance_fails_its_requests_and_the_run_completes_for_the_rest():
    """An agent killed mid-replay (``lost_hosts``): its control connection closes, the requests it
    held fail, so does every later one sent to it; the others finish and have records."""
    from hosts.messages import AgentFailure

    cfg = build_config(overrides=MIXED)
    tree = FatTree(cfg.topology)
    reqs = _requests(16, gap=0.1)
    agents = FakeAgents(tree, byte_scale=1e-6)
    try:  # a first replay shows where round-robin sends request 10 (arrives at 1.0 s)
        victim = next(r.decode for r in _replay(cfg, reqs, "round-robin", agents, 1e-6).run() if r.req_id == 10)
    finally:
        agents.close()
    agents = FakeAgents(tree, byte_scale=1e-6)
    lost: set[str] = set()
    replay = _replay(cfg, reqs, "round-robin", agents, 1e-6, lost_hosts=lambda: frozenset(lost))

    def kill() -> None:
        lost.add(victim)
        agents.events.put(AgentFailure(None, victim, "control connection closed (the agent exited)"))

    timer = threading.Timer(0.5, kill)
    timer.start()
    try:
        recs = replay.run()
    finally:
        timer.cancel()
        agents.close()
    failed = replay.dispatch.failures()
    assert failed and len(recs) + len(failed) == len(reqs)
    assert all(f["decode"] == victim for f in failed) and all(r.decode != victim or r.arrival_s < 0.5 for r in recs)
    assert {f["reason"] for f in failed} <= {f"instance {victim} lost", f"sent to lost instance {victim}"}
    assert victim in replay.lost_at
