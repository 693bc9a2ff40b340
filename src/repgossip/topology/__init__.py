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

The package's modules, each importing only those before it: `graph` (the Graph), `files` (edge lists
and arrays read from files), `builders` (the named topologies and a graph from a name, file or
networkx object), `mixing` (W), `spectrum` (the spectral gap); `describe` here puts them together.
"""

from __future__ import annotations

from typing import Any

from repgossip.topology.builders import (
    DIRECTED_TOPOLOGIES,
    TOPOLOGIES,
    as_array,
    build_graph,
    check_graph_fits,
    graph_bytes,
    graph_from_object,
)
from repgossip.topology.graph import Graph, drop_links, is_connected, round_graph
from repgossip.topology.mixing import (
    DIRECTED_MIXING,
    MIXING_RULES,
    Mixing,
    check_mixing_rule,
    is_column_stochastic,
    is_doubly_stochastic,
    mixing_matrix,
)
from repgossip.topology.spectrum import spectral_gap

__all__ = [
    "DIRECTED_TOPOLOGIES",
    "MIXING_RULES",
    "TOPOLOGIES",
    "Graph",
    "Mixing",
    "as_array",
    "build_graph",
    "check_graph_fits",
    "check_mixing_rule",
    "describe",
    "drop_links",
    "graph_bytes",
    "graph_from_object",
    "is_column_stochastic",
    "is_connected",
    "is_doubly_stochastic",
    "mixing_matrix",
    "round_graph",
    "spectral_gap",
]


def describe(
    name: str,
    workers: int,
    *,
    mixing: str = "metropolis",
    seed: int = 0,
    directed: bool = False,
    **params: Any,
) -> dict:
    """JSON-able summary of a topology and its mixing matrix, for `repgossip topology` and logs;
    `name` and `mixing` may be files (an edge list or adjacency, a W matrix) as everywhere else.

    A directed graph adds `directed`, `column_stochastic` and `period` (rounds after which a
    time-varying graph repeats); its `edges` are directed links (of the union over a period), its
    degrees out-degrees, its `connected` strong connectivity, its `mixing` "out_degree" (see
    `_out_split`) and its `spectral_gap` the per-round rate of `_directed_gap`."""
    graph = build_graph(name, workers, seed=seed, directed=directed, **params)
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
