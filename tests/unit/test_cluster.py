"""Cluster mode's pure parts: the --cluster option, the pods-per-server placement, the state it
records and what teardown asks each remote server to remove (no ssh, no Mininet run here)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from topology import cleanup, cluster
from topology.model import FatTree, FatTreeConfig, switch_ports

SMALL = FatTreeConfig(pods=2, tors_per_pod=1, servers_per_tor=2, gpus_per_server=2, aggs_per_pod=2, cores=2)


@pytest.mark.parametrize("text, problem", [
    ("gpu1,gpu2", "include localhost"),
    ("localhost", "at least two servers"),
    ("localhost,gpu1,gpu1", "named twice: gpu1"),
    ("localhost,-oProxyCommand=x", "not a host name"),
])
def test_bad_server_lists_are_refused_naming_the_problem(text, problem):
    with pytest.raises(ValueError, match=problem):
        cluster.parse_servers(text)


def test_server_list_keeps_the_order_given():
    assert cluster.parse_servers(" localhost, gpu-2 ,gpu-3") == ("localhost", "gpu-2", "gpu-3")


def test_pods_stay_whole_on_one_server_and_cores_stay_here():
    tree = FatTree()  # 4 pods
    place = cluster.placement(tree, ("localhost", "b", "c"))
    for name, server in place.items():
        pod = cluster.pod_of(name)
        if pod is None:
            assert server == "localhost", name  # a core switch
        else:
            assert server == {0: "localhost", 1: "b", 2: "c", 3: "localhost"}[pod], name
    assert set(place) == set(tree.switch_names()) | set(tree.gpu_names)


def test_only_aggregation_core_links_cross_servers():
    tree = FatTree()
    place = cluster.placement(tree, ("localhost", "b"))
    roles = tree.switch_names()
    crossing = {(sw, nb) for sw in roles for nb in switch_ports(tree, sw).values()
                if nb in place and place[sw] != place[nb]}
    assert crossing
    assert {frozenset((roles[a], roles.get(b))) for a, b in crossing} == {frozenset(("agg", "core"))}


def test_spec_survives_the_state_file(tmp_path):
    spec = cluster.ClusterSpec(("localhost", "b"), tmp_path / "cfg", (("b", "10.0.0.2"), ("localhost", "127.0.0.1")))
    assert cluster.ClusterSpec.from_dict(spec.to_dict()) == spec


def test_teardown_asks_each_remote_server_for_its_own_nodes(monkeypatch):
    tree = FatTree(SMALL)
    place = cluster.placement(tree, ("localhost", "peer"))
    state = {"topology": SMALL.to_dict(),
             "cluster": {"servers": ["localhost", "peer"], "ssh_config": None, "placement": place},
             "host_pids": {h: 1000 + i for i, h in enumerate(tree.gpu_names)}, "switch_pids": {"p1t0": 42, "c0": 43}}
    asked = {}

    def fake_remove(spec, plan):
        asked.update(plan)
        return {s: [] for s in spec.remote}

    monkeypatch.setattr(cluster, "remove_remote", fake_remove)
    cleanup.remove_remote(state)
    bridges, links, pids = asked["peer"]
    assert sorted(bridges) == sorted(b for b in tree.switch_names() if b.startswith("p1"))
    assert all(link.split("-eth")[0] in bridges for link in links)
    assert 42 in pids and 43 not in pids
    assert sorted(p for p in pids if p != 42) == [state["host_pids"][h] for h in tree.gpu_names if h.startswith("p1")]


def test_teardown_reports_what_a_remote_server_keeps(monkeypatch):
    tree = FatTree(SMALL)
    state = {"topology": SMALL.to_dict(), "cluster": {"servers": ["localhost", "peer"], "ssh_config": None,
                                                      "placement": cluster.placement(tree, ("localhost", "peer"))}}
    monkeypatch.setattr(cluster, "remove_remote", lambda spec, plan: {"peer": ["p1t0"]})
    with pytest.raises(cleanup.CleanupError, match="peer: p1t0"):
        cleanup.remove_remote(state)


def test_remote_cleanup_command_runs_and_lists_nothing_when_nothing_is_there():
    cmd = cluster.remote_cleanup_command([], ["nkvnope-eth1"], [])
    done = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=False)
    assert done.stdout.split("netkv-left", 1)[1].split() == []


def test_unknown_server_is_refused_naming_it(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host ghost\n  HostName no-such-host.invalid\n")
    with pytest.raises(cluster.ClusterError, match="'ghost'"):
        cluster.check_servers(("localhost", "ghost"), cfg)


def test_cli_refuses_a_bad_cluster_before_anything_else():
    for args, message in ((["--cluster", "gpu1,gpu2"], "include localhost"),
                          (["--ssh-config", "/nonexistent"], "--ssh-config applies to --cluster")):
        done = subprocess.run([sys.executable, "-m", "scripts.netkv", "fabric", "up", *args], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 2 and message in done.stderr, done.stderr

