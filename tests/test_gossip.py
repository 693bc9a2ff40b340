"""Gossip as padded neighbour slots: equal to W @ X, and bit-identical however rows are split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repgossip import gossip
from repgossip.errors import UsageError
from repgossip.gossip import GossipSchedule, Slots, mix_rows
from repgossip.topology import Graph, mixing_matrix


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 12))
    upper = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
    adj = np.triu(np.array(upper, dtype=bool).reshape(n, n), 1)
    return Graph.from_adjacency(adj | adj.T)


def mixed(slots: Slots, x: torch.Tensor, row_blocks: list[np.ndarray]) -> torch.Tensor:
    out = torch.empty_like(x)
    for rows in row_blocks:
        part = torch.empty(len(rows), x.shape[1])
        mix_rows(rows, slots, lambda ids, cols: x[torch.from_numpy(ids), cols], part)
        out[torch.from_numpy(rows)] = part
    return out


@settings(max_examples=60, deadline=None)
@given(
    graphs(),
    st.integers(1, 40),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["metropolis", "max_degree"]),
)
def test_slots_mixing_equals_w_times_x_and_ignores_the_row_split(graph, cols, seed, rule):
    mixing = mixing_matrix(graph, rule)
    slots, n = Slots.from_mixing(mixing), graph.workers
    dense = mixing.dense()
    assert slots.start[0] == 0 and slots.start[-1] == len(slots.index) == len(slots.weight)
    for i in range(n):  # each row: its nonzeros, ascending, self included
        real = np.flatnonzero(dense[i])
        entries = slice(slots.start[i], slots.start[i + 1])
        assert slots.index[entries].tolist() == real.tolist()
        assert slots.weight[entries].tolist() == dense[i, real].tolist()
        assert slots.neighbours(np.array([i])).tolist() == real.tolist()
    x = torch.randn(n, cols, generator=torch.Generator().manual_seed(seed))
    whole = mixed(slots, x, [np.arange(n)])
    torch.testing.assert_close(
        whole.double(), torch.from_numpy(dense) @ x.double(), rtol=1e-5, atol=1e-6
    )
    rng = np.random.default_rng(seed)
    split = np.sort(rng.choice(n, size=rng.integers(0, n + 1), replace=False))
    blocks = [split, np.setdiff1d(np.arange(n), split)]
    assert torch.equal(mixed(slots, x, blocks), whole)  # bitwise: the process layout is invisible


@settings(max_examples=40, deadline=None)
@given(graphs(), st.integers(1, 40), st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_mixing_is_bitwise_the_same_whatever_the_chunk_size(graph, cols, chunk, seed):
    """A chunk of a few elements splits rows into column pieces (as VGG-11's rows are split);
    every element must come out exactly as with one chunk for everything."""
    slots, n = Slots.from_mixing(mixing_matrix(graph)), graph.workers
    x = torch.randn(n, cols, generator=torch.Generator().manual_seed(seed))
    whole = mixed(slots, x, [np.arange(n)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gossip, "CHUNK_ELEMENTS", chunk)
        assert torch.equal(mixed(slots, x, [np.arange(n)]), whole)


def test_slots_hold_each_row_as_long_as_it_is():
    star = Graph.from_pairs(4, [(0, 1), (0, 2), (0, 3)])  # worker 0 has 3 neighbours, others 1
    slots = Slots.from_mixing(mixing_matrix(star))
    assert slots.start.tolist() == [0, 4, 6, 8, 10]
    assert slots.index.tolist() == [0, 1, 2, 3, 0, 1, 0, 2, 0, 3]
    assert slots.counts(np.array([2, 0])).tolist() == [2, 4]
    assert slots.neighbours(np.array([1, 2])).tolist() == [0, 1, 2]


def test_a_hub_of_thousands_mixes_in_memory_linear_in_the_edges():
    hub = Graph.from_pairs(5000, [(0, leaf) for leaf in range(1, 5000)])
    mixing = mixing_matrix(hub)
    slots = Slots.from_mixing(mixing)
    assert len(slots.index) == 5000 + 2 * 4999  # padded rows would hold 5000 x 5000
    x = torch.randn(5000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = torch.empty_like(x)
    mix_rows(np.arange(5000), slots, lambda ids, cols: x[torch.from_numpy(ids), cols], out)
    expected = torch.from_numpy(mixing.sparse() @ x.numpy())
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_schedule_is_static_without_failures_and_seeded_with_them():
    complete = Graph.from_adjacency(~np.eye(6, dtype=bool))
    static = GossipSchedule(complete, "metropolis", seed=1)
    assert static.round_plan(3) is static.round_plan(4) and static.round_plan(3).active.all()
    a, b = (GossipSchedule(complete, "metropolis", 0.5, seed=1) for _ in range(2))
    assert a.round_plan(7).graph == b.round_plan(7).graph != complete


def test_dropped_workers_keep_their_block_and_lose_their_links():
    complete = Graph.from_adjacency(~np.eye(20, dtype=bool))
    schedule = GossipSchedule(complete, "metropolis", worker_dropout_prob=0.3, seed=2)
    plans = [schedule.round_plan(r) for r in range(30)]
    share_out = np.mean([1 - p.active.mean() for p in plans])
    assert 0.15 < share_out < 0.45
    for plan in plans:
        out = ~plan.active
        adj, weights = plan.graph.adjacency(), plan.mixing.dense()
        assert not adj[out].any() and not adj[:, out].any()
        np.testing.assert_array_equal(np.diag(weights)[out], 1.0)
        np.testing.assert_allclose(weights.sum(1), 1, atol=1e-12)


def test_round_plans_of_many_workers_take_memory_linear_in_the_edges():
    # 30,000 workers: a dense N x N float64 matrix would be 7.2 GB; the sparse plan is a few MB.
    import tracemalloc

    from repgossip.topology import build_graph

    tracemalloc.start()
    try:
        graph = build_graph("ring", 30_000)
        schedule = GossipSchedule(graph, "metropolis", 0.3, 0.1, seed=4)
        plans = [schedule.round_plan(r) for r in range(2)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20
    for plan in plans:
        assert (plan.slots.counts(np.arange(30_000)) <= 3).all()
        assert 0 < plan.graph.num_edges < 30_000 * 0.7 * 0.9 + 1000


def test_a_file_w_gossips_as_given_and_is_refused_with_failures_or_dropouts(tmp_path):
    complete = Graph.from_adjacency(~np.eye(5, dtype=bool))
    w = 0.6 * np.eye(5) + 0.1 * (~np.eye(5, dtype=bool))  # not what either rule builds
    path = str(tmp_path / "w.npy")
    np.save(path, w)
    plan = GossipSchedule(complete, path, seed=1).round_plan(2)
    np.testing.assert_array_equal(plan.mixing.dense(), w)
    assert plan.graph == complete and plan.active.all()
    assert plan.slots.weight.tolist() == [x for row in w for x in row]
    for probs in ((0.1, 0.0), (0.0, 0.2), (0.5, 0.5)):
        with pytest.raises(
            UsageError, match=r"those need a rule \(metropolis, max_degree, uniform_row\)"
        ) as e:
            GossipSchedule(complete, path, *probs)
        assert "\n" not in str(e.value) and path in str(e.value)
        assert GossipSchedule(complete, "max_degree", *probs).round_plan(0).graph.workers == 5
    with pytest.raises(UsageError, match=r"unknown mixing rule 'uniform'"):
        GossipSchedule(complete, "uniform", 0.1)  # an unknown rule is named as such, not as a file


@settings(max_examples=40, deadline=None)
@given(graphs(), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_masked_mix_averages_each_entry_over_the_neighbours_that_hold_it(graph, cols, seed):
    """Against the definition, entry by entry: a held entry becomes the mean over the worker and
    its neighbours holding it; an entry the worker does not hold stays as it was."""
    gen = torch.Generator().manual_seed(seed)
    n = graph.workers
    x = torch.randn(n, cols, generator=gen, dtype=torch.float64)
    mask = (torch.rand(n, cols, generator=gen) < 0.6).double()
    mixing = mixing_matrix(graph, "metropolis")
    plan = gossip.RoundPlan(graph, mixing, Slots.from_mixing(mixing), np.ones(n, dtype=bool))
    before = torch.cat([x * mask, mask], dim=1).clone()
    out = x.clone()
    gossip.masked_mix(np.arange(n), plan, lambda ids, c=slice(None): before[ids, c], out, mask)
    adjacency = graph.adjacency()
    for i in range(n):
        group = [i, *np.flatnonzero(adjacency[i])]
        for c in range(cols):
            holders = [j for j in group if mask[j, c] > 0]
            expected = sum(x[j, c] for j in holders) / len(holders) if mask[i, c] > 0 else x[i, c]
            assert float(out[i, c]) == pytest.approx(float(expected), rel=1e-12)
    nnz = mask.sum(1).numpy()
    assert gossip.masked_bytes(nnz, cols, graph.degrees) == int(
        sum((4 * nnz[i] + -(-cols // 8)) * graph.degrees[i] for i in range(n))
    )
