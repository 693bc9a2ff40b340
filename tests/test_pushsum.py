"""Push-sum gossip (stochastic gradient push) on directed and time-varying graphs: the step keeps
mass and weight, drives the de-biased values to the average, reduces to plain gossip where the
weights stay 1; DePRL and D-PSGD run on such graphs through the CLI, resume exactly, and give the
same numbers in one process and on two ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repgossip.cli import main
from repgossip.engines.base import Engine
from repgossip.gossip import GossipSchedule, RoundPlan, Slots, mix_rows
from repgossip.population import PUSH_WEIGHT
from repgossip.runfolder import read_checkpoint
from repgossip.topology import Graph, build_graph, mixing_matrix, spectral_gap

from launch import assert_same_numbers, summary, torchrun

SYNTHETIC = ["dataset=synthetic", "workers=8", "samples_per_worker=40", "lr_decay=0.5"]
# an irregular strongly connected digraph: P is not doubly stochastic, so the weights move
IRREGULAR = "0 1\n1 2\n2 3\n3 4\n4 5\n5 0\n0 3\n0 2\n1 4\n"


def plan_of(graph: Graph) -> RoundPlan:
    return GossipSchedule(graph, "metropolis").round_plan(0)


def step(plan: RoundPlan, z: torch.Tensor, w: torch.Tensor) -> None:
    """One push-sum step of the one-process engine on every worker, in place."""
    Engine(len(z)).push_sum(z, w, plan)


@st.composite
def strongly_connected(draw: st.DrawFn) -> Graph:
    """A directed cycle through a random order of the nodes plus random extra links."""
    n = draw(st.integers(2, 9))
    order = draw(st.permutations(range(n)))
    cycle = [(order[k], order[(k + 1) % n]) for k in range(n)]
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=12))
    return Graph.from_pairs(n, cycle + extra, directed=True)


def plain_gossip(plan: RoundPlan, z: torch.Tensor) -> torch.Tensor:
    """What gossip without weights makes of `z` (not changed)."""
    out = torch.empty_like(z)
    mix_rows(np.arange(len(z)), plan.slots, lambda ids, cols: z[torch.from_numpy(ids), cols], out)
    return out


def exact_row_sums(slots: Slots, n: int) -> bool:
    """Whether every row's float32 weights add up to exactly 1 in the mixing order."""
    ones = torch.ones(n, 1)
    out = torch.empty(n, 1)
    mix_rows(np.arange(n), slots, lambda ids, cols: ones[torch.from_numpy(ids), cols], out)
    return bool((out == 1).all())


@st.composite
def undirected(draw: st.DrawFn) -> Graph:
    n = draw(st.integers(1, 10))
    bits = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
    adj = np.triu(np.array(bits, dtype=bool).reshape(n, n), 1)
    return Graph.from_adjacency(adj | adj.T)


# ---------------------------------------------------------------- one step


@settings(max_examples=60, deadline=None)
@given(undirected(), st.sampled_from(["metropolis", "max_degree"]), st.integers(0, 2**31 - 1))
def test_on_a_symmetric_w_push_sum_is_plain_gossip(graph: Graph, rule: str, seed: int) -> None:
    """W doubly stochastic: every weight stays 1 and z mixes as plain gossip does, bit for bit
    where W's float32 weights sum to exactly 1 in each row (ring, torus, complete, ...), within
    float32 round-off of 1 elsewhere."""
    plan = GossipSchedule(graph, rule).round_plan(0)
    n = graph.workers
    z = torch.randn(n, 7, generator=torch.Generator().manual_seed(seed))
    plain = plain_gossip(plan, z)
    w = torch.ones(n, 1)
    step(plan, z, w)
    if exact_row_sums(plan.slots, n):
        assert (w == 1).all() and torch.equal(z, plain)
    else:
        torch.testing.assert_close(w, torch.ones(n, 1), rtol=0, atol=4e-7)
        torch.testing.assert_close(z, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["ring", "torus", "exponential", "complete"])
def test_named_undirected_graphs_keep_weights_exactly_one(name: str) -> None:
    plan = plan_of(build_graph(name, 16))
    z = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    plain = plain_gossip(plan, z)
    w = torch.ones(16, 1)
    step(plan, z, w)
    assert (w == 1).all() and torch.equal(z, plain)


@pytest.mark.parametrize("graph_file", [False, True])
def test_a_step_keeps_the_total_weight_and_the_mass(tmp_path: Path, graph_file: bool) -> None:
    if graph_file:
        (tmp_path / "g.txt").write_text(IRREGULAR)
        graph = build_graph(str(tmp_path / "g.txt"), 6, directed=True)
    else:
        graph = build_graph("directed_ring", 7)
    n, plan = graph.workers, plan_of(graph)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(n, 4, dtype=torch.float64, generator=gen)
    w = torch.rand(n, 1, dtype=torch.float64, generator=gen) + 0.5
    mass, total = (z * w).sum(0), float(w.sum())
    for _ in range(5):
        step(plan, z, w)
        torch.testing.assert_close((z * w).sum(0), mass, rtol=1e-12, atol=1e-12)
        assert float(w.sum()) == pytest.approx(total, rel=1e-12)
    w1 = torch.ones(n, 1, dtype=torch.float64)
    z1 = torch.zeros(n, 1, dtype=torch.float64)
    for _ in range(20):
        step(plan, z1, w1)
        assert float(w1.sum()) == pytest.approx(n, rel=1e-12)
    assert graph_file == bool((w1 != 1).any())  # weights move only where P is not doubly stoch.


def test_float32_weights_on_a_directed_ring_sum_to_n() -> None:
    plan = plan_of(build_graph("directed_ring", 12))
    z = torch.randn(12, 3, generator=torch.Generator().manual_seed(2))
    w = torch.ones(12, 1)
    mass = (z.double() * w.double()).sum(0)
    for _ in range(10):
        step(plan, z, w)
    assert float(w.double().sum()) == pytest.approx(12, rel=1e-6)
    torch.testing.assert_close((z.double() * w.double()).sum(0), mass, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- consensus


def _converges(schedule: GossipSchedule, gap: float, z0: torch.Tensor) -> None:
    """Push-sum steps from weights 1 bring every z_i to the average of the initial values."""
    z, w = z0.clone(), torch.ones(len(z0), 1, dtype=torch.float64)
    rounds = int(min(20_000, np.ceil(40.0 / max(gap, 1e-4))))
    for t in range(rounds):
        step(schedule.round_plan(t), z, w)
    target = z0.mean(0, keepdim=True).expand_as(z)
    torch.testing.assert_close(z, target, rtol=0, atol=1e-8 * (1 + float(z0.abs().max())))


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["directed_ring", "directed_exponential", "one_peer_exponential"]),
    st.integers(2, 12),
    st.lists(st.floats(-1e3, 1e3), min_size=12 * 3, max_size=12 * 3),
)
def test_push_sum_reaches_the_average_on_named_directed_graphs(name, n, values) -> None:
    graph = build_graph(name, n)
    z0 = torch.tensor(values[: n * 3], dtype=torch.float64).view(n, 3)
    gap = spectral_gap(mixing_matrix(graph))
    assert gap is not None and gap > 0
    _converges(GossipSchedule(graph, "metropolis"), gap, z0)


@settings(max_examples=30, deadline=None)
@given(strongly_connected(), st.integers(0, 2**31 - 1))
def test_push_sum_reaches_the_average_on_irregular_digraphs(graph: Graph, seed: int) -> None:
    """Here P is only column-stochastic: plain mixing would converge to a weighted average, the
    de-biased values to the true one."""
    z0 = torch.randn(
        graph.workers, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    gap = spectral_gap(mixing_matrix(graph))
    assert gap is not None and gap > 0
    _converges(GossipSchedule(graph, "metropolis"), gap, z0)


def test_with_failing_links_and_dropouts_mass_is_kept_and_consensus_reached() -> None:
    schedule = GossipSchedule(
        build_graph("directed_exponential", 10), "metropolis", 0.3, 0.2, seed=3
    )
    z0 = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z, w = z0.clone(), torch.ones(10, 1, dtype=torch.float64)
    for t in range(300):
        plan = schedule.round_plan(t)
        before = z[~torch.from_numpy(plan.active)].clone()
        step(plan, z, w)
        torch.testing.assert_close(z[~torch.from_numpy(plan.active)], before)  # absent: kept
        torch.testing.assert_close((z * w).sum(0), z0.sum(0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z, z0.mean(0, keepdim=True).expand_as(z), rtol=0, atol=1e-8)


def test_one_peer_exponential_plans_change_each_round_with_period_ceil_log2_n() -> None:
    schedule = GossipSchedule(build_graph("one_peer_exponential", 10), "metropolis")
    plans = [schedule.round_plan(t) for t in range(12)]
    assert all(p.push_sum and (p.graph.degrees == 1).all() for p in plans)
    for t in range(8):
        assert plans[t].graph != plans[t + 1].graph and plans[t].graph == plans[t + 4].graph
        assert plans[t] is plans[t + 4]  # built once per period


def test_one_peer_exponential_averages_exactly_over_a_period_for_a_power_of_two() -> None:
    schedule = GossipSchedule(build_graph("one_peer_exponential", 8), "metropolis")
    z0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    z, w = z0.clone(), torch.ones(8, 1, dtype=torch.float64)
    for t in range(3):
        step(schedule.round_plan(t), z, w)
    torch.testing.assert_close(z, z0.mean(0, keepdim=True).expand_as(z), rtol=0, atol=1e-14)


# ---------------------------------------------------------------- runs through the CLI


def run(out: Path, *sets: str, resume: bool = False) -> int:
    argv = ["run", "--quiet", "--set", *SYNTHETIC, *sets, "--out", str(out)]
    return main(argv + (["--resume"] if resume else []))


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("topology", ["directed_ring", "one_peer_exponential"])
@pytest.mark.parametrize("algorithm", ["deprl", "dpsgd"])
def test_deprl_and_dpsgd_run_on_directed_graphs(tmp_path: Path, topology: str, algorithm: str):
    out = tmp_path / "run"
    assert run(out, f"algorithm={algorithm}", f"topology={topology}", "rounds=8") == 0
    history = records(out)
    assert all(np.isfinite(v) for r in history for v in r.values() if isinstance(v, float))
    consensus = [r["consensus_dist"] for r in history]
    peak = int(np.argmax(consensus))
    assert peak < 4 and consensus[-1] < consensus[peak] / 2
    assert all(b <= a for a, b in zip(consensus[peak:], consensus[peak + 1 :], strict=False))
    params = json.loads((out / "summary.json").read_text())["params_shared"]
    links = 8  # the directed ring's, and the one-peer graph's in every round
    assert history[-1]["bytes_sent"] == 8 * links * (params + 1) * 4


def test_push_sum_beats_no_gossip_on_consensus(tmp_path: Path) -> None:
    assert run(tmp_path / "p", "topology=directed_exponential", "rounds=4") == 0
    assert run(tmp_path / "l", "algorithm=local", "topology=directed_exponential", "rounds=4") == 0
    assert (
        records(tmp_path / "p")[-1]["consensus_dist"]
        < records(tmp_path / "l")[-1]["consensus_dist"] / 10
    )


def test_directed_edge_files_run_and_a_one_way_path_is_refused(tmp_path, capsys) -> None:
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text(IRREGULAR)
    bad.write_text("0 1\n1 2\n2 3\n3 4\n4 5\n")
    sets = ("workers=6", "rounds=3", "directed=true")
    assert run(tmp_path / "ok", f"topology={good}", *sets) == 0
    assert records(tmp_path / "ok")[-1]["bytes_sent"] > 0
    capsys.readouterr()
    assert run(tmp_path / "no", f"topology={bad}", *sets) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not strongly connected" in err
    assert run(tmp_path / "ring", "topology=ring", *sets) == 2
    assert "'ring' is undirected" in capsys.readouterr().err


def test_refusals_of_what_push_sum_does_not_cover(tmp_path, capsys) -> None:
    sets = ("topology=directed_ring", "rounds=1")
    assert run(tmp_path / "a", "algorithm=dispfl", *sets) == 2
    err = capsys.readouterr().err
    assert "own communicate()" in err and len(err.strip().splitlines()) == 1
    assert run(tmp_path / "b", "mixing=max_degree", *sets) == 2
    assert "leave mixing at its default" in capsys.readouterr().err


@pytest.mark.parametrize("topology", ["one_peer_exponential", "file"])
def test_resume_on_a_directed_graph_is_exact(tmp_path: Path, topology: str) -> None:
    if topology == "file":
        (tmp_path / "g.txt").write_text(IRREGULAR)
        sets = [f"topology={tmp_path / 'g.txt'}", "directed=true", "workers=6"]
    else:
        sets = [f"topology={topology}"]
    sets += ["checkpoint_every=1", "algorithm=dpsgd"]
    assert run(tmp_path / "whole", *sets, "rounds=3") == 0
    assert run(tmp_path / "split", *sets, "rounds=1") == 0
    assert run(tmp_path / "split", *sets, "rounds=3", resume=True) == 0
    assert summary(tmp_path / "split") == summary(tmp_path / "whole")
    weights = read_checkpoint(tmp_path / "whole")["rows"][PUSH_WEIGHT]
    assert weights.shape == (6 if topology == "file" else 8, 1)
    assert (topology == "file") == bool((weights != 1).any())


def test_undirected_checkpoints_hold_no_weights(tmp_path: Path) -> None:
    assert run(tmp_path / "u", "rounds=1") == 0
    assert PUSH_WEIGHT not in read_checkpoint(tmp_path / "u")["rows"]


# ---------------------------------------------------------------- two ranks


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["directed_exponential", "file"])
def test_two_ranks_give_the_numbers_of_one_process_on_a_directed_graph(tmp_path, topology):
    sets = ["dataset=synthetic", "workers=6", "samples_per_worker=40", "rounds=4",
            "algorithm=deprl", "checkpoint_every=2"]  # fmt: skip
    if topology == "file":
        (tmp_path / "g.txt").write_text(IRREGULAR)
        sets += [f"topology={tmp_path / 'g.txt'}", "directed=true"]
    else:
        sets += [f"topology={topology}"]
    done = torchrun(2, tmp_path / "dist", *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(["run", "--quiet", "--set", *sets, "--out", str(tmp_path / "sim")]) == 0
    assert_same_numbers(summary(tmp_path / "dist"), summary(tmp_path / "sim"))
    dist_rows = read_checkpoint(tmp_path / "dist")["rows"][PUSH_WEIGHT]
    assert torch.equal(dist_rows, read_checkpoint(tmp_path / "sim")["rows"][PUSH_WEIGHT])
