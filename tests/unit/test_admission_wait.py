"""The decode admission-wait term (``DecisionContext.decode_admission_wait_s``) and the policy that
prices it, ``netkv-admit`` (scheduler/policies/netkv.py): zero while a request fits beside what is
already assigned to a decode instance, the overflow's drain time once it does not, and a near
decode abandoned when its memory, not its load fraction, runs out (and the wait not priced once
no decode can admit the request at once)."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.decision.context import Decision, DecisionContext
from scheduler.decision.dispatch import Dispatcher
from scheduler.decision.oracle import TelemetryOracle
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.cluster import Cluster
from scheduler.model.config import build_config
from scheduler.model.trace import Request, n_blocks
from scheduler.policies import REGISTRY, parse_spec
from scheduler.policies.base import Policy
from topology.model import FatTree

# 8 prefill and 8 decode instances, one of each per server (as tests/unit/test_policies.py)
SMALL = ["topology.pods=2", "topology.tors_per_pod=2", "topology.servers_per_tor=2",
         "topology.gpus_per_server=2", "topology.aggs_per_pod=2", "topology.cores=2",
         "cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"]
OUTPUT = 100  # output tokens of every test request


class Fixed:
    def __init__(self, snap):
        self.snap = snap

    def at(self, time_s):
        return self.snap


def make() -> tuple[FatTree, Cluster]:
    cfg = build_config(overrides=SMALL)
    tree = FatTree(cfg.topology)
    return tree, Cluster(cfg, tree)


def request(i: int, tokens: int, output: int = OUTPUT) -> Request:
    return Request(i, 0.0, tokens, output, tuple(range(1000, 1000 + n_blocks(tokens))))


def turnover_s(cl: Cluster, mean_output: float) -> float:
    """The drain time of a full batch, as the term's docstring defines it."""
    return mean_output * cl.timing.decode_step_s(cl.decode_capacity_tokens)


# (case, decode 0's assigned tokens as capacity - need + this, expected overflow tokens)
# need = prompt + output of a 16,000-token prompt
NEED = 16_000 + OUTPUT
WAIT_CASES = [
    ("empty", None, 0.0),
    ("fits with room", -50_000, 0.0),
    ("fits exactly", 0, 0.0),
    ("one token over", 1, 1.0),
    ("one request over", NEED, float(NEED)),
]


@pytest.mark.parametrize("case,over_capacity,expected_over", WAIT_CASES, ids=[c[0] for c in WAIT_CASES])
def test_wait_is_the_overflow_drained_at_a_full_batch_turnover(case, over_capacity, expected_over):
    _, cl = make()
    cap = cl.decode_capacity_tokens
    if over_capacity is not None:
        cl.decode_assigned_tokens[0] = cap - NEED + over_capacity
    ctx = DecisionContext(cl, request(0, 16_000), 0.0, None, mean_output_tokens=350.0)
    wait = ctx.decode_admission_wait_s
    assert wait[0] == pytest.approx(expected_over / cap * turnover_s(cl, 350.0), rel=1e-12, abs=0.0)
    assert (wait[1:] == 0.0).all()  # the other instances are empty


def test_wait_scales_with_the_residents_output_length():
    """Longer decodes hold memory longer: the same overflow waits in proportion to the mean output
    (the dispatcher's running mean; without one, the request's own output length)."""
    _, cl = make()
    cl.decode_assigned_tokens[:] = cl.decode_capacity_tokens  # every instance full
    r = request(0, 8_000)
    short = DecisionContext(cl, r, 0.0, None, mean_output_tokens=100.0).decode_admission_wait_s
    long = DecisionContext(cl, r, 0.0, None, mean_output_tokens=400.0).decode_admission_wait_s
    own = DecisionContext(cl, r, 0.0, None).decode_admission_wait_s
    assert (short > 0).all()
    np.testing.assert_allclose(long, 4.0 * short, rtol=1e-12)
    np.testing.assert_array_equal(own, short)  # the request's own output is 100 tokens


def test_a_request_larger_than_the_running_capacity_waits_only_for_residents():
    """An instance admits a request alone even over its running capacity: on an empty instance
    it does not wait; on an occupied one it waits for everything there to drain."""
    _, cl = make()
    cap = cl.decode_capacity_tokens
    big = request(0, cap + 1_000)
    cl.decode_assigned_tokens[1] = 10_000
    wait = DecisionContext(cl, big, 0.0, None, mean_output_tokens=OUTPUT).decode_admission_wait_s
    assert wait[0] == 0.0
    assert wait[1] == pytest.approx(10_000 / cap * turnover_s(cl, OUTPUT), rel=1e-12)


def idle(tree: FatTree) -> TelemetryOracle:
    return TelemetryOracle(tree, Fixed(TelemetrySnapshot.idle(tree)))


# (case, the near decode's state: the request fits, it is full, or every decode is full, load
#  weight, policy, whether the pick is the near decode). The near decode (same server as prefill 0) is the
# cheapest transfer by tens of ms on an idle fabric; every other decode is empty.
PICK_CASES = [
    ("fits, small weight: both stay near", "fits", 0.01, "netkv", True),
    ("fits, small weight: admit stays near", "fits", 0.01, "netkv-admit", True),
    ("overflows, small weight: netkv stays near and waits", "full", 0.01, "netkv", True),
    ("overflows, small weight: admit leaves", "full", 0.01, "netkv-admit", False),
    ("fits at a high load, large weight: netkv leaves", "fits", 1.0, "netkv", False),
    ("overflows, no load term: admit leaves", "full", 0.0, "netkv-admit", False),
    ("every decode overflows, the near one most: netkv stays near", "all full", 0.01, "netkv", True),
    ("every decode overflows, the near one most: admit decides as netkv", "all full", 0.01, "netkv-admit", True),
]


@pytest.mark.parametrize("case,near_state,weight,policy,stays_near", PICK_CASES, ids=[c[0] for c in PICK_CASES])
def test_near_decode_is_used_until_its_memory_runs_out(case, near_state, weight, policy, stays_near):
    tree, cl = make()
    cl.prefill_busy_until[1:] = 10.0  # steer the prefill to instance 0 (GPU 0)
    near = [i for i, d in enumerate(cl.decode_ids) if tree.tier(0, int(d)) == 0]
    assert len(near) == 1
    cap = cl.decode_capacity_tokens
    r = request(0, 16_000)
    cl.decode_assigned_tokens[near[0]] = cap - NEED if near_state == "fits" else cap
    if near_state == "all full":  # the wait is unavoidable: not priced, though the near one's is longest
        cl.decode_assigned_tokens[:] = cap
        cl.decode_assigned_tokens[near[0]] = cap + 2 * NEED
    dec = REGISTRY[policy](weight=weight).choose(DecisionContext(cl, r, 0.0, idle(tree), mean_output_tokens=350.0))
    assert dec.prefill == 0
    assert (dec.decode == near[0]) is stays_near


@pytest.mark.parametrize("seed", range(5))
def test_admit_is_netkv_while_memory_is_ample(seed):
    """With every request fitting, the term is zero and netkv-admit decides exactly as netkv."""
    rng = np.random.default_rng(seed)
    tree, cl = make()
    cl.prefill_busy_until[:] = rng.uniform(0, 1.0, cl.prefill_ids.size)
    cl.decode_assigned_tokens[:] = rng.uniform(0, 0.8, cl.decode_ids.size) * cl.decode_capacity_tokens
    util = np.append(rng.uniform(0, 1.0, tree.n_links), 0.0)
    oracle = TelemetryOracle(tree, Fixed(TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))))
    for i in range(20):
        r = request(i, int(rng.integers(1_000, 30_000)))
        ctx = DecisionContext(cl, r, 0.0, oracle, i + 1)
        assert not ctx.decode_admission_wait_s.any()
        a = parse_spec("netkv-admit").make(0.03).choose(ctx)
        b = parse_spec("netkv").make(0.03).choose(DecisionContext(cl, r, 0.0, oracle, i + 1))
        assert (a.prefill, a.decode) == (b.prefill, b.decode)


def test_admit_is_a_netkv_variant_with_its_oracle_and_grid():
    spec = parse_spec("netkv-admit:static")
    policy = spec.make(0.3)
    assert policy.name == "netkv-admit:static" and policy.oracle_kind == "static"
    assert policy.params() == {"load_weight_s": 0.3, "oracle": "static"}
    assert spec.cls.grid == REGISTRY["netkv"].grid and spec.tuned_param == "load_weight_s"


class Recorder(Policy):
    """Decides like round-robin's simplest form (instance 0) and keeps what the context said."""

    name = "test-recorder"
    seen: list[float]

    def choose(self, ctx: DecisionContext) -> Decision:
        self.seen.append(ctx.mean_output_tokens)
        return Decision(0, 0)


def test_dispatcher_passes_the_running_mean_of_decided_output_lengths():
    cfg = build_config(overrides=SMALL)
    tree = FatTree(cfg.topology)
    requests = [request(i, 1_000, output) for i, output in enumerate((100, 300, 50, 550))]
    rec = Recorder()
    rec.seen = []
    dispatcher = Dispatcher(cfg, tree, requests, rec)
    for i, s in enumerate(dispatcher.states):
        dispatcher.decide(s, i, 0.0)
    assert rec.seen == [100.0, 200.0, 150.0, 250.0]
