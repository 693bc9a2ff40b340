"""Communication graphs, mixing matrices and the per-round graph schedule.

Gossip averages the shared parameters with a symmetric doubly stochastic matrix W built on a graph:
symmetric and doubly stochastic so that the network average is preserved every round and all workers
converge to it; the spectral gap of W says how fast.

A directed graph (links sender -> receiver; `Graph.directed`) has no symmetric W. There each sender
splits its mass evenly over itself and its out-neighbours: a column-stochastic P (push-sum, as in
stochastic gradient push), stored like W and applied by the same slots. A time-varying graph
(`Graph.cycle`) uses another graph each round, repeating with a fixed period.

Everything here is sparse: a graph is its edge list and W one weight per edge plus one per node, so
memory and time grow with N + E, not N^2, and 10,000 workers on a ring cost kilobytes. Dense
matrices exist only as views for small graphs (tests, the reference simulator).
"""

from __future__ import annotations

import dataclasses
import errno
import math
import numbers
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from repgossip import memory
from repgossip.errors import UsageError
from repgossip.registry import API_PREFIX, Registry, call_with_accepted

# Files read as dense (N, N) matrices: an adjacency for `topology`, a mixing matrix W for `mixing`.
ADJACENCY_SUFFIXES: tuple[str, ...] = (".npy", ".npz")
MIXING_FILE_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".txt", ".csv")
_SYMMETRY_ATOL = 1e-9  # tolerance of a user W's symmetry and row/column sums (float round-off)

# Tags mixed into the seed sequences so that the random streams used here never coincide with
# each other or with the streams other modules derive from the same run seed.
_ERDOS_RENYI_TAG = 0x45524752  # "ERGR"
_LINK_FAILURE_TAG = 0x4C4E4B46  # "LNKF"
_ER_MAX_ATTEMPTS = 50
_EDGE_SPLIT = re.compile(r"[\s,]+")
_ER_DRAW_ELEMENTS = 1 << 22  # uniforms drawn at a time for erdos_renyi: bounded memory at any N
# Up to this size the spectral gap comes from a dense eigendecomposition (exact, well under a
# second); beyond it a dense N x N matrix costs seconds to minutes and N^2 memory, so the gap comes
# from the graph's symmetry (the topologies built here) or from a sparse Lanczos solver.
DENSE_SPECTRUM_LIMIT = 2048
# Lanczos budget for the gap of other graphs beyond that size: about two seconds at 10,000 nodes.
# Well-connected graphs (erdos_renyi, star) converge in a fraction of it; a long path (gap ~1e-7)
# does not, and its gap is reported as unknown rather than waiting minutes.
_LANCZOS_VECTORS = 64
_LANCZOS_RESTARTS = 100
# Peak bytes per link of building a graph and its gossip plan (edge list, sort keys, W, slots):
# 145-147 measured for complete and erdos_renyi graphs of 3,000 workers.
PLAN_BYTES_PER_LINK = 150
# Peak bytes per node beyond its links (node ids, degrees, W's diagonal): a ring of 10^6 workers
# peaks at 194 bytes per node, 150 of them for its one link per node.
PLAN_BYTES_PER_NODE = 44
# Peak bytes of parsing an edge list, per byte of the file (lines, tuples, ints): 20 measured.
EDGE_LIST_BYTES_PER_FILE_BYTE = 20
_MAX_NODES = 1 << 64  # sizes are computed as if a larger N were this one: it is refused anyway


def _valid_topologies() -> str:
    return TOPOLOGIES.valid()


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


def _cayley(shape: tuple[int, ...], offsets: list[tuple[int, ...]]) -> Graph:
    structure = CayleyStructure.from_offsets(shape, offsets)
    return Graph.from_pairs(math.prod(shape), structure.edge_pairs(), structure)


def _ring(workers: int) -> Graph:
    """Each worker linked to the next, in a cycle (degree 2)."""
    return _cayley((workers,), [(1,)])


def _is_composite(n: int) -> bool:
    return n >= 4 and any(n % d == 0 for d in range(2, math.isqrt(n) + 1))


def _torus_shape(workers: int) -> tuple[int, int]:
    """Most square r x c grid; a prime N > 3 has only 1 x N, which is a ring, not a torus."""
    r = max(d for d in range(1, math.isqrt(workers) + 1) if workers % d == 0)
    if r == 1 and workers > 3:
        below = next(n for n in range(workers - 1, 3, -1) if _is_composite(n))
        above = next(n for n in range(workers + 1, 2 * workers + 4) if _is_composite(n))
        raise UsageError(
            f"torus needs workers = r x c with r, c >= 2; {workers} is prime; "
            f"try {below} or {above}"
        )
    return r, workers // r


def _torus(workers: int) -> Graph:
    """The most square r x c grid with wrap-around (degree 4)."""
    return _cayley(_torus_shape(workers), [(0, 1), (1, 0)])


def _complete(workers: int) -> Graph:
    """Every pair linked: gossip is exact averaging."""
    return _cayley((workers,), [(o,) for o in range(1, workers)])


def _exponential_offsets(workers: int) -> list[int]:
    """1, 2, 4, ... below N: ceil(log2 N) of them."""
    return [2**j for j in range(workers.bit_length()) if 2**j < workers]


def _exponential(workers: int) -> Graph:
    """Each worker linked to those 1, 2, 4, ... positions away (degree ~2 log2 N)."""
    return _cayley((workers,), [(o,) for o in _exponential_offsets(workers)])


def _directed_cayley(workers: int, offsets: list[int]) -> Graph:
    """Links i -> i + o mod N for every o in `offsets`: a directed circulant graph, whose mixing
    matrix's spectrum, like an undirected one's, is a Fourier transform."""
    structure = CayleyStructure.from_offsets((workers,), [(o,) for o in offsets], directed=True)
    return Graph.from_pairs(workers, structure.edge_pairs(), structure, directed=True)


def _directed_ring(workers: int) -> Graph:
    """Each worker sends to the next only, i -> i + 1 mod N: the sparsest strongly connected
    graph (out-degree 1)."""
    return _directed_cayley(workers, [1])


def _directed_exponential(workers: int) -> Graph:
    """Each worker sends to those 1, 2, 4, ... positions ahead, i -> i + 2^k mod N for 2^k < N
    (out-degree ceil(log2 N)): the static graph of stochastic gradient push."""
    return _directed_cayley(workers, _exponential_offsets(workers))


def _one_peer_exponential(workers: int) -> Graph:
    """Time-varying: in round t each worker i sends to i + 2^(t mod T) mod N only, T = ceil(log2 N):
    one message per worker per round, yet exact averaging over a period when N is a power of 2
    (Assran et al., 2019). Its edges are the union over a period (the directed exponential
    graph)."""
    offsets = _exponential_offsets(workers)
    union = _directed_cayley(workers, offsets)
    if len(offsets) < 2:
        return union  # one offset (or none): the same graph every round
    return dataclasses.replace(union, cycle=tuple(_directed_cayley(workers, [o]) for o in offsets))


def _star(workers: int) -> Graph:
    """Worker 0 linked to every other worker."""
    leaves = np.arange(1, workers)
    return Graph.from_pairs(workers, np.stack([np.zeros_like(leaves), leaves], axis=1))


def _erdos_renyi_pairs(workers: int, edge_prob: float, rng: np.random.Generator) -> np.ndarray:
    """Pairs i < j with a uniform below `edge_prob` in row i, column j of an N x N uniform matrix,
    drawn a block of rows at a time: the same draws as the whole matrix, in bounded memory."""
    rows = max(1, _ER_DRAW_ELEMENTS // workers)
    pairs = []
    for start in range(0, workers, rows):
        block = rng.random((min(rows, workers - start), workers)) < edge_prob
        i, j = np.nonzero(block)
        i += start
        pairs.append(np.stack([i[i < j], j[i < j]], axis=1))
    return np.concatenate(pairs)


def _erdos_renyi(workers: int, edge_prob: float, seed: int) -> Graph:
    """Each pair linked with probability edge_prob, redrawn until connected.

    Redraws are deterministic, by attempt, so gossip can reach consensus and runs repeat."""
    if not (_is_real(edge_prob) and 0.0 < edge_prob <= 1.0):
        raise UsageError(f"edge_prob must be in (0, 1] for erdos_renyi, got {edge_prob!r}")
    for attempt in range(_ER_MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, attempt, _ERDOS_RENYI_TAG])
        graph = Graph.from_pairs(workers, _erdos_renyi_pairs(workers, edge_prob, rng))
        if is_connected(graph):
            return graph
    hint = min(1.0, 2.0 * math.log(workers) / workers)
    raise UsageError(
        f"erdos_renyi edge_prob={edge_prob} is too low for {workers} workers: no connected graph "
        f"in {_ER_MAX_ATTEMPTS} draws; use edge_prob >= ~{hint:.3g} (2 ln(N)/N)"
    )


def _parse_edge_line(line: str, path: Path, lineno: int) -> tuple[int, int] | None:
    """One 'i j' edge, or None for blank/comment lines; errors name the file and line number."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    tokens = [t for t in _EDGE_SPLIT.split(text) if t]
    try:
        if len(tokens) != 2:
            raise ValueError
        i, j = int(tokens[0]), int(tokens[1])
    except ValueError:
        raise UsageError(
            f"edge list {path} line {lineno}: expected two integer node ids 'i j', got {text!r}"
        ) from None
    if i < 0 or j < 0:
        raise UsageError(f"edge list {path} line {lineno}: node ids must be >= 0, got {text!r}")
    if i == j:
        raise UsageError(f"edge list {path} line {lineno}: self-loop {i}-{j} is not allowed")
    return i, j


def _user_path(name: str | os.PathLike) -> Path:
    """`name` with a leading ~ expanded; left as it is where that fails (`~nosuchuser/x`), which
    then reads as a missing file instead of a RuntimeError traceback."""
    try:
        return Path(name).expanduser()
    except RuntimeError:
        return Path(name)


def _file_problem(path: Path) -> str | None:
    """None if `path` is a file, else why not, in words for a one-line error. `is_file` raises
    OSError for a name the OS refuses to look up (a component over 255 bytes, a permission)."""
    try:
        if path.is_file():
            return None
    except OSError as exc:
        hint = "; each name in a path may have at most 255 bytes"
        reason = (exc.strerror or _one_line(exc)) + (
            hint if exc.errno == errno.ENAMETOOLONG else ""
        )
        return f"cannot look up {str(path)!r}: {reason}"
    return f"no such file: {str(path)!r}"


def _topology_file(name: str) -> Path:
    """The file a topology name that is not a built-in one must be; else the list of valid names."""
    path = _user_path(name)
    problem = _file_problem(path)
    if problem is not None:
        raise UsageError(f"unknown topology {name!r}; valid: {_valid_topologies()} ({problem})")
    return path


def _edge_list(path: Path, workers: int, directed: bool = False) -> Graph:
    """Read a user-supplied graph; node count must match `workers` so no worker is silently idle.
    Directed: each line `i j` is the link i -> j."""
    try:
        size = path.stat().st_size
        memory.check_fits(
            size * EDGE_LIST_BYTES_PER_FILE_BYTE,
            f"parsing edge list {str(path)!r} ({memory.count_text(size)} bytes)",
            "save the graph as a .npy adjacency or use a named topology",
        )
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read edge list {path}: {exc}") from None
    edges = [e for n, ln in enumerate(lines, 1) if (e := _parse_edge_line(ln, path, n)) is not None]
    nodes = max((max(e) for e in edges), default=-1) + 1
    if nodes != workers:
        raise UsageError(f"edge list {path} has {nodes} nodes but workers={workers}")
    return Graph.from_pairs(workers, edges, directed=directed)


# Named topologies: builders called with whichever of `workers`, `edge_prob`, `seed` they name.
TOPOLOGIES: Registry[Callable[..., Graph]] = Registry(
    "topology", extra="a path to an edge-list file or a .npy/.npz adjacency"
)
for _name, _builder in (("ring", _ring), ("torus", _torus), ("erdos_renyi", _erdos_renyi),
                        ("complete", _complete), ("exponential", _exponential), ("star", _star),
                        ("directed_ring", _directed_ring),
                        ("directed_exponential", _directed_exponential),
                        ("one_peer_exponential", _one_peer_exponential)):  # fmt: skip
    TOPOLOGIES.register(_name, _builder)
# The directed ones (push-sum gossip); a file is directed when the config says `directed=true`.
DIRECTED_TOPOLOGIES = ("directed_ring", "directed_exponential", "one_peer_exponential")


def build_graph(
    name: str, workers: int, *, edge_prob: float = 0.3, seed: int = 0, directed: bool = False
) -> Graph:
    """The communication graph: `name` is one of TOPOLOGIES or a path to an edge-list or adjacency
    file, read as directed links (i -> j) when `directed`.

    Raises UsageError if the graph is disconnected (for N > 1; a directed graph must be strongly
    connected, a time-varying one over a period): gossip on a disconnected graph never reaches
    consensus, which would silently turn a decentralized run into several independent ones.
    """
    workers = _check_workers(workers)
    seed = _check_nonneg_int("seed", seed)
    name = str(name)
    check_graph_fits(name, workers, edge_prob)
    if name in TOPOLOGIES:
        _check_directed_name(name, directed)
        graph = call_with_accepted(
            TOPOLOGIES.get(name), workers=workers, edge_prob=edge_prob, seed=seed
        )
    else:
        graph = _graph_file(_topology_file(name), workers, directed)
    _require_connected(graph, f"topology {name!r}")
    return graph


def _check_directed_name(name: str, directed: bool) -> None:
    """`directed=true` says how to read a file; with an undirected named topology it is a
    mistake, refused rather than ignored."""
    if directed and name not in DIRECTED_TOPOLOGIES:
        raise UsageError(
            f"directed=true reads a topology file as directed links, but topology {name!r} is "
            f"undirected; use {', '.join(DIRECTED_TOPOLOGIES)} or an edge-list file"
        )


def _require_connected(graph: Graph, what: str) -> None:
    """Gossip on a disconnected graph never reaches consensus: refuse it before any training.
    Push-sum on a directed graph needs every worker to reach every other along links."""
    if is_connected(graph):
        return
    if not graph.directed:
        raise UsageError(
            f"{what} with {graph.workers} workers is disconnected; gossip needs a connected graph"
        )
    over = " over one period" if graph.cycle else ""
    raise UsageError(
        f"{what} with {graph.workers} workers is not strongly connected{over}; push-sum gossip "
        "needs a directed path from every worker to every other"
    )


def _graph_file(path: Path, workers: int, directed: bool = False) -> Graph:
    """A .npy/.npz file is a dense adjacency matrix; any other file is an edge list."""
    if path.suffix.lower() in ADJACENCY_SUFFIXES:
        source = f"adjacency file {path}"
        array = _load_array(path, "adjacency", source)
        return _graph_from_adjacency(array, workers, source, directed)
    return _edge_list(path, workers, directed)


def _load_array(path: Path, key: str, source: str) -> np.ndarray:
    """np.load without pickle (a matrix file must not be able to run code when it is read); an .npz
    must hold one array, or name the one to use `key`, so the choice is never a guess."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return np.asarray(loaded)
        with loaded:
            names = list(loaded.files)
            chosen = names[0] if len(names) == 1 else key if key in names else None
            if chosen is not None:
                return np.asarray(loaded[chosen])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise UsageError(
            f"cannot read {source} with np.load(allow_pickle=False): {_one_line(exc)}; "
            "save a plain numeric (N, N) array with np.save or np.savez"
        ) from None
    raise UsageError(
        f"{source} holds arrays {names}; it must hold exactly one array, or one named {key!r}"
    )


def _check_matrix(a: np.ndarray, source: str, workers: int | None) -> np.ndarray:
    """The checks an adjacency and a mixing matrix share: numeric, square, N = workers, finite,
    no negative entry. Returns it as float64."""
    if a.dtype.kind not in "biuf":
        raise UsageError(f"{source} must hold numbers or booleans, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        want = f"{workers} x {workers}" if workers is not None else "a square N x N (N >= 1)"
        raise UsageError(f"{source} has shape {a.shape}; it must be {want}, one row per worker")
    if workers is not None and len(a) != workers:
        raise UsageError(f"{source} is {len(a)} x {len(a)} but workers={workers}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        i, j = np.argwhere(~np.isfinite(a))[0]
        raise UsageError(f"{source} has a non-finite entry {a[i, j]} at ({i}, {j})")
    if (a < 0).any():
        i, j = np.argwhere(a < 0)[0]
        raise UsageError(f"{source} has a negative entry {a[i, j]:.6g} at ({i}, {j}); need >= 0")
    return a


def _asymmetry(a: np.ndarray, atol: float, source: str, needs: str) -> None:
    """Refuse a matrix whose largest |a_ij - a_ji| exceeds `atol`, naming that pair."""
    gap = np.abs(a - a.T)
    i, j = np.unravel_index(np.argmax(gap), gap.shape)
    if gap[i, j] > atol:
        raise UsageError(
            f"{source} is not symmetric: ({i}, {j}) = {a[i, j]:.17g} but ({j}, {i}) = "
            f"{a[j, i]:.17g}; {needs}"
        )


def _graph_from_adjacency(
    adjacency: np.ndarray, workers: int | None, source: str, directed: bool = False
) -> Graph:
    """A validated dense adjacency: nonzero off-diagonal entries are edges, the diagonal is ignored
    (a self-loop means nothing to gossip). Exact symmetry, since an edge is either there or not;
    directed: any matrix, A_ij != 0 being the link i -> j."""
    a = _check_matrix(np.asarray(adjacency), source, workers)
    if directed:
        return Graph.from_pairs(len(a), np.argwhere(a != 0), directed=True)
    _asymmetry(a, 0.0, source, "an undirected graph needs A == A.T")
    return Graph.from_pairs(len(a), np.argwhere(np.triu(a != 0, k=1)))


def _networkx_graph(g: Any, workers: int | None) -> Graph:
    """A networkx graph whose nodes are the worker ids 0..N-1 (any other labels would need a
    mapping to workers that only the user knows); a directed one (nx.DiGraph, an edge u -> v: u
    sends to v) is gossiped by push-sum, as the directed topologies are."""
    directed = bool(callable(getattr(g, "is_directed", None)) and g.is_directed())
    nodes = list(g.nodes)
    bad = [v for v in nodes if not _is_node_id(v, len(nodes))]
    if bad or not nodes:
        shown = repr(bad[0]) if bad else "none"
        raise UsageError(
            f"networkx graph nodes must be exactly the integers 0..N-1 (N >= 1); got node {shown} "
            f"among {len(nodes)} nodes (relabel with nx.convert_node_labels_to_integers)"
        )
    if workers is not None and len(nodes) != workers:
        raise UsageError(f"networkx graph has {len(nodes)} nodes but workers={workers}")
    edges = np.array([(int(u), int(v)) for u, v in g.edges()], dtype=np.int64)
    return Graph.from_pairs(len(nodes), edges, directed=directed)


def _is_node_id(v: object, n: int) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and bool(0 <= v < n)


def _as_array(obj: Any) -> np.ndarray:
    """A numpy view of a numpy array, a torch tensor (duck-typed: torch is not imported here) or
    nested lists."""
    if callable(getattr(obj, "detach", None)) and callable(getattr(obj, "cpu", None)):
        tensor = obj.detach().cpu()
        try:
            return tensor.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks
            return tensor.double().numpy()
    try:
        return np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"cannot read a {type(obj).__name__} as an (N, N) adjacency array: {_one_line(exc)}"
        ) from None


def graph_from_object(obj: object, workers: int | None) -> Graph:
    """A graph built in Python rather than named: a networkx graph (anything with `.nodes` and
    `.edges`, nodes 0..N-1) or a numpy/torch (N, N) adjacency, validated as a .npy adjacency file is.

    Refused if disconnected, or (when `workers` is given) if it does not have `workers` nodes.
    """
    if workers is not None:
        workers = _check_workers(workers)
    if hasattr(obj, "nodes") and hasattr(obj, "edges"):
        graph, what = _networkx_graph(obj, workers), "networkx graph"
    else:
        what = "adjacency array"
        graph = _graph_from_adjacency(_as_array(obj), workers, what)
    _require_connected(graph, what)
    return graph


def _expected_links(name: str, workers: int, edge_prob: float) -> int:
    """Links a named topology will have (in expectation for erdos_renyi); 0 for edge-list files,
    whose size the file itself bounds. Integer arithmetic, so no N overflows a float."""
    n = min(workers, _MAX_NODES)
    pairs = n * (n - 1) // 2
    if name == "complete":
        return pairs
    if name == "erdos_renyi":
        usable = _is_real(edge_prob) and 0.0 <= edge_prob <= 1.0  # else the builder refuses it
        return int(float(edge_prob) * pairs) if usable else pairs
    offsets = [1 << j for j in range(n.bit_length()) if 1 << j < n]
    if name == "exponential":  # one link per node for each offset 2^j < N; N/2 for the offset N/2
        return sum(n // 2 if 2 * o == n else n for o in offsets)
    if name == "directed_exponential":
        return n * len(offsets)
    if name == "one_peer_exponential":  # the union and each round's graph: twice the union
        return 2 * n * len(offsets)
    return {"ring": n if n > 2 else n - 1, "torus": 2 * n, "star": n - 1,
            "directed_ring": n if n > 1 else 0}.get(name, 0)  # fmt: skip


def graph_bytes(name: str, workers: int, edge_prob: float) -> int:
    """Peak bytes of building the graph and its gossip plan: its links and its O(N) node arrays."""
    links = _expected_links(name, workers, edge_prob)
    return links * PLAN_BYTES_PER_LINK + min(workers, _MAX_NODES) * PLAN_BYTES_PER_NODE


def _physical_memory_bytes() -> int:
    return memory.physical_memory_bytes()


def check_graph_fits(name: str, workers: int, edge_prob: float) -> None:
    """Refuse in one line a graph whose gossip plan cannot fit in this machine's memory, rather
    than letting numpy raise MemoryError or the operating system kill the run partway through
    building it. Counts the node arrays too, so a ring of 10^12 workers is refused."""
    need, have = graph_bytes(name, workers, edge_prob), _physical_memory_bytes()
    if need <= have:
        return
    dense = name in ("complete", "erdos_renyi")
    advice = (
        "use a sparser graph (ring, torus, exponential, or erdos_renyi with a smaller edge_prob)"
        if dense
        else "use fewer workers"
    )
    raise UsageError(
        f"topology {name!r} with {memory.int_text(workers)} workers has "
        f"~{memory.count_text(_expected_links(name, workers, edge_prob))} links; planning gossip "
        f"over them needs ~{memory.format_bytes(need)}, more than this machine's "
        f"{memory.format_bytes(have)}; {advice}"
    )


def is_connected(graph: Graph) -> bool:
    """One connected component (N <= 1 counts as connected); for a directed graph, one strongly
    connected component (of the union of its rounds, for a time-varying one)."""
    if graph.workers <= 1:
        return True
    components, _ = connected_components(
        graph.sparse_adjacency(), directed=graph.directed, connection="strong"
    )
    return components == 1


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


def spectral_gap(mixing: Mixing) -> float | None:
    """1 - second-largest eigenvalue modulus of W: the per-round contraction of the distance to
    consensus. 0 for a disconnected graph, 1 for exact averaging and for N = 1.

    Exact from the graph's symmetry where it has one, by a dense eigendecomposition up to
    DENSE_SPECTRUM_LIMIT workers, else by Lanczos on W or, for a W that is not symmetric but
    reversible (`uniform_row`), on the symmetric matrix similar to it (`_symmetric_form`); None
    where Lanczos does not converge or no such form exists. Directed graphs: `_directed_gap`.
    """
    graph = mixing.graph
    if graph.workers <= 1:
        return 1.0
    if graph.directed:
        return _directed_gap(mixing)
    if graph.cayley is not None and _is_uniform_on_regular(mixing, graph.cayley.degree):
        # A d-regular graph under every built-in rule has W = (I + A) / (1 + d).
        eigenvalues = (1.0 + graph.cayley.adjacency_eigenvalues()) / (1.0 + graph.cayley.degree)
        slem = float(np.abs(eigenvalues[1:]).max())
    elif graph.workers <= DENSE_SPECTRUM_LIMIT:
        dense = mixing.dense()
        moduli = np.abs(np.linalg.eigvalsh(dense) if mixing.symmetric else np.linalg.eigvals(dense))
        slem = float(np.sort(moduli)[-2])
    else:
        form = _symmetric_form(mixing)
        largest = None if form is None else _deflated_largest_modulus(*form)
        if largest is None:
            return None
        slem = largest
    return _gap(slem)


def _is_uniform_on_regular(mixing: Mixing, degree: int) -> bool:
    """Whether every weight of W is 1/(1 + degree): the closed form of the symmetric graphs holds
    for the built-in rules, not necessarily for a rule registered by a user."""
    share = 1.0 / (1.0 + degree)
    weights = [mixing.edge_weights, mixing.self_weights]
    weights += [] if mixing.back_weights is None else [mixing.back_weights]
    # relative: W_ii = 1 - d/(1 + d) is off 1/(1 + d) by rounding (4e-14 on complete graphs of
    # a few thousand), which must not turn off the exact form
    return all(np.allclose(w, share, rtol=1e-9, atol=0.0) for w in weights)


_ROUND_OFF = 1e-12  # moduli below this are an exact zero (exact averaging) blurred by float


def _gap(slem: float, rounds: int = 1) -> float:
    """1 - the per-round rate of a second-largest eigenvalue modulus over `rounds` rounds, in
    [0, 1]; exact averaging (a modulus at rounding level) reports exactly 1."""
    rate = 0.0 if slem < _ROUND_OFF else slem ** (1.0 / rounds)
    return float(min(1.0, max(0.0, 1.0 - rate)))


def _directed_gap(mixing: Mixing) -> float | None:
    """1 - |lambda_2| of push-sum's P (not symmetric: its eigenvalues are complex), the
    asymptotic per-round rate at which the de-biased values z_i = x_i / w_i approach consensus.
    For a time-varying graph, 1 - |lambda_2(P_{T-1} ... P_0)|^(1/T): the same per-round rate,
    averaged over a period of T rounds (1 where a period averages exactly).

    Exact by Fourier transform for the directed circulant topologies (every period's matrices
    share one eigenbasis) at any size, by a dense eigendecomposition up to DENSE_SPECTRUM_LIMIT
    workers, None beyond (no sparse solver is used for non-symmetric P).
    """
    graphs = mixing.graph.cycle or (mixing.graph,)
    if all(g.cayley is not None for g in graphs):
        product = np.ones(mixing.graph.workers, dtype=np.complex128)
        for g in graphs:
            assert g.cayley is not None
            product *= (1.0 + g.cayley.spectrum()) / (1.0 + g.cayley.degree)
        slem = float(np.abs(product[1:]).max())
    elif mixing.graph.workers <= DENSE_SPECTRUM_LIMIT:
        dense = np.eye(mixing.graph.workers)
        for g in graphs:
            dense = mixing_matrix(g).sparse() @ dense
        slem = float(np.sort(np.abs(np.linalg.eigvals(dense)))[-2])
    else:
        return None
    return _gap(slem, rounds=len(graphs))


_REVERSIBLE_TOLERANCE = 1e-9


def _symmetric_form(mixing: Mixing) -> tuple[sp.csr_array, np.ndarray] | None:
    """A symmetric S with W's eigenvalues and S's unit eigenvector u for eigenvalue 1, or None.

    A symmetric W is its own form, u = 1/sqrt(N). A row-stochastic W that is reversible, pi_i W_ij
    = pi_j W_ji with pi_i = 1 / W_ii (uniform_row: W_ij = 1/(1 + d_i), so pi_i = 1 + d_i), is
    similar to S = Pi^(1/2) W Pi^(-1/2), which is symmetric, with u proportional to sqrt(pi).
    That puts the Lanczos solver within reach of the authors' weights beyond the dense limit.
    """
    w, n = mixing.sparse(), mixing.graph.workers
    if mixing.symmetric:
        return w, np.full(n, 1.0 / math.sqrt(n))
    if np.any(mixing.self_weights <= 0):
        return None
    root = np.sqrt(1.0 / mixing.self_weights)  # sqrt(pi)
    form = sp.csr_array(sp.diags_array(root) @ w @ sp.diags_array(1.0 / root))
    # W_ii is 1 minus the row's other weights, so pi carries their rounding: a star's hub of
    # 10,000 leaves leaves an asymmetry of 7e-12. A W that is not reversible differs by the order
    # of its weights, so a tolerance far above rounding and far below any weight tells them apart.
    if abs(form - form.T).max() > _REVERSIBLE_TOLERANCE:
        return None
    return sp.csr_array((form + form.T) / 2), root / np.linalg.norm(root)


def _deflated_largest_modulus(form: sp.csr_array, top: np.ndarray) -> float | None:
    """Largest |eigenvalue| of the symmetric `form` without its eigenvector `top` (eigenvalue 1,
    consensus), by Lanczos."""
    n = form.shape[0]
    top = top[:, None]

    def apply(x: np.ndarray) -> np.ndarray:
        columns = x.reshape(n, -1)
        return (form @ columns - top @ (top.T @ columns)).reshape(x.shape)

    operator = LinearOperator((n, n), matvec=apply, matmat=apply, dtype=np.float64)
    try:
        values = eigsh(
            operator,
            k=1,
            which="LM",
            tol=1e-10,
            ncv=min(n - 1, _LANCZOS_VECTORS),
            maxiter=_LANCZOS_RESTARTS,
            return_eigenvectors=False,
        )
    except ArpackNoConvergence:
        return None
    return float(np.abs(values).max())


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


def describe(
    name: str,
    workers: int,
    *,
    edge_prob: float = 0.3,
    mixing: str = "metropolis",
    seed: int = 0,
    directed: bool = False,
) -> dict:
    """JSON-able summary of a topology and its mixing matrix, for `repgossip topology` and logs;
    `name` and `mixing` may be files (an edge list or adjacency, a W matrix) as everywhere else.

    A directed graph adds `directed`, `column_stochastic` and `period` (rounds after which a
    time-varying graph repeats); its `edges` are directed links (of the union over a period), its
    degrees out-degrees, its `connected` strong connectivity, its `mixing` "out_degree" (see
    `_out_split`) and its `spectral_gap` the per-round rate of `_directed_gap`."""
    graph = build_graph(name, workers, edge_prob=edge_prob, seed=seed, directed=directed)
    w = mixing_matrix(graph, mixing)
    deg = graph.degrees
    info = {
        "topology": str(name),
        "workers": int(workers),
        "edges": graph.num_edges,
        "connected": is_connected(graph),
        "doubly_stochastic": is_doubly_stochastic(w),
        "spectral_gap": spectral_gap(w),
        "min_degree": int(deg.min()),
        "max_degree": int(deg.max()),
        "mean_degree": float(deg.mean()),
        "mixing": DIRECTED_MIXING if graph.directed else str(mixing),
    }
    if graph.directed:
        info |= {"directed": True, "column_stochastic": is_column_stochastic(w),
                 "period": graph.period}  # fmt: skip
    return info
