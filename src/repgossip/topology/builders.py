"""The named topologies (`TOPOLOGIES`), a graph from a name, a plug-in, a file or a networkx object
(`build_graph`, `graph_from_object`), and the memory a graph of N workers will take, checked
before it is built. A topology declares its own parameters (erdos_renyi's `edge_prob`:
repgossip.params), which are config keys when it is selected."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from repgossip import memory
from repgossip.errors import UsageError, described, user_code_failed
from repgossip.params import Param, defaults, with_params
from repgossip.registry import Factory, Registry, call_with_accepted, is_plugin_ref
from repgossip.topology.files import (
    ADJACENCY_SUFFIXES,
    EDGE_LIST_BYTES_PER_FILE_BYTE,
    _asymmetry,
    _check_matrix,
    _file_problem,
    _load_array,
    _parse_edge_line,
    _user_path,
)
from repgossip.topology.graph import (
    CayleyStructure,
    Graph,
    _check_nonneg_int,
    _check_workers,
    _is_real,
    _one_line,
    is_connected,
)

# Tags mixed into the seed sequences so that the random streams used here never coincide with
# each other or with the streams other modules derive from the same run seed.
_ERDOS_RENYI_TAG = 0x45524752  # "ERGR"
_ER_MAX_ATTEMPTS = 50
_ER_DRAW_ELEMENTS = 1 << 22  # uniforms drawn at a time for erdos_renyi: bounded memory at any N
# Peak bytes per link of building a graph and its gossip plan (edge list, sort keys, W, slots):
# 145-147 measured for complete and erdos_renyi graphs of 3,000 workers.
PLAN_BYTES_PER_LINK = 150
# Peak bytes per node beyond its links (node ids, degrees, W's diagonal): a ring of 10^6 workers
# peaks at 194 bytes per node, 150 of them for its one link per node.
PLAN_BYTES_PER_NODE = 44
_MAX_NODES = 1 << 64  # sizes are computed as if a larger N were this one: it is refused anyway


def _valid_topologies() -> str:
    return TOPOLOGIES.valid()


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


EDGE_PROB = Param(
    "edge_prob", 0.3, "probability of each link (redrawn until connected)",
    low=0, low_open=True, high=1,
)  # fmt: skip
# Named topologies: builders called with whichever of `workers`, `seed` and their own parameters
# they name. A plug-in is a function of the same arguments returning a networkx graph or an
# (N, N) adjacency (`graph_from_object`), or a Graph.
TOPOLOGIES: Registry[Callable[..., Graph]] = Registry(
    "topology",
    plugins=Factory(returns=" that returns a networkx graph or an (N, N) adjacency"),
    extra="a path to an edge-list file or a .npy/.npz adjacency",
)
for _name, _builder in (("ring", _ring), ("torus", _torus),
                        ("erdos_renyi", with_params(_erdos_renyi, EDGE_PROB)),
                        ("complete", _complete), ("exponential", _exponential), ("star", _star),
                        ("directed_ring", _directed_ring),
                        ("directed_exponential", _directed_exponential),
                        ("one_peer_exponential", _one_peer_exponential)):  # fmt: skip
    TOPOLOGIES.register(_name, _builder)
# The directed ones (push-sum gossip); a file is directed when the config says `directed=true`.
DIRECTED_TOPOLOGIES = ("directed_ring", "directed_exponential", "one_peer_exponential")


def build_graph(
    name: str, workers: int, *, seed: int = 0, directed: bool = False, **params: Any
) -> Graph:
    """The communication graph: `name` is one of TOPOLOGIES, a plug-in (`package.module:function`)
    or a path to an edge-list or adjacency file, read as directed links (i -> j) when `directed`.
    `params` are the topology's own (`edge_prob=0.5`); those of other topologies are ignored, so
    one call serves every name.

    Raises UsageError if the graph is disconnected (for N > 1; a directed graph must be strongly
    connected, a time-varying one over a period): gossip on a disconnected graph never reaches
    consensus, which would silently turn a decentralized run into several independent ones.
    """
    workers = _check_workers(workers)
    seed = _check_nonneg_int("seed", seed)
    name = str(name)
    check_graph_fits(name, workers, params.get("edge_prob", EDGE_PROB.default))
    if name in TOPOLOGIES:
        _check_directed_name(name, directed)
        builder = TOPOLOGIES.get(name)
        graph = call_with_accepted(
            builder, workers=workers, seed=seed, **_with_defaults(builder, params)
        )
    elif is_plugin_ref(name):
        graph = _plugin_graph(name, workers, seed, params)
        if directed and not graph.directed:
            raise UsageError(
                f"directed=true, but topology plug-in '{name}' returned an undirected graph; a "
                "plug-in gives directed links by returning a directed networkx graph or Graph"
            )
    else:
        graph = _graph_file(_topology_file(name), workers, directed)
    _require_connected(graph, f"topology {name!r}")
    return graph


def _with_defaults(builder: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """`params` with the builder's own parameters it lacks at their declared defaults."""
    return {**defaults(builder), **params}


def _plugin_graph(name: str, workers: int, seed: int, params: dict[str, Any]) -> Graph:
    """The graph a topology plug-in returns, checked as a graph handed over in Python is; a
    directed plug-in returns a directed Graph."""
    builder = TOPOLOGIES.get(name)
    try:
        made = call_with_accepted(
            builder, workers=workers, seed=seed, **_with_defaults(builder, params)
        )
    except UsageError:
        raise
    except Exception as err:
        raise user_code_failed(f"topology plug-in '{name}' raised {described(err)}", err) from None
    if not isinstance(made, Graph):
        return graph_from_object(made, workers)
    if made.workers != workers:
        raise UsageError(
            f"topology plug-in '{name}' returned {made.workers} nodes but workers={workers}"
        )
    return made


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


def as_array(obj: Any) -> np.ndarray:
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
        graph = _graph_from_adjacency(as_array(obj), workers, what)
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
    links = _expected_links(name, workers, edge_prob)
    advice = (
        "use a sparser graph (ring, torus, exponential, or erdos_renyi with a smaller edge_prob)"
        if dense
        else "use fewer workers"
    )
    raise UsageError(
        f"topology {name!r} with {memory.int_text(workers)} workers has "
        f"~{memory.count_text(links).lstrip('~')} links; planning gossip "
        f"over them needs ~{memory.format_bytes(need)}, more than this machine's "
        f"{memory.format_bytes(have)}; {advice}"
    )
