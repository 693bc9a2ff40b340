"""Tests for repgossip.topology: graphs, mixing matrices, spectral gap, link-failure schedule."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repgossip.topology as topology
from repgossip.errors import UsageError
from repgossip.topology import (
    DIRECTED_TOPOLOGIES,
    MIXING_RULES,
    TOPOLOGIES,
    Graph,
    build_graph,
    builders,
    check_mixing_rule,
    describe,
    drop_links,
    graph_from_object,
    is_connected,
    is_doubly_stochastic,
    mixing_matrix,
    round_graph,
    spectral_gap,
    spectrum,
)


def _degrees(graph: Graph) -> np.ndarray:
    return graph.adjacency().sum(axis=1)


def _assert_valid_graph(graph: Graph, n: int) -> None:
    adj = graph.adjacency()
    assert adj.shape == (n, n)
    assert np.array_equal(adj, adj.T)
    assert not adj.diagonal().any()
    e = graph.edges
    assert e.dtype == np.int64 and e.shape == (graph.num_edges, 2)
    assert (e[:, 0] < e[:, 1]).all()
    keys = e[:, 0] * n + e[:, 1]
    assert (np.diff(keys) > 0).all()  # sorted, each edge once
    assert np.array_equal(graph.degrees, adj.sum(axis=1))


@st.composite
def symmetric_graphs(draw: st.DrawFn) -> Graph:
    n = draw(st.integers(min_value=1, max_value=40))
    pairs = n * (n - 1) // 2
    bits = draw(st.lists(st.booleans(), min_size=pairs, max_size=pairs))
    adj = np.zeros((n, n), dtype=bool)
    adj[np.triu_indices(n, k=1)] = bits
    return Graph.from_adjacency(adj | adj.T)


def _dense_gap(graph: Graph, rule: str = "metropolis") -> float:
    if graph.workers == 1:
        return 1.0
    moduli = np.sort(np.abs(np.linalg.eigvalsh(mixing_matrix(graph, rule).dense())))
    return float(1.0 - moduli[-2])


# ---------------------------------------------------------------- mixing matrices, property-based

# uniform_row (the authors' weights) is row-stochastic only: see test_uniform_row_*.
DOUBLY_STOCHASTIC_RULES = [rule for rule in MIXING_RULES.names() if rule != "uniform_row"]


@settings(max_examples=150, deadline=None)
@given(graph=symmetric_graphs(), rule=st.sampled_from(DOUBLY_STOCHASTIC_RULES))
def test_mixing_is_symmetric_doubly_stochastic(graph: Graph, rule: str) -> None:
    mixing = mixing_matrix(graph, rule)
    assert is_doubly_stochastic(mixing)
    W, adj = mixing.dense(), graph.adjacency()
    assert W.dtype == np.float64
    assert is_doubly_stochastic(W)
    assert np.array_equal(W, W.T)
    assert (W >= 0).all()
    assert (W.diagonal() > 0).all()
    off = ~np.eye(len(W), dtype=bool)
    assert np.array_equal(W[off] > 0, adj[off])  # weights only on edges
    gap = spectral_gap(mixing)
    assert 0.0 <= gap <= 1.0
    if is_connected(graph):
        assert gap > 0.0
    else:
        assert gap == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n", range(3, 51))
def test_ring_metropolis_spectral_gap_closed_form(n: int) -> None:
    # Ring with N >= 3 is 2-regular, so W = circulant(1/3, 1/3, 1/3) with eigenvalues
    # 1/3 + 2/3 cos(2 pi k / N). The SLEM is k=1 for every N >= 3 (for even N the most negative one,
    # k = N/2, is -1/3, never larger in modulus). N = 2 is one edge with W = 11^T/2: not covered.
    W = mixing_matrix(build_graph("ring", n))
    expected = 1.0 - (1.0 / 3.0 + 2.0 / 3.0 * math.cos(2.0 * math.pi / n))
    assert spectral_gap(W) == pytest.approx(expected, abs=1e-12)
    assert _dense_gap(W.graph) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [10_000, 100_003])
def test_ring_spectral_gap_at_scale_is_exact(n: int) -> None:
    # ~1e-7 to ~1e-9: beyond any iterative solver, exact from the ring's symmetry.
    expected = 2.0 / 3.0 * (1.0 - math.cos(2.0 * math.pi / n))
    assert spectral_gap(mixing_matrix(build_graph("ring", n))) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["ring", "torus", "exponential", "complete"])
@pytest.mark.parametrize("n", [2, 3, 4, 6, 8, 9, 12, 16, 20, 31, 36])
@pytest.mark.parametrize("rule", MIXING_RULES.names())
def test_symmetric_topologies_gap_from_fourier_equals_dense(name: str, n: int, rule: str) -> None:
    if name == "torus" and n in (2, 3, 31):
        return  # prime: no torus
    graph = build_graph(name, n)
    assert graph.cayley is not None
    assert spectral_gap(mixing_matrix(graph, rule)) == pytest.approx(
        _dense_gap(graph, rule), abs=1e-12
    )


@pytest.mark.parametrize("name", ["erdos_renyi", "star"])
def test_large_irregular_graphs_gap_by_lanczos_equals_dense(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = build_graph(name, 300, edge_prob=0.05, seed=1)
    dense = _dense_gap(graph)
    monkeypatch.setattr(spectrum, "DENSE_SPECTRUM_LIMIT", 100)
    assert spectral_gap(mixing_matrix(graph)) == pytest.approx(dense, abs=1e-9)


def test_lanczos_that_does_not_converge_reports_none(monkeypatch: pytest.MonkeyPatch) -> None:
    # a path graph of 3,000 (an edge list: no symmetry to use) has a gap of ~1e-6
    path = Graph.from_pairs(3000, np.stack([np.arange(2999), np.arange(1, 3000)], axis=1))
    monkeypatch.setattr(spectrum, "DENSE_SPECTRUM_LIMIT", 100)
    assert spectral_gap(mixing_matrix(path)) is None


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33])
def test_complete_metropolis_is_exact_averaging(n: int) -> None:
    W = mixing_matrix(build_graph("complete", n), "metropolis")
    np.testing.assert_allclose(W.dense(), np.full((n, n), 1.0 / n), rtol=0, atol=1e-15)
    assert spectral_gap(W) == pytest.approx(1.0, abs=1e-12)


def test_max_degree_rule_uses_global_max_degree() -> None:
    W = mixing_matrix(build_graph("star", 5), "max_degree").dense()
    assert W[1, 0] == pytest.approx(1.0 / 5.0)
    assert W[1, 1] == pytest.approx(4.0 / 5.0)
    assert W[0, 0] == pytest.approx(1.0 / 5.0)
    assert is_doubly_stochastic(W)


def test_single_worker_and_empty_graph() -> None:
    graph = build_graph("ring", 1)
    assert graph.workers == 1 and graph.num_edges == 0
    for rule in MIXING_RULES:
        assert np.array_equal(mixing_matrix(graph, rule).dense(), np.ones((1, 1)))
        assert spectral_gap(mixing_matrix(graph, rule)) == 1.0
    empty = Graph.from_adjacency(np.zeros((3, 3), dtype=bool))
    assert np.array_equal(mixing_matrix(empty).dense(), np.eye(3))
    assert spectral_gap(mixing_matrix(empty)) == 0.0


def test_unknown_mixing_rule() -> None:
    with pytest.raises(UsageError, match=r"'uniform'.*metropolis, max_degree"):
        mixing_matrix(build_graph("ring", 4), "uniform")


def test_graph_rejects_asymmetric_or_non_square_adjacency() -> None:
    adj = np.zeros((3, 3), dtype=bool)
    adj[0, 1] = True
    with pytest.raises(UsageError, match="symmetric"):
        Graph.from_adjacency(adj)
    with pytest.raises(UsageError, match="square"):
        Graph.from_adjacency(np.zeros((2, 3), dtype=bool))


def test_graph_from_pairs_normalises() -> None:
    graph = Graph.from_pairs(4, [(2, 1), (1, 2), (3, 3), (0, 3), (0, 3)])
    assert graph.edges.tolist() == [[0, 3], [1, 2]]
    assert graph == Graph.from_adjacency(graph.adjacency())
    assert graph != Graph.from_pairs(5, [(0, 3), (1, 2)])


def test_is_doubly_stochastic_rejects() -> None:
    assert is_doubly_stochastic(np.full((3, 3), 1 / 3))
    assert not is_doubly_stochastic(np.array([[0.5, 0.5], [0.2, 0.8]]))  # row- not col-stochastic
    assert not is_doubly_stochastic(np.array([[1.5, -0.5], [-0.5, 1.5]]))  # negative entries
    assert not is_doubly_stochastic(np.ones((2, 3)) / 3)
    assert not is_doubly_stochastic(np.array([[np.nan, 1.0], [1.0, 0.0]]))


# ---------------------------------------------------------------- named topologies


UNDIRECTED = [name for name in TOPOLOGIES.names() if name not in DIRECTED_TOPOLOGIES]


@pytest.mark.parametrize("name", UNDIRECTED)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 9, 12, 16, 25, 30])
def test_named_topologies_are_valid_and_connected(name: str, n: int) -> None:
    graph = build_graph(name, n)
    _assert_valid_graph(graph, n)
    assert is_connected(graph)
    for rule in DOUBLY_STOCHASTIC_RULES:
        assert is_doubly_stochastic(mixing_matrix(graph, rule))
        assert is_doubly_stochastic(mixing_matrix(graph, rule).dense())


@pytest.mark.parametrize("n", [3, 5, 10, 37])
def test_ring_degree(n: int) -> None:
    graph = build_graph("ring", n)
    assert (_degrees(graph) == 2).all()
    assert graph.adjacency()[0, 1] and graph.adjacency()[0, n - 1]
    assert build_graph("ring", 2).num_edges == 1


@pytest.mark.parametrize(("n", "shape"), [(9, (3, 3)), (12, (3, 4)), (16, (4, 4)), (20, (4, 5))])
def test_torus_is_four_regular_when_both_sides_at_least_three(n: int, shape: tuple) -> None:
    graph = build_graph("torus", n)
    adj = graph.adjacency()
    assert (_degrees(graph) == 4).all()
    r, c = shape
    assert graph.num_edges == 2 * r * c
    # node (0, 0) is linked to (0, 1), (0, c-1), (1, 0), (r-1, 0)
    assert set(np.flatnonzero(adj[0])) == {1, c - 1, c, (r - 1) * c}


def test_torus_small_sides_dedupe() -> None:
    assert (_degrees(build_graph("torus", 4)) == 2).all()  # 2x2: a 4-cycle
    assert (
        _degrees(build_graph("torus", 8)) == 3
    ).all()  # 2x4: wrap in the 2-row dimension dedupes


@pytest.mark.parametrize(("n", "suggest"), [(5, "4 or 6"), (13, "12 or 14"), (23, "22 or 24")])
def test_torus_prime_error(n: int, suggest: str) -> None:
    with pytest.raises(UsageError, match=rf"{n} is prime; try {suggest}") as exc:
        build_graph("torus", n)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("n", [2, 5, 8, 10, 16, 31])
def test_exponential_neighbours(n: int) -> None:
    adj = build_graph("exponential", n).adjacency()
    offsets = {2**j for j in range(n) if 2**j < n}
    for i in range(n):
        expected = {(i + o) % n for o in offsets} | {(i - o) % n for o in offsets}
        assert set(np.flatnonzero(adj[i])) == expected - {i}
    if n == 8:
        assert (adj.sum(axis=1) == 5).all()  # offsets 1, 2, 4 and -1, -2 (-4 == +4 mod 8)


def test_star_degrees() -> None:
    deg = _degrees(build_graph("star", 7))
    assert deg[0] == 6
    assert (deg[1:] == 1).all()


def test_complete_degrees() -> None:
    assert (_degrees(build_graph("complete", 6)) == 5).all()


# ---------------------------------------------------------------- erdos_renyi


def test_erdos_renyi_deterministic_per_seed() -> None:
    a = build_graph("erdos_renyi", 30, edge_prob=0.2, seed=7)
    b = build_graph("erdos_renyi", 30, edge_prob=0.2, seed=7)
    c = build_graph("erdos_renyi", 30, edge_prob=0.2, seed=8)
    assert a == b
    assert a != c
    _assert_valid_graph(a, 30)
    assert is_connected(a)


def test_erdos_renyi_edge_prob_one_is_complete() -> None:
    assert build_graph("erdos_renyi", 6, edge_prob=1.0) == build_graph("complete", 6)


def test_erdos_renyi_draws_blockwise_as_one_uniform_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    # Drawing a few rows at a time (bounded memory at any N) samples the same graph.
    whole = build_graph("erdos_renyi", 50, edge_prob=0.1, seed=3)
    monkeypatch.setattr(builders, "_ER_DRAW_ELEMENTS", 120)
    assert build_graph("erdos_renyi", 50, edge_prob=0.1, seed=3) == whole


def test_erdos_renyi_too_sparse_raises() -> None:
    with pytest.raises(UsageError, match=r"edge_prob=0\.001 is too low for 40 workers") as exc:
        build_graph("erdos_renyi", 40, edge_prob=0.001)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan")])
def test_erdos_renyi_bad_edge_prob(p: float) -> None:
    with pytest.raises(UsageError, match=r"edge_prob"):
        build_graph("erdos_renyi", 10, edge_prob=p)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("workers", [0, -3, 2.5, True])
def test_bad_workers(workers: object) -> None:
    with pytest.raises(UsageError, match="workers"):
        build_graph("ring", workers)  # type: ignore[arg-type]


def test_unknown_topology_lists_valid_names(tmp_path) -> None:
    with pytest.raises(UsageError) as exc:
        build_graph("rng", 4)
    msg = str(exc.value)
    assert "'rng'" in msg and "no such file" in msg and "edge-list file" in msg
    assert all(name in msg for name in TOPOLOGIES)
    assert "\n" not in msg
    with pytest.raises(UsageError, match="no such file"):
        build_graph(str(tmp_path / "missing.txt"), 4)
    with pytest.raises(UsageError, match="no such file"):
        build_graph(str(tmp_path), 4)  # a directory is not an edge-list file


# ---------------------------------------------------------------- edge-list files


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "graph.txt"
    path.write_text(text)
    return str(path)


def test_edge_list_good_file(tmp_path) -> None:
    path = _write(
        tmp_path,
        "# a path 0-1-2-3 plus a chord\n\n0 1\n1,2\n  2 ,  3\n3\t0  # inline comment\n1 0\n",
    )
    graph = build_graph(path, 4)
    _assert_valid_graph(graph, 4)
    assert graph == build_graph("ring", 4)
    assert graph.cayley is None  # an edge list claims no symmetry
    assert describe(path, 4)["edges"] == 4


@pytest.mark.parametrize(
    ("text", "lineno", "what"),
    [
        ("0 1\n1 x\n", 2, "two integer node ids"),
        ("0 1\n1 2 3\n", 2, "two integer node ids"),
        ("0 1\n\n# c\n2\n", 4, "two integer node ids"),
        ("0 1\n1.0 2\n", 2, "two integer node ids"),
        ("0 1\n1 -2\n", 2, ">= 0"),
        ("0 1\n1 1\n1 2\n", 2, "self-loop"),
    ],
)
def test_edge_list_bad_lines(tmp_path, text: str, lineno: int, what: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UsageError, match=what) as exc:
        build_graph(path, 3)
    msg = str(exc.value)
    assert path in msg and f"line {lineno}" in msg and "\n" not in msg


@pytest.mark.parametrize(("workers", "nodes"), [(4, 3), (2, 3)])
def test_edge_list_wrong_node_count(tmp_path, workers: int, nodes: int) -> None:
    path = _write(tmp_path, "0 1\n1 2\n")
    with pytest.raises(UsageError, match=rf"has {nodes} nodes but workers={workers}"):
        build_graph(path, workers)


def test_edge_list_empty_file(tmp_path) -> None:
    path = _write(tmp_path, "# nothing\n")
    with pytest.raises(UsageError, match=r"has 0 nodes but workers=3"):
        build_graph(path, 3)


def test_edge_list_disconnected(tmp_path) -> None:
    path = _write(tmp_path, "0 1\n2 3\n")
    with pytest.raises(UsageError, match="disconnected"):
        build_graph(path, 4)


# ---------------------------------------------------------------- connectivity


def test_is_connected() -> None:
    assert is_connected(Graph.from_pairs(1, []))
    assert not is_connected(Graph.from_pairs(2, []))
    idx = np.arange(49)
    path = Graph.from_pairs(50, np.stack([idx, idx + 1], axis=1))
    assert is_connected(path)
    assert not is_connected(path.keep_edges(idx != 24))


# ---------------------------------------------------------------- link failures


def test_drop_links_probability_zero_and_one() -> None:
    graph = build_graph("torus", 16)
    rng = np.random.default_rng(0)
    assert drop_links(graph, 0.0, rng) == graph
    assert drop_links(graph, 1.0, rng).num_edges == 0


@settings(max_examples=60, deadline=None)
@given(
    graph=symmetric_graphs(),
    prob=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_drop_links_symmetric_subgraph_still_doubly_stochastic(
    graph: Graph, prob: float, seed: int
) -> None:
    dropped = drop_links(graph, prob, np.random.default_rng(seed))
    _assert_valid_graph(dropped, graph.workers)
    assert not (dropped.adjacency() & ~graph.adjacency()).any()  # only removes edges
    for rule in DOUBLY_STOCHASTIC_RULES:
        assert is_doubly_stochastic(mixing_matrix(dropped, rule))


@pytest.mark.parametrize("prob", [-0.1, 1.1, float("nan")])
def test_bad_link_failure_prob(prob: float) -> None:
    graph = build_graph("ring", 5)
    with pytest.raises(UsageError, match="link_failure_prob"):
        drop_links(graph, prob, np.random.default_rng(0))
    with pytest.raises(UsageError, match="link_failure_prob"):
        round_graph(graph, prob, seed=0, round_index=0)


def test_round_graph_prob_zero_is_base_graph() -> None:
    graph = build_graph("exponential", 12)
    for r in range(5):
        assert round_graph(graph, 0.0, seed=3, round_index=r) == graph


def test_round_graph_deterministic_and_varies_by_round() -> None:
    graph = build_graph("complete", 20)
    a = round_graph(graph, 0.3, seed=11, round_index=4)
    b = round_graph(build_graph("complete", 20), 0.3, seed=11, round_index=4)
    assert a == b
    _assert_valid_graph(a, 20)
    assert a != round_graph(graph, 0.3, seed=11, round_index=5)
    assert a != round_graph(graph, 0.3, seed=12, round_index=4)


def test_round_graph_failure_rate() -> None:
    graph = build_graph("complete", 20)  # 190 edges
    base_edges = graph.num_edges
    rounds = 200
    kept = sum(round_graph(graph, 0.3, seed=5, round_index=r).num_edges for r in range(rounds))
    down_rate = 1.0 - kept / (base_edges * rounds)
    # 38,000 Bernoulli(0.3) trials: std ~ 0.0024, so +-0.02 is > 8 sigma.
    assert abs(down_rate - 0.3) < 0.02


def test_round_graph_bad_seed_or_round() -> None:
    graph = build_graph("ring", 5)
    with pytest.raises(UsageError, match="seed"):
        round_graph(graph, 0.1, seed=-1, round_index=0)
    with pytest.raises(UsageError, match="round_index"):
        round_graph(graph, 0.1, seed=0, round_index=-1)


# ---------------------------------------------------------------- describe


def test_describe_ring_8() -> None:
    info = describe("ring", 8)
    expected_gap = 1.0 - (1.0 / 3.0 + 2.0 / 3.0 * math.cos(2.0 * math.pi / 8))
    assert info["topology"] == "ring"
    assert info["workers"] == 8
    assert info["edges"] == 8
    assert info["connected"] is True
    assert info["doubly_stochastic"] is True
    assert info["spectral_gap"] == pytest.approx(expected_gap, abs=1e-12)
    assert info["min_degree"] == 2
    assert info["max_degree"] == 2
    assert info["mixing"] == "metropolis"
    assert json.loads(json.dumps(info)) == info


def test_describe_max_degree_and_errors() -> None:
    info = describe("star", 5, mixing="max_degree")
    assert info["mixing"] == "max_degree"
    assert (info["min_degree"], info["max_degree"], info["edges"]) == (1, 4, 4)
    with pytest.raises(UsageError):
        describe("star", 5, mixing="nope")


@pytest.mark.parametrize(
    ("name", "workers", "edge_prob"), [("complete", 200_000, 0.3), ("erdos_renyi", 300_000, 0.5)]
)
def test_a_graph_too_big_for_memory_is_refused_before_it_is_built(name, workers, edge_prob):
    with pytest.raises(UsageError, match=r"links; planning gossip over them needs") as exc:
        build_graph(name, workers, edge_prob=edge_prob)
    assert "sparser graph" in str(exc.value) and "\n" not in str(exc.value)


def test_the_memory_check_uses_this_machines_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "_physical_memory_bytes", lambda: 1_000_000)
    with pytest.raises(UsageError, match="more than this machine's"):
        build_graph("complete", 200)  # 19,900 links x 150 bytes > 1 MB
    assert build_graph("ring", 200).num_edges == 200  # sparse topologies are never refused


# ---------------------------------------------------------------- adjacency files and objects

# a 6-cycle with the chord 0-3: irregular, connected, and not one of the named topologies
_CHORDED_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (0, 3)]


def _chorded_adjacency(dtype: type = bool) -> np.ndarray:
    adj = np.zeros((6, 6), dtype=dtype)
    for i, j in _CHORDED_EDGES:
        adj[i, j] = adj[j, i] = 1
    return adj


def _one_line_error(call, *args, match: str) -> str:
    """The UsageError `call(*args)` raises: it must match and be one line."""
    with pytest.raises(UsageError, match=match) as exc:
        call(*args)
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def _edge_list_graph(tmp_path) -> Graph:
    path = tmp_path / "chorded.txt"
    path.write_text("".join(f"{i} {j}\n" for i, j in _CHORDED_EDGES))
    return build_graph(str(path), 6)


@pytest.mark.parametrize("dtype", [bool, np.int8, np.float32, np.float64])
def test_npy_and_npz_adjacency_equal_the_edge_list(tmp_path, dtype: type) -> None:
    expected = _edge_list_graph(tmp_path)
    weighted = _chorded_adjacency(dtype) * (3 if dtype is not bool else 1)
    weighted = weighted.astype(dtype)
    np.fill_diagonal(weighted, 1)  # the diagonal is ignored
    np.save(tmp_path / "adj.npy", weighted)
    np.savez(tmp_path / "one.npz", anything=weighted)
    np.savez(tmp_path / "named.npz", adjacency=weighted, other=np.eye(2))
    for name in ("adj.npy", "one.npz", "named.npz"):
        graph = build_graph(str(tmp_path / name), 6)
        assert graph == expected and graph.cayley is None
        _assert_valid_graph(graph, 6)
    assert describe(str(tmp_path / "adj.npy"), 6)["edges"] == 7


def test_networkx_graph_and_arrays_give_the_same_graph(tmp_path) -> None:
    nx = pytest.importorskip("networkx")
    import torch

    expected = _edge_list_graph(tmp_path)
    g = nx.Graph(_CHORDED_EDGES)
    assert graph_from_object(g, 6) == expected
    assert graph_from_object(nx.MultiGraph(_CHORDED_EDGES + [(1, 0)]), None) == expected
    assert graph_from_object(_chorded_adjacency(), 6) == expected
    assert graph_from_object(nx.to_numpy_array(g), None) == expected
    assert graph_from_object(torch.from_numpy(_chorded_adjacency(np.float32)), 6) == expected
    assert graph_from_object(torch.tensor(_chorded_adjacency()), 6) == expected
    assert graph_from_object(_chorded_adjacency(int).tolist(), 6) == expected
    assert graph_from_object(nx.Graph([(0, 0)]), 1) == Graph.from_pairs(1, [])


def test_graph_from_object_refusals() -> None:
    nx = pytest.importorskip("networkx")
    adj = _chorded_adjacency()
    call = graph_from_object
    _one_line_error(call, nx.Graph([("a", "b")]), None, match=r"integers 0\.\.N-1.*'a'")
    _one_line_error(call, nx.Graph([(1, 2)]), None, match=r"0\.\.N-1.*node 2 ")
    _one_line_error(call, nx.Graph([(0, 1.0)]), None, match=r"0\.\.N-1.*node 1\.0")
    _one_line_error(call, nx.Graph(), None, match=r"0\.\.N-1")
    _one_line_error(call, nx.DiGraph([(0, 1)]), None, match="not strongly connected")
    _one_line_error(call, nx.Graph([(0, 1), (2, 3)]), None, match="disconnected")
    _one_line_error(call, nx.Graph(_CHORDED_EDGES), 5, match=r"6 nodes but workers=5")
    _one_line_error(call, adj, 5, match=r"6 x 6 but workers=5")
    _one_line_error(call, adj, 0, match=r"workers must be an integer >= 1")
    _one_line_error(call, np.triu(adj), None, match=r"not symmetric.*A == A\.T")
    _one_line_error(call, adj.astype(complex), None, match="numbers or booleans")
    _one_line_error(call, [[0, 1], [1]], None, match="cannot read a list")
    _one_line_error(call, np.zeros((0, 0)), None, match=r"shape \(0, 0\)")
    _one_line_error(call, np.eye(2)[:, :1], None, match=r"shape \(2, 1\)")


def _bad_adjacencies() -> list:
    adj = _chorded_adjacency(np.float64)
    asymmetric, negative, nan, inf = adj.copy(), -adj, adj.copy(), adj.copy()
    asymmetric[0, 2] = 1.0
    nan[1, 4] = nan[4, 1] = np.nan
    inf[2, 2] = np.inf
    disconnected = np.zeros((6, 6))
    return [
        pytest.param(asymmetric, r"not symmetric: \(0, 2\) = 1 but \(2, 0\) = 0", id="asym"),
        pytest.param(adj[:5, :5], r"5 x 5 but workers=6", id="wrong-n"),
        pytest.param(adj[:, :5], r"shape \(6, 5\); it must be 6 x 6", id="not-square"),
        pytest.param(adj[None], r"shape \(1, 6, 6\)", id="3-d"),
        pytest.param(negative, r"negative entry -1 at \(0, 1\)", id="negative"),
        pytest.param(nan, r"non-finite entry nan at \(1, 4\)", id="nan"),
        pytest.param(inf, r"non-finite entry inf at \(2, 2\)", id="inf-diagonal"),
        pytest.param(adj.astype(str), r"numbers or booleans, got dtype <U", id="strings"),
        pytest.param(
            disconnected, r"topology '.*adj\.npy' with 6 workers is disconnected", id="disc"
        ),
    ]


@pytest.mark.parametrize(("matrix", "match"), _bad_adjacencies())
def test_adjacency_file_refusals(tmp_path, matrix: np.ndarray, match: str) -> None:
    path = tmp_path / "adj.npy"
    np.save(path, matrix)
    msg = _one_line_error(build_graph, str(path), 6, match=match)
    assert str(path) in msg


def test_adjacency_file_refuses_pickles_and_ambiguous_npz(tmp_path) -> None:
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"0": 1}, None], dtype=object), allow_pickle=True)
    _one_line_error(build_graph, str(pickled), 2, match=r"allow_pickle=False")
    text = tmp_path / "text.npy"
    text.write_text("0 1\n")
    _one_line_error(build_graph, str(text), 2, match=r"cannot read adjacency file .*text\.npy")
    two = tmp_path / "two.npz"
    np.savez(two, a=np.eye(2), b=np.eye(2))
    _one_line_error(build_graph, str(two), 2, match=r"\['a', 'b'\].*one named 'adjacency'")
    _one_line_error(build_graph, str(tmp_path / "missing.npy"), 2, match=r"no such file.*\.npy")


# ---------------------------------------------------------------- mixing matrices from files


def _w_file(tmp_path, w: np.ndarray, suffix: str = ".npy") -> str:
    path = tmp_path / f"w{suffix}"
    if suffix == ".npy":
        np.save(path, w)
    elif suffix == ".npz":
        np.savez(path, W=w, unrelated=np.zeros(3))
    else:
        sep = "," if suffix == ".csv" else "  "
        rows = "\n".join(sep.join(repr(float(x)) for x in row) + "  # a row" for row in w)
        path.write_text(f"# W, one row per worker\n\n{rows}\n")
    return str(path)


@st.composite
def connected_graphs(draw: st.DrawFn) -> Graph:
    """A random spanning tree (each node joins an earlier one) plus random extra edges."""
    n = draw(st.integers(min_value=1, max_value=30))
    tree = [(i, draw(st.integers(0, i - 1))) for i in range(1, n)]
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40))
    return Graph.from_pairs(n, tree + extra)


@settings(max_examples=80, deadline=None)
@given(graph=connected_graphs(), rule=st.sampled_from(DOUBLY_STOCHASTIC_RULES))
def test_a_rules_w_written_and_read_back_gives_the_same_weights(
    tmp_path_factory: pytest.TempPathFactory, graph: Graph, rule: str
) -> None:
    assert is_connected(graph)
    path = tmp_path_factory.mktemp("w") / "w.npy"
    built = mixing_matrix(graph, rule)
    np.save(path, built.dense())
    read = mixing_matrix(graph, str(path))
    assert read.graph == graph
    assert np.array_equal(read.edge_weights, built.edge_weights)
    assert np.array_equal(read.self_weights, built.self_weights)
    assert read.edge_weights.dtype == read.self_weights.dtype == np.float64


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".txt", ".csv"])
def test_mixing_file_formats_and_downstream(tmp_path, suffix: str) -> None:
    graph = build_graph("ring", 8)  # a Cayley graph: its gap has a closed form for the rules only
    lazy = 0.5 * np.eye(8) + 0.5 * mixing_matrix(graph).dense()  # a W no rule builds
    path = _w_file(tmp_path, lazy, suffix)
    check_mixing_rule(path)
    w = mixing_matrix(graph, path)
    np.testing.assert_allclose(w.dense(), lazy, rtol=0, atol=1e-15)
    assert is_doubly_stochastic(w)
    expected_gap = 1.0 - (2.0 / 3.0 + 1.0 / 3.0 * math.cos(2.0 * math.pi / 8))
    assert spectral_gap(w) == pytest.approx(expected_gap, abs=1e-12)
    info = describe("ring", 8, mixing=path)
    assert info["mixing"] == path and info["doubly_stochastic"] is True
    assert info["spectral_gap"] == pytest.approx(expected_gap, abs=1e-12)
    assert json.loads(json.dumps(info)) == info


def test_describe_a_file_graph_with_a_file_w(tmp_path) -> None:
    np.save(tmp_path / "adj.npy", _chorded_adjacency())
    graph = build_graph(str(tmp_path / "adj.npy"), 6)
    path = _w_file(tmp_path, mixing_matrix(graph, "max_degree").dense(), ".csv")
    info = describe(str(tmp_path / "adj.npy"), 6, mixing=path)
    assert info == {**describe(str(tmp_path / "adj.npy"), 6, mixing="max_degree"), "mixing": path}


def test_a_w_with_zero_weight_on_an_edge_is_supported_on_the_graph(tmp_path) -> None:
    graph = build_graph("ring", 4)
    w = np.eye(4) * 0.5
    w[0, 1] = w[1, 0] = w[2, 3] = w[3, 2] = 0.5  # uses two of the four ring edges
    mixing = mixing_matrix(graph, _w_file(tmp_path, w))
    assert mixing.graph == graph and mixing.edge_weights.tolist() == [0.5, 0.0, 0.0, 0.5]
    assert spectral_gap(mixing) == 0.0  # W itself splits the workers in two


def _bad_mixings() -> list:
    w = mixing_matrix(build_graph("ring", 5)).dense()  # 1/3 on the ring's edges and diagonal
    asymmetric, negative, nan, not_stochastic, off_graph = (w.copy() for _ in range(5))
    asymmetric[0, 1] += 1e-6
    asymmetric[0, 0] -= 1e-6
    negative[0, 1] = negative[1, 0] = -1 / 3
    negative[0, 0] = negative[1, 1] = 1.0
    nan[3, 3] = np.nan
    not_stochastic[0, 0] = 0.5
    off_graph[0, 2] = off_graph[2, 0] = 0.1
    off_graph[0, 0] = off_graph[2, 2] = 1 / 3 - 0.1
    return [
        pytest.param(asymmetric, r"not symmetric: \(0, 1\).*atol 1e-09", id="asymmetric"),
        pytest.param(np.eye(4), r"is 4 x 4 but workers=5", id="wrong-n"),
        pytest.param(np.ones((5, 4)) / 4, r"shape \(5, 4\); it must be 5 x 5", id="not-square"),
        pytest.param(negative, r"negative entry -0\.333333 at \(0, 1\)", id="negative"),
        pytest.param(nan, r"non-finite entry nan at \(3, 3\)", id="nan"),
        pytest.param(not_stochastic, r"not doubly stochastic: row 0 sums to 1\.16", id="sums"),
        pytest.param(
            off_graph, r"W\[0, 2\] = 0\.1 but workers 0 and 2 are not linked", id="support"
        ),
    ]


@pytest.mark.parametrize("suffix", [".npy", ".txt"])
@pytest.mark.parametrize(("w", "match"), _bad_mixings())
def test_mixing_file_refusals(tmp_path, w: np.ndarray, match: str, suffix: str) -> None:
    path = _w_file(tmp_path, w, suffix)
    msg = _one_line_error(mixing_matrix, build_graph("ring", 5), path, match=match)
    assert msg.startswith(f"mixing matrix {path} ")


def test_mixing_file_refuses_a_w_doubly_stochastic_only_in_rows(tmp_path) -> None:
    w = np.array([[0.5, 0.5], [0.5, 0.5]])
    w[0] = [0.2, 0.8]  # rows sum to 1 but it is neither symmetric nor column-stochastic
    _one_line_error(mixing_matrix, build_graph("ring", 2), _w_file(tmp_path, w), match="symmetric")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0.5 0.5\n0.5 x\n", r"line 2: expected numbers.*'0\.5 x'"),
        ("0.5 0.5\n# c\n0.5\n", r"line 3: 1 values, but the first row has 2"),
        ("# nothing\n", r"shape \(0, 0\)"),
    ],
)
def test_text_mixing_file_refusals(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "w.txt"
    path.write_text(text)
    _one_line_error(mixing_matrix, build_graph("ring", 2), str(path), match=match)


def test_mixing_file_refuses_pickles_and_ambiguous_npz(tmp_path) -> None:
    ring = build_graph("ring", 2)
    pickled = tmp_path / "w.npy"
    np.save(pickled, np.array([[0.5, 0.5], [0.5, None]], dtype=object), allow_pickle=True)
    _one_line_error(mixing_matrix, ring, str(pickled), match=r"allow_pickle=False")
    two = tmp_path / "w.npz"
    np.savez(two, a=np.eye(2), b=np.eye(2))
    _one_line_error(mixing_matrix, ring, str(two), match=r"exactly one array, or one named 'W'")


def test_check_mixing_rule(tmp_path) -> None:
    for rule in MIXING_RULES:
        check_mixing_rule(rule)
    valid = (
        r"valid: metropolis, max_degree, uniform_row, or a path to a \.npy/\.npz/\.txt/\.csv matrix"
    )
    json_file = tmp_path / "w.json"
    json_file.write_text("[[1]]")
    cases = [
        ("uniform", r"'uniform'; " + valid + "$"),
        (str(json_file), r"w\.json'; " + valid + r" \(suffix '\.json' is not"),
        (str(tmp_path / "missing.npy"), valid + r" \(no such file: '.*missing\.npy'\)"),
        (str(tmp_path), valid),  # a directory
        (None, r"None; " + valid),
    ]
    for rule, match in cases:
        _one_line_error(check_mixing_rule, rule, match=match)
        _one_line_error(mixing_matrix, build_graph("ring", 3), rule, match=match)
    with open(tmp_path / "W.NPY", "wb") as f:  # np.save would append .npy to the name
        np.save(f, np.eye(3))
    check_mixing_rule(str(tmp_path / "W.NPY"))  # suffixes in any case
    assert (
        mixing_matrix(build_graph("ring", 3), tmp_path / "W.NPY").edge_weights.tolist() == [0] * 3
    )


# ---------------------------------------------------------------- directed graphs (push-sum)


def _assert_valid_directed(graph: Graph, n: int) -> None:
    """Links once each, sorted, no self-loop, strongly connected, P column-stochastic with every
    sender's share 1/(1 + out-degree) on itself and its out-neighbours."""
    e = graph.edges
    assert graph.directed and e.dtype == np.int64 and e.shape == (graph.num_edges, 2)
    assert (e[:, 0] != e[:, 1]).all() and (np.diff(e[:, 0] * n + e[:, 1]) > 0).all()
    assert np.array_equal(graph.degrees, graph.adjacency().sum(axis=1))  # out-degrees
    assert is_connected(graph)
    p = mixing_matrix(graph).dense()
    assert topology.is_column_stochastic(p) and (p >= 0).all()
    share = 1.0 / (1.0 + graph.degrees)
    assert np.array_equal(p.diagonal(), share)
    assert np.array_equal(p[e[:, 1], e[:, 0]], share[e[:, 0]])
    assert np.count_nonzero(p) == graph.num_edges + n


@pytest.mark.parametrize("name", DIRECTED_TOPOLOGIES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 16, 30])
def test_directed_topologies_are_strongly_connected_and_column_stochastic(name: str, n: int):
    graph = build_graph(name, n)
    _assert_valid_directed(graph, n)
    for round_index in range(2 * graph.period):
        round_graph_ = graph.at(round_index)
        assert round_graph_.directed and not round_graph_.cycle
        assert topology.is_column_stochastic(mixing_matrix(round_graph_))
    assert (name in TOPOLOGIES) and graph.num_edges <= builders._expected_links(name, n, 0.3)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_directed_ring_and_exponential_links(n: int) -> None:
    ring = build_graph("directed_ring", n)
    assert {tuple(x) for x in ring.edges.tolist()} == {(i, (i + 1) % n) for i in range(n)}
    offsets = [2**k for k in range(n) if 2**k < n]
    exp = build_graph("directed_exponential", n)
    expected = {(i, (i + o) % n) for i in range(n) for o in offsets}
    assert {tuple(x) for x in exp.edges.tolist()} == expected
    assert (exp.degrees == math.ceil(math.log2(n))).all()


@pytest.mark.parametrize("n", [2, 3, 5, 8, 16, 33])
def test_directed_spectral_gap_matches_a_dense_eigendecomposition(n: int) -> None:
    for name in DIRECTED_TOPOLOGIES:
        graph = build_graph(name, n)
        product = np.eye(n)
        for r in range(graph.period):
            product = mixing_matrix(graph.at(r)).dense() @ product
        slem = np.sort(np.abs(np.linalg.eigvals(product)))[-2]
        expected = 1.0 - (0.0 if slem < 1e-12 else slem ** (1.0 / graph.period))
        assert spectral_gap(mixing_matrix(graph)) == pytest.approx(expected, abs=1e-9), name
        plain = Graph(n, graph.edges, directed=True)  # the same links without the symmetry
        if not graph.cycle:
            assert spectral_gap(mixing_matrix(plain)) == pytest.approx(expected, abs=1e-9)
    assert spectral_gap(mixing_matrix(build_graph("directed_ring", n))) == pytest.approx(
        1.0 - abs(math.cos(math.pi / n)), abs=1e-12
    )


def test_directed_spectral_gap_beyond_the_dense_limit() -> None:
    assert spectral_gap(mixing_matrix(build_graph("directed_ring", 10_000))) > 0
    assert spectral_gap(mixing_matrix(build_graph("one_peer_exponential", 4096))) == 1.0
    links = np.stack([np.arange(3000), (np.arange(3000) + 1) % 3000], axis=1)
    path_file = Graph.from_pairs(3000, links, directed=True)  # no symmetry to use
    assert spectral_gap(mixing_matrix(path_file)) is None


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9, 16, 17])
def test_one_peer_exponential_sends_one_message_a_round_with_period_ceil_log2_n(n: int) -> None:
    graph = build_graph("one_peer_exponential", n)
    period = math.ceil(math.log2(n))
    assert graph.period == period
    for t in range(3 * period):
        links = graph.at(t).edges
        assert (graph.at(t).degrees == 1).all()
        assert ((links[:, 1] - links[:, 0]) % n == 2 ** (t % period)).all()
        assert graph.at(t) == graph.at(t + period)
        if period > 1:
            assert graph.at(t) != graph.at(t + 1)  # it changes every round


def test_describe_directed_ring() -> None:
    info = describe("directed_ring", 8)
    assert info == {
        "topology": "directed_ring", "workers": 8, "edges": 8, "connected": True,
        "doubly_stochastic": False, "spectral_gap": pytest.approx(1 - math.cos(math.pi / 8)),
        "min_degree": 1, "max_degree": 1, "mean_degree": 1.0, "mixing": "out_degree",
        "directed": True, "column_stochastic": True, "period": 1,
    }  # fmt: skip
    assert json.loads(json.dumps(info)) == info
    one_peer = describe("one_peer_exponential", 8)
    assert (one_peer["period"], one_peer["edges"], one_peer["spectral_gap"]) == (3, 24, 1.0)
    assert "directed" not in describe("ring", 8)  # undirected output as before


def test_directed_files_edge_list_and_adjacency(tmp_path) -> None:
    path = _write(tmp_path, "0 1\n1 2\n2 0\n2 3\n3 0\n0 1\n")  # a duplicate link is one
    graph = build_graph(path, 4, directed=True)
    assert graph.edges.tolist() == [[0, 1], [1, 2], [2, 0], [2, 3], [3, 0]]
    _assert_valid_directed(graph, 4)
    assert describe(path, 4, directed=True)["edges"] == 5
    adjacency = np.zeros((4, 4))
    adjacency[graph.edges[:, 0], graph.edges[:, 1]] = 1
    np.save(tmp_path / "adj.npy", adjacency)
    assert build_graph(str(tmp_path / "adj.npy"), 4, directed=True) == graph
    undirected = build_graph(path, 4)
    assert not undirected.directed and undirected != graph


def test_directed_refusals_are_one_line(tmp_path) -> None:
    one_way = _write(tmp_path, "0 1\n1 2\n2 3\n")  # connected as undirected, not strongly
    assert build_graph(one_way, 4).num_edges == 3
    _one_line_error(
        lambda: build_graph(one_way, 4, directed=True),
        match=r"is not strongly connected; push-sum gossip needs",
    )
    _one_line_error(
        lambda: describe("ring", 4, directed=True),
        match=r"directed=true reads a topology file.*'ring' is undirected",
    )
    for rule in ("max_degree", str(tmp_path / "w.npy")):
        np.save(tmp_path / "w.npy", np.eye(4))
        _one_line_error(
            mixing_matrix, build_graph("directed_ring", 4), rule, match=r"leave mixing at its"
        )


def test_directed_links_fail_one_by_one_and_p_stays_column_stochastic() -> None:
    graph = build_graph("directed_exponential", 16)
    dropped = round_graph(graph, 0.5, seed=1, round_index=3)
    assert dropped.directed and 0 < dropped.num_edges < graph.num_edges
    assert not (dropped.adjacency() & ~graph.adjacency()).any()
    assert topology.is_column_stochastic(mixing_matrix(dropped))
    assert topology.is_column_stochastic(mixing_matrix(dropped.among(np.arange(16) % 3 > 0)))


@settings(max_examples=100, deadline=None)
@given(graph=symmetric_graphs())
def test_uniform_row_averages_each_closed_neighbourhood_equally(graph: Graph) -> None:
    W, adj = mixing_matrix(graph, "uniform_row").dense(), graph.adjacency()
    degrees = adj.sum(axis=1) - adj.diagonal()
    closed = adj | np.eye(graph.workers, dtype=bool)
    assert np.allclose(W.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # row-stochastic
    expected = np.where(closed, 1.0 / (1.0 + degrees)[:, None], 0.0)
    assert np.allclose(W, expected, rtol=0, atol=1e-15)
    if len(set(degrees.tolist())) == 1:  # regular: the same W as metropolis
        assert np.allclose(W, mixing_matrix(graph).dense(), rtol=0, atol=1e-15)
    gap = spectral_gap(mixing_matrix(graph, "uniform_row"))
    assert gap is not None and 0.0 <= gap <= 1.0


def test_uniform_row_is_not_doubly_stochastic_on_an_irregular_graph() -> None:
    star = build_graph("star", 5)
    mixing = mixing_matrix(star, "uniform_row")
    assert not mixing.symmetric and not is_doubly_stochastic(mixing)
    W = mixing.dense()
    assert W[0, 1] == pytest.approx(1 / 5) and W[1, 0] == pytest.approx(1 / 2)
    # not symmetric: its spectrum comes from the dense eigenvalues
    assert spectral_gap(mixing) == pytest.approx(1 - np.sort(np.abs(np.linalg.eigvals(W)))[-2])


@pytest.mark.parametrize("name", ["erdos_renyi", "star"])
def test_uniform_row_gap_beyond_the_dense_limit_is_the_dense_one(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond DENSE_SPECTRUM_LIMIT the authors' (reversible) weights go to Lanczos through their
    symmetric similar form: the same gap as the dense eigenvalues of W itself."""
    mixing = mixing_matrix(build_graph(name, 300, edge_prob=0.05, seed=1), "uniform_row")
    dense = 1 - np.sort(np.abs(np.linalg.eigvals(mixing.dense())))[-2]
    monkeypatch.setattr(spectrum, "DENSE_SPECTRUM_LIMIT", 100)
    assert spectral_gap(mixing) == pytest.approx(dense, abs=1e-9)


def test_uniform_row_on_a_star_beyond_the_dense_limit_has_its_exact_gap() -> None:
    """The hub's weight 1 - (N - 1)/N carries rounding that a tolerance at rounding level would
    take for irreversibility; the leaves' eigenvalue 1/2 gives the gap exactly."""
    star = build_graph("star", spectrum.DENSE_SPECTRUM_LIMIT + 1)
    assert spectral_gap(mixing_matrix(star, "uniform_row")) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("n", [65, 72, 257, 2047])
def test_complete_graphs_keep_their_exact_gap_despite_rounded_self_weights(n: int) -> None:
    assert spectral_gap(mixing_matrix(build_graph("complete", n))) == 1.0


def test_a_nonsymmetric_w_that_is_not_reversible_has_no_gap_beyond_the_dense_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a cycle walked one way with weight 0.4 and back with 0.2: Kolmogorov's criterion fails
    cycle = Graph.from_pairs(5, [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)])
    forward = np.full(cycle.num_edges, 0.4)
    back = np.full(cycle.num_edges, 0.2)
    skewed = dataclasses.replace(
        mixing_matrix(cycle), edge_weights=forward, back_weights=back, self_weights=np.zeros(5)
    )
    skewed = dataclasses.replace(skewed, self_weights=1.0 - skewed.sparse().sum(axis=1))
    assert np.allclose(skewed.dense().sum(axis=1), 1.0)
    dense_gap = spectral_gap(skewed)
    assert dense_gap is not None and 0 < dense_gap < 1
    monkeypatch.setattr(spectrum, "DENSE_SPECTRUM_LIMIT", 2)
    assert spectral_gap(skewed) is None


def test_a_ring_with_weights_of_its_own_gets_its_own_gap_not_the_closed_form() -> None:
    ring = build_graph("ring", 6)  # symmetric, so its closed form would apply to (I + A) / 3
    lazy = dataclasses.replace(
        mixing_matrix(ring), edge_weights=np.full(6, 0.1), self_weights=np.full(6, 0.8)
    )
    dense = 1 - np.sort(np.abs(np.linalg.eigvalsh(lazy.dense())))[-2]
    assert spectral_gap(lazy) == pytest.approx(dense, abs=1e-12)
    assert spectral_gap(lazy) != pytest.approx(spectral_gap(mixing_matrix(ring)), abs=1e-3)
