"""Mixing matrices on a graph: the rules (`MIXING_RULES`: metropolis, max_degree, uniform_row),
a given W (file or array) checked against its graph, push-sum's column-stochastic split on a
directed graph, and the stochasticity checks. W is one weight per edge plus one per node."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from repgossip.errors import UsageError
from repgossip.registry import API_PREFIX, Registry
from repgossip.topology.files import (
    _EDGE_SPLIT,
    ADJACENCY_SUFFIXES,
    _asymmetry,
    _check_matrix,
    _file_problem,
    _load_array,
    _user_path,
)
from repgossip.topology.graph import Graph, _one_line

MIXING_FILE_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".txt", ".csv")
_SYMMETRY_ATOL = 1e-9  # tolerance of a user W's symmetry and row/column sums (float round-off)


@dataclass(frozen=True, eq=False)
class Mixing:
    """A symmetric doubly stochastic W on `graph`, sparse: W_ij = edge_weights[e] for the edge
    e = (i, j) in both directions, W_ii = self_weights[i], zero elsewhere.

    On a directed graph, the column-stochastic P of push-sum: P_ji = edge_weights[e] for the link
    e = i -> j (receiver j's row, sender i's column), P_ii = self_weights[i]. Either way row i
    says what worker i's new value mixes, so gossip applies both alike."""

    graph: Graph
    edge_weights: np.ndarray  # (E,) float64
    self_weights: np.ndarray  # (N,) float64
    # W_ji for each undirected edge e = (i, j) where it differs from W_ij = edge_weights[e] (the
    # row-stochastic `uniform_row` ablation); None: W is symmetric.
    back_weights: np.ndarray | None = None

    @property
    def symmetric(self) -> bool:
        return self.back_weights is None and not self.graph.directed

    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """W's nonzero entries as (rows, cols, values): each edge both ways (directed: each link
        as (receiver, sender)), then the diagonal."""
        nodes = np.arange(self.graph.workers)
        if self.graph.directed:
            senders, receivers = self.graph.edges[:, 0], self.graph.edges[:, 1]
            rows, cols = np.concatenate([receivers, nodes]), np.concatenate([senders, nodes])
            return rows, cols, np.concatenate([self.edge_weights, self.self_weights])
        sources, targets = self.graph.both_ways()
        rows, cols = np.concatenate([sources, nodes]), np.concatenate([targets, nodes])
        back = self.edge_weights if self.back_weights is None else self.back_weights
        return rows, cols, np.concatenate([self.edge_weights, back, self.self_weights])

    def sparse(self) -> sp.csr_array:
        rows, cols, values = self.entries()
        return sp.csr_array((values, (rows, cols)), shape=(self.graph.workers,) * 2)

    def dense(self) -> np.ndarray:
        """(N, N) float64: for small graphs only (tests, the reference simulator)."""
        return self.sparse().toarray()


def _metropolis(graph: Graph) -> np.ndarray:
    """W_ij = 1/(1 + max(d_i, d_j)) on each edge: needs only neighbours' degrees."""
    deg = graph.degrees
    return 1.0 / (1.0 + np.maximum(deg[graph.edges[:, 0]], deg[graph.edges[:, 1]]))


def _max_degree(graph: Graph) -> np.ndarray:
    """W_ij = 1/(1 + d_max) on each edge: uniform weights."""
    deg = graph.degrees
    return np.full(graph.num_edges, 1.0 / (1.0 + (deg.max() if deg.size else 0)))


def _uniform_row(graph: Graph) -> np.ndarray:
    """W_ij = 1/(1 + d_i) for j in i's closed neighbourhood: each worker averages itself and its
    neighbours with equal weights, as the DePRL authors' code does. Row-stochastic but, on an
    irregular graph, neither symmetric nor doubly stochastic (the network average drifts toward
    high-degree workers); on a regular graph it equals metropolis. For the ablation of
    docs/results.md only. Rows: W_ij, W_ji for each edge (i, j)."""
    share = 1.0 / (1.0 + graph.degrees)
    return np.stack([share[graph.edges[:, 0]], share[graph.edges[:, 1]]])


# Mixing rules: a rule gives one weight per edge (each at most 1/(1 + max degree of its ends), so
# the diagonal, which takes the rest, stays positive and W doubly stochastic), or a (2, E) array
# (W_ij, W_ji) per edge (i, j) for a W that is not symmetric.
MIXING_RULES: Registry[Callable[[Graph], np.ndarray]] = Registry(
    "mixing rule", extra="a path to a .npy/.npz/.txt/.csv matrix"
)
MIXING_RULES.register("metropolis", _metropolis)
MIXING_RULES.register("max_degree", _max_degree)
MIXING_RULES.register("uniform_row", _uniform_row)


def check_mixing_rule(rule: str | np.ndarray) -> None:
    """Refuse in one line a mixing rule that is neither a built-in rule nor an existing matrix file
    of a known suffix; needs no graph, so a config can be checked before anything is built."""
    if isinstance(rule, np.ndarray) or (isinstance(rule, str) and rule in MIXING_RULES):
        return
    if isinstance(rule, str) and rule.startswith(API_PREFIX):
        return  # an array handed to repgossip.run(); the run checks it against the graph
    if not isinstance(rule, (str, os.PathLike)):
        raise UsageError(f"unknown mixing rule {rule!r}; valid: {MIXING_RULES.valid()}")
    path = _user_path(rule)
    if path.suffix.lower() not in MIXING_FILE_SUFFIXES:
        why = f" (suffix {path.suffix!r} is not .npy/.npz/.txt/.csv)" if path.suffix else ""
    elif (problem := _file_problem(path)) is not None:
        why = f" ({problem})"
    else:
        return
    raise UsageError(f"unknown mixing rule {str(rule)!r}; valid: {MIXING_RULES.valid()}{why}")


def mixing_matrix(graph: Graph, rule: str | np.ndarray = "metropolis") -> Mixing:
    """W on `graph` (weights only on edges and the diagonal), symmetric doubly stochastic under
    every rule but `uniform_row`.

    metropolis: W_ij = 1/(1 + max(d_i, d_j)) on edges; needs only neighbours' degrees, so it is
    what a real deployment can compute locally. max_degree: W_ij = 1/(1 + d_max) on edges; uniform
    weights, slower on irregular graphs. The diagonal takes the rest, which is always > 0.
    uniform_row: W_ij = 1/(1 + d_i), the authors' code's weights, not doubly stochastic on an
    irregular graph (an ablation; see `_uniform_row`).
    Any other rule is a path to a user's W (see `_mixing_file`).

    A directed graph has no symmetric W: it gets the push-sum P of `_out_split` under the default
    rule, and refuses any other.
    """
    check_mixing_rule(rule)
    if graph.directed:
        return _out_split(graph, rule)
    if isinstance(rule, np.ndarray):
        return _given_matrix(graph, rule, "mixing array")
    if not (isinstance(rule, str) and rule in MIXING_RULES):
        return _mixing_file(graph, _user_path(rule))
    weights = np.asarray(MIXING_RULES.get(rule)(graph), dtype=np.float64)
    forward, back = (weights, weights) if weights.ndim == 1 else (weights[0], weights[1])
    sources, _ = graph.both_ways()
    off_diagonal = np.bincount(sources, np.concatenate([forward, back]), minlength=graph.workers)
    asymmetric = weights.ndim == 2 and not np.array_equal(forward, back)
    return Mixing(graph, forward, 1.0 - off_diagonal, back if asymmetric else None)


# What `describe` calls the mixing of a directed graph: P_ji = 1/(1 + out-degree of i).
DIRECTED_MIXING = "out_degree"


def _rule_name(rule: str | np.ndarray) -> str:
    return "an array" if isinstance(rule, np.ndarray) else str(rule)


def _out_split(graph: Graph, rule: str | np.ndarray) -> Mixing:
    """Push-sum's column-stochastic P: each sender i splits its mass evenly over itself and its
    out-neighbours, P_ji = 1/(1 + outdeg_i) for j in out(i) + {i}. A sender needs only its own
    out-degree; the receivers need nothing. Only the default rule name is accepted: the others
    (and W files) describe a symmetric W that a directed graph cannot have."""
    if not (isinstance(rule, str) and rule == "metropolis"):
        raise UsageError(
            f"mixing {_rule_name(rule)!r} builds a W for an undirected graph; a directed graph "
            "mixes by push-sum (each sender splits its mass evenly over itself and its "
            "out-neighbours): leave mixing at its default (metropolis)"
        )
    share = 1.0 / (1.0 + graph.degrees)
    return Mixing(graph, share[graph.edges[:, 0]], share)


def _read_text_matrix(path: Path, source: str) -> np.ndarray:
    """Rows of numbers separated by whitespace or commas, '#' comments; errors name the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {source}: {_one_line(exc)}") from None
    rows: list[list[float]] = []
    for lineno, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            row = [float(t) for t in _EDGE_SPLIT.split(text) if t]
        except ValueError:
            raise UsageError(
                f"{source} line {lineno}: expected numbers separated by spaces or commas, "
                f"got {text!r}"
            ) from None
        if rows and len(row) != len(rows[0]):
            raise UsageError(
                f"{source} line {lineno}: {len(row)} values, but the first row has {len(rows[0])}"
            )
        rows.append(row)
    return np.array(rows, dtype=np.float64) if rows else np.zeros((0, 0))


def _check_stochastic(w: np.ndarray, source: str) -> None:
    """Rows and columns must each sum to 1, so that gossip keeps the network average."""
    for axis, what in ((1, "row"), (0, "column")):
        sums = w.sum(axis=axis)
        k = int(np.argmax(np.abs(sums - 1.0)))
        if abs(sums[k] - 1.0) > _SYMMETRY_ATOL:
            raise UsageError(
                f"{source} is not doubly stochastic: {what} {k} sums to {sums[k]:.17g}; every row "
                f"and column must sum to 1 (atol {_SYMMETRY_ATOL:g})"
            )


def _check_support(w: np.ndarray, graph: Graph, source: str) -> None:
    """W may be nonzero only where two workers can talk: the diagonal and the graph's edges."""
    outside = (w != 0) & ~graph.adjacency()
    np.fill_diagonal(outside, False)
    if outside.any():
        i, j = np.argwhere(outside)[0]
        raise UsageError(
            f"{source} has W[{i}, {j}] = {w[i, j]:.6g} but workers {i} and {j} are not linked "
            "in the graph; W may be nonzero only on the diagonal and on the graph's edges"
        )


def _mixing_file(graph: Graph, path: Path) -> Mixing:
    """A user's W from a .npy/.npz (dense) or .txt/.csv (rows) file, refused in one line unless it
    is a symmetric doubly stochastic matrix on `graph`. Its graph keeps the edges but drops any
    Cayley structure: the closed-form spectral gap holds for the built-in rules only."""
    source = f"mixing matrix {path}"
    if path.suffix.lower() in ADJACENCY_SUFFIXES:
        raw = _load_array(path, "W", source)
    else:
        raw = _read_text_matrix(path, source)
    return _given_matrix(graph, raw, source)


def _given_matrix(graph: Graph, raw: np.ndarray, source: str) -> Mixing:
    """A user's W, from a file or an array handed to repgossip.run, with the file's checks."""
    w = _check_matrix(raw, source, graph.workers)
    _asymmetry(w, _SYMMETRY_ATOL, source, f"W must be symmetric (atol {_SYMMETRY_ATOL:g})")
    _check_stochastic(w, source)
    _check_support(w, graph, source)
    plain = Graph(graph.workers, graph.edges)
    return Mixing(plain, w[graph.edges[:, 0], graph.edges[:, 1]], np.diagonal(w).copy())


def is_column_stochastic(w: np.ndarray | Mixing, atol: float = 1e-9) -> bool:
    """Nonnegative, columns sum to 1: what push-sum needs so that the total mass sum_i x_i and
    the total weight sum_i w_i are the same after a gossip step. Takes a dense matrix or a Mixing."""
    m = w.sparse() if isinstance(w, Mixing) else sp.csr_array(np.asarray(w, dtype=np.float64))
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.isfinite(m.data).all():
        return False
    return bool(
        m.data.min(initial=0.0) >= -atol and np.allclose(m.sum(axis=0), 1.0, rtol=0.0, atol=atol)
    )


def is_doubly_stochastic(w: np.ndarray | Mixing, atol: float = 1e-9) -> bool:
    """Symmetric, nonnegative, rows and columns sum to 1: the conditions under which gossip keeps
    the network average unchanged and converges to it. Takes a dense matrix or a Mixing."""
    m = w.sparse() if isinstance(w, Mixing) else sp.csr_array(np.asarray(w, dtype=np.float64))
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.isfinite(m.data).all():
        return False
    asymmetry = abs(m - m.T).max() if m.nnz else 0.0
    return bool(
        asymmetry <= atol
        and (m.data.min(initial=0.0) >= -atol)
        and np.allclose(m.sum(axis=0), 1.0, rtol=0.0, atol=atol)
        and np.allclose(m.sum(axis=1), 1.0, rtol=0.0, atol=atol)
    )
