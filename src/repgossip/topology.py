"""Communication graphs, mixing matrices and the per-round graph schedule.

Gossip averages the shared parameters with a symmetric doubly stochastic matrix W built on a graph:
symmetric and doubly stochastic so that the network average is preserved every round and all workers
converge to it; the spectral gap of W says how fast. Only numpy is used, so the simulator, the
distributed engine and the CLI can build the same W without torch or scipy.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path

import numpy as np

from repgossip.errors import UsageError

TOPOLOGIES: tuple[str, ...] = ("ring", "torus", "erdos_renyi", "complete", "exponential", "star")
MIXING_RULES: tuple[str, ...] = ("metropolis", "max_degree")

# Tags mixed into the seed sequences so that the random streams used here never coincide with
# each other or with the streams other modules derive from the same run seed.
_ERDOS_RENYI_TAG = 0x45524752  # "ERGR"
_LINK_FAILURE_TAG = 0x4C4E4B46  # "LNKF"
_ER_MAX_ATTEMPTS = 50
_EDGE_SPLIT = re.compile(r"[\s,]+")


def _valid_topologies() -> str:
    return ", ".join(TOPOLOGIES) + ", or a path to an edge-list file"


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


def _as_adjacency(adj: np.ndarray) -> np.ndarray:
    """Boolean copy with zero diagonal; a square symmetric input is required so W is symmetric."""
    a = np.array(adj, dtype=bool)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise UsageError(f"adjacency must be a square (N, N) matrix, got shape {a.shape}")
    if not np.array_equal(a, a.T):
        raise UsageError("adjacency must be symmetric (undirected graph); got an asymmetric matrix")
    np.fill_diagonal(a, False)
    return a


def _from_offsets(workers: int, offsets: list[int]) -> np.ndarray:
    """Circulant graph i ~ i + o (mod N) for each offset o, symmetrised; self-loops dropped."""
    adj = np.zeros((workers, workers), dtype=bool)
    idx = np.arange(workers)
    for o in offsets:
        adj[idx, (idx + o) % workers] = True
    adj |= adj.T
    np.fill_diagonal(adj, False)
    return adj


def _ring(workers: int) -> np.ndarray:
    return _from_offsets(workers, [1])


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


def _torus(workers: int) -> np.ndarray:
    r, c = _torus_shape(workers)
    adj = np.zeros((workers, workers), dtype=bool)
    rows, cols = np.divmod(np.arange(workers), c)
    for dr, dc in ((0, 1), (1, 0)):
        nb = ((rows + dr) % r) * c + (cols + dc) % c
        adj[np.arange(workers), nb] = True
    adj |= adj.T
    np.fill_diagonal(adj, False)
    return adj


def _complete(workers: int) -> np.ndarray:
    return ~np.eye(workers, dtype=bool)


def _exponential(workers: int) -> np.ndarray:
    offsets = [2**j for j in range(workers.bit_length()) if 2**j < workers]
    return _from_offsets(workers, offsets)


def _star(workers: int) -> np.ndarray:
    adj = np.zeros((workers, workers), dtype=bool)
    adj[0, 1:] = adj[1:, 0] = True
    return adj


def _erdos_renyi(workers: int, edge_prob: float, seed: int) -> np.ndarray:
    """Redraw (deterministically, by attempt) until connected, so gossip can reach consensus."""
    if not (_is_real(edge_prob) and 0.0 < edge_prob <= 1.0):
        raise UsageError(f"edge_prob must be in (0, 1] for erdos_renyi, got {edge_prob!r}")
    upper = np.triu(np.ones((workers, workers), dtype=bool), k=1)
    for attempt in range(_ER_MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, attempt, _ERDOS_RENYI_TAG])
        adj = (rng.random((workers, workers)) < edge_prob) & upper
        adj |= adj.T
        if is_connected(adj):
            return adj
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


def _edge_list(name: str, workers: int) -> np.ndarray:
    """Read a user-supplied graph; node count must match `workers` so no worker is silently idle."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise UsageError(
            f"unknown topology {name!r}; valid: {_valid_topologies()} (no such file: {str(path)!r})"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read edge list {path}: {exc}") from None
    edges = [e for n, ln in enumerate(lines, 1) if (e := _parse_edge_line(ln, path, n)) is not None]
    nodes = max((max(e) for e in edges), default=-1) + 1
    if nodes != workers:
        raise UsageError(f"edge list {path} has {nodes} nodes but workers={workers}")
    adj = np.zeros((workers, workers), dtype=bool)
    if edges:
        ij = np.asarray(edges)
        adj[ij[:, 0], ij[:, 1]] = adj[ij[:, 1], ij[:, 0]] = True
    return adj


def build_graph(name: str, workers: int, *, edge_prob: float = 0.3, seed: int = 0) -> np.ndarray:
    """Boolean adjacency (N, N), symmetric, zero diagonal.

    `name` is one of TOPOLOGIES or a path to an edge-list file. Raises UsageError if the graph is
    disconnected (for N > 1): gossip on a disconnected graph never reaches consensus, which would
    silently turn a decentralized run into several independent ones.
    """
    workers = _check_workers(workers)
    seed = _check_nonneg_int("seed", seed)
    name = str(name)
    builders = {
        "ring": _ring,
        "torus": _torus,
        "complete": _complete,
        "exponential": _exponential,
        "star": _star,
    }
    if name in builders:
        adj = builders[name](workers)
    elif name == "erdos_renyi":
        adj = _erdos_renyi(workers, edge_prob, seed)
    else:
        adj = _edge_list(name, workers)
    if not is_connected(adj):
        raise UsageError(
            f"topology {name!r} with {workers} workers is disconnected; "
            "gossip needs a connected graph"
        )
    return adj


def is_connected(adj: np.ndarray) -> bool:
    """Frontier BFS: O(N^2) total and no scipy dependency. N <= 1 counts as connected."""
    a = np.asarray(adj, dtype=bool)
    n = a.shape[0]
    if n <= 1:
        return True
    reached = np.zeros(n, dtype=bool)
    reached[0] = True
    frontier = np.array([0])
    while frontier.size:
        new = a[frontier].any(axis=0) & ~reached
        reached |= new
        frontier = np.flatnonzero(new)
    return bool(reached.all())


def _degrees(adj: np.ndarray) -> np.ndarray:
    return adj.sum(axis=1)


def mixing_matrix(adj: np.ndarray, rule: str = "metropolis") -> np.ndarray:
    """Symmetric doubly stochastic float64 W on the graph `adj` (weights only on edges + diagonal).

    metropolis: W_ij = 1/(1 + max(d_i, d_j)) on edges; needs only neighbours' degrees, so it is
    what a real deployment can compute locally. max_degree: W_ij = 1/(1 + d_max) on edges; uniform
    weights, slower on irregular graphs. The diagonal takes the rest, which is always > 0.
    """
    if rule not in MIXING_RULES:
        raise UsageError(f"unknown mixing rule {rule!r}; valid: {', '.join(MIXING_RULES)}")
    a = _as_adjacency(adj)
    deg = _degrees(a)
    if rule == "metropolis":
        weights = 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :]))
    else:
        weights = np.full(a.shape, 1.0 / (1.0 + (deg.max() if deg.size else 0)))
    W = np.where(a, weights, 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def spectral_gap(W: np.ndarray) -> float:
    """1 - second-largest eigenvalue modulus of symmetric W: the per-round contraction of the
    distance to consensus. 0 for a disconnected graph, 1 for exact averaging and for N = 1."""
    W = np.asarray(W, dtype=np.float64)
    if W.shape[0] <= 1:
        return 1.0
    moduli = np.sort(np.abs(np.linalg.eigvalsh(W)))[::-1]
    return float(min(1.0, max(0.0, 1.0 - moduli[1])))


def is_doubly_stochastic(W: np.ndarray, atol: float = 1e-9) -> bool:
    """Symmetric, nonnegative, rows and columns sum to 1: the conditions under which gossip keeps
    the network average unchanged and converges to it."""
    m = np.asarray(W, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.isfinite(m).all():
        return False
    return bool(
        np.allclose(m, m.T, rtol=0.0, atol=atol)
        and m.min(initial=0.0) >= -atol
        and np.allclose(m.sum(axis=0), 1.0, rtol=0.0, atol=atol)
        and np.allclose(m.sum(axis=1), 1.0, rtol=0.0, atol=atol)
    )


def drop_links(adj: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Each undirected edge independently down with probability `prob` (both directions together,
    so W stays symmetric). The result may be disconnected: that is fine for a single round.

    A full N x N block of uniforms is drawn whatever the graph, so the draws for a given rng state
    do not depend on which edges exist.
    """
    prob = _check_prob("link_failure_prob", prob)
    a = _as_adjacency(adj)
    n = a.shape[0]
    down = np.triu(rng.random((n, n)) < prob, k=1)
    down |= down.T
    return a & ~down


def round_adjacency(
    base_adj: np.ndarray, link_failure_prob: float, seed: int, round_index: int
) -> np.ndarray:
    """The graph used in round `round_index`: `base_adj` (a copy) if the failure probability is 0,
    else `base_adj` with links dropped by an rng derived statelessly from (seed, round_index).

    Stateless so that a resumed run, or any process of the distributed engine, computes the same
    graph for the same round without saving or communicating rng state.
    """
    prob = _check_prob("link_failure_prob", link_failure_prob)
    seed = _check_nonneg_int("seed", seed)
    round_index = _check_nonneg_int("round_index", round_index)
    if prob == 0.0:
        return _as_adjacency(base_adj)
    rng = np.random.default_rng([seed, round_index, _LINK_FAILURE_TAG])
    return drop_links(base_adj, prob, rng)


def describe(
    name: str,
    workers: int,
    *,
    edge_prob: float = 0.3,
    mixing: str = "metropolis",
    seed: int = 0,
) -> dict:
    """JSON-able summary of a topology and its mixing matrix, for `repgossip topology` and logs."""
    adj = build_graph(name, workers, edge_prob=edge_prob, seed=seed)
    W = mixing_matrix(adj, mixing)
    deg = _degrees(adj)
    return {
        "topology": str(name),
        "workers": int(workers),
        "edges": int(np.triu(adj, k=1).sum()),
        "connected": is_connected(adj),
        "doubly_stochastic": is_doubly_stochastic(W),
        "spectral_gap": spectral_gap(W),
        "min_degree": int(deg.min()),
        "max_degree": int(deg.max()),
        "mean_degree": float(deg.mean()),
        "mixing": mixing,
    }
