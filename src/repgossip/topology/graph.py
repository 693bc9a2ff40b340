"""A communication graph: workers and their links as an edge list (undirected, directed, or a
cycle of graphs over rounds), its connectivity, and the links that fail in a round."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from repgossip.errors import UsageError

_LINK_FAILURE_TAG = 0x4C4E4B46  # "LNKF"


def _one_line(exc: BaseException) -> str:
    """An exception's message with its line breaks folded, to quote it inside a one-line error."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_workers(workers: int) -> int:
    """Workers must be a positive integer; bools and floats are rejected as likely config typos."""
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UsageError(f"workers must be an integer >= 1, got {workers!r}")
    return int(workers)


def _check_nonneg_int(name: str, value: int) -> int:
    """Seeds and round indices feed np.random.default_rng, which needs non-negative integers."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UsageError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_prob(name: str, prob: float) -> float:
    if not (_is_real(prob) and 0.0 <= prob <= 1.0):
        raise UsageError(f"{name} must be a probability in [0, 1], got {prob!r}")
    return float(prob)


@dataclass(frozen=True, eq=False)
class CayleyStructure:
    """The graph is the Cayley graph of Z_shape[0] x Z_shape[1] x ... (a node is the row-major index
    of its coordinates): u ~ u + s for every s in the connection set.

    Ring, torus, exponential and complete graphs are such graphs. Their adjacency eigenvalues are
    the discrete Fourier transform of the connection set's indicator, so their spectral gap is exact
    at any size without an eigensolver (a ring of 10,000 has a gap of ~1e-7, which Lanczos cannot
    resolve in a reasonable number of steps).
    """

    shape: tuple[int, ...]
    connections: np.ndarray  # bool array of `shape`: the connection set; 0 excluded
    directed: bool = False  # links u -> u + s only; else the set is symmetric (s and -s)

    @classmethod
    def from_offsets(
        cls, shape: tuple[int, ...], offsets: list[tuple[int, ...]], directed: bool = False
    ) -> CayleyStructure:
        """Connection set {+o, -o for o in offsets} (directed: {+o}) modulo `shape`, without the
        identity."""
        indicator = np.zeros(shape, dtype=bool)
        for o in offsets:
            indicator[tuple(np.mod(o, shape))] = True
            if not directed:
                indicator[tuple(np.mod(np.negative(o), shape))] = True
        indicator[(0,) * len(shape)] = False
        return cls(tuple(shape), indicator, directed)

    @property
    def degree(self) -> int:
        return int(self.connections.sum())

    def adjacency_eigenvalues(self) -> np.ndarray:
        """All N eigenvalues of the adjacency matrix; entry 0 is the degree (the constant vector)."""
        return np.fft.fftn(self.connections.astype(np.float64)).real.ravel()

    def spectrum(self) -> np.ndarray:
        """All N complex eigenvalues of the adjacency matrix (a directed one is not symmetric),
        up to conjugation, which leaves their moduli alone; entry 0 is the degree."""
        return np.fft.fftn(self.connections.astype(np.float64)).ravel()

    def edge_pairs(self) -> np.ndarray:
        """(u, u + s) for every node u and one s of each {s, -s} (both give the same edges);
        directed: for every s, each a link u -> u + s."""
        dims = np.array(self.shape)[:, None]
        coords = np.indices(self.shape).reshape(len(self.shape), -1)
        nodes = np.arange(coords.shape[1])
        pairs = [np.empty((0, 2), dtype=np.int64)]
        for s in np.argwhere(self.connections):
            if not self.directed and tuple(s) > tuple(np.mod(-s, self.shape)):
                continue
            neighbour = np.ravel_multi_index(tuple((coords + s[:, None]) % dims), self.shape)
            pairs.append(np.stack([nodes, neighbour], axis=1))
        return np.concatenate(pairs)


@dataclass(frozen=True, eq=False)
class Graph:
    """A simple graph on nodes 0..workers-1, stored as its edge list: undirected, or directed
    (links sender -> receiver, gossiped by push-sum), and possibly time-varying (`cycle`)."""

    workers: int
    # (E, 2) int64, sorted by (i, j): undirected, each edge once as (i, j) with i < j; directed,
    # each link once as (sender, receiver)
    edges: np.ndarray
    cayley: CayleyStructure | None = None  # set by the builders of symmetric topologies
    directed: bool = False
    # A time-varying graph: round t uses cycle[t % len(cycle)], and `edges` is their union (what
    # connectivity is checked on). Empty: the same graph every round.
    cycle: tuple[Graph, ...] = ()

    @classmethod
    def from_pairs(
        cls,
        workers: int,
        pairs: np.ndarray | list,
        cayley: CayleyStructure | None = None,
        directed: bool = False,
    ) -> Graph:
        """Any node pairs: both orders count as one edge (directed: (i, j) is the link i -> j),
        duplicates and self-loops are dropped."""
        p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        low, high = (p[:, 0], p[:, 1]) if directed else (p.min(axis=1), p.max(axis=1))
        keys = np.sort(low[low != high] * workers + high[low != high])
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys
        return cls(workers, np.stack(np.divmod(keys, workers), axis=1), cayley, directed)

    @classmethod
    def from_adjacency(cls, adjacency: np.ndarray) -> Graph:
        """From a dense symmetric boolean matrix (the diagonal is ignored)."""
        a = np.asarray(adjacency, dtype=bool)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise UsageError(f"adjacency must be a square (N, N) matrix, got shape {a.shape}")
        if not np.array_equal(a, a.T):
            raise UsageError(
                "adjacency must be symmetric (undirected graph); got an asymmetric one"
            )
        return cls.from_pairs(len(a), np.argwhere(np.triu(a, k=1)))

    @property
    def num_edges(self) -> int:
        """Undirected edges, or directed links."""
        return len(self.edges)

    @property
    def degrees(self) -> np.ndarray:
        """Neighbours of each node; directed: out-neighbours (the workers each one sends to)."""
        ends = self.edges[:, 0] if self.directed else self.edges.ravel()
        return np.bincount(ends, minlength=self.workers)

    @property
    def period(self) -> int:
        """Rounds after which the graph repeats: 1 for a static graph."""
        return max(1, len(self.cycle))

    def at(self, round_index: int) -> Graph:
        """The graph used in round `round_index` (itself, unless it is time-varying)."""
        return self.cycle[round_index % len(self.cycle)] if self.cycle else self

    def adjacency(self) -> np.ndarray:
        """Dense (N, N) boolean matrix: for small graphs only (tests, the reference simulator).
        Directed: entry (i, j) is the link i -> j."""
        a = np.zeros((self.workers, self.workers), dtype=bool)
        a[self.edges[:, 0], self.edges[:, 1]] = True
        if not self.directed:
            a[self.edges[:, 1], self.edges[:, 0]] = True
        return a

    def both_ways(self) -> tuple[np.ndarray, np.ndarray]:
        """(sources, targets): every edge in both directions, (i, j) ones first."""
        i, j = self.edges[:, 0], self.edges[:, 1]
        return np.concatenate([i, j]), np.concatenate([j, i])

    def sparse_adjacency(self) -> sp.csr_array:
        """Entry (i, j) is 1 for an edge, or a link i -> j of a directed graph."""
        ends = (self.edges[:, 0], self.edges[:, 1]) if self.directed else self.both_ways()
        ones = np.ones(len(ends[0]), dtype=np.int8)
        return sp.csr_array((ones, ends), shape=(self.workers, self.workers))

    def keep_edges(self, keep: np.ndarray) -> Graph:
        """The subgraph with the edges where `keep` (E,) is true; it loses any symmetry."""
        return Graph(self.workers, self.edges[keep], directed=self.directed)

    def among(self, present: np.ndarray) -> Graph:
        """The subgraph of the edges whose two ends are both `present` (N,)."""
        return self.keep_edges(present[self.edges[:, 0]] & present[self.edges[:, 1]])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Graph)
            and self.workers == other.workers
            and self.directed == other.directed
            and np.array_equal(self.edges, other.edges)
            and self.cycle == other.cycle
        )

    __hash__ = None  # type: ignore[assignment]  # mutable array inside: not hashable


def is_connected(graph: Graph) -> bool:
    """One connected component (N <= 1 counts as connected); for a directed graph, one strongly
    connected component (of the union of its rounds, for a time-varying one)."""
    if graph.workers <= 1:
        return True
    components, _ = connected_components(
        graph.sparse_adjacency(), directed=graph.directed, connection="strong"
    )
    return components == 1


def drop_links(graph: Graph, prob: float, rng: np.random.Generator) -> Graph:
    """Each undirected edge independently down with probability `prob` (both directions together,
    so W stays symmetric); each link of a directed graph on its own (its sender then splits its
    mass over the links left). The result may be disconnected: fine for a single round."""
    prob = _check_prob("link_failure_prob", prob)
    return graph.keep_edges(rng.random(graph.num_edges) >= prob)


def round_graph(base: Graph, link_failure_prob: float, seed: int, round_index: int) -> Graph:
    """The graph used in round `round_index`: `base` if the failure probability is 0, else `base`
    with links dropped by an rng derived statelessly from (seed, round_index).

    Stateless so that a resumed run, or any process of the distributed engine, computes the same
    graph for the same round without saving or communicating rng state.
    """
    prob = _check_prob("link_failure_prob", link_failure_prob)
    seed = _check_nonneg_int("seed", seed)
    round_index = _check_nonneg_int("round_index", round_index)
    if prob == 0.0:
        return base
    rng = np.random.default_rng([seed, round_index, _LINK_FAILURE_TAG])
    return drop_links(base, prob, rng)
