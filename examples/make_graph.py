"""Your own graph and mixing matrix as files: writes a small-world graph's adjacency and a W on it.

    python examples/make_graph.py DIR
    repgossip run --set workers=16 topology=DIR/adjacency.npy mixing=DIR/W.npy

W here is the "lazy" Metropolis matrix (I + W_metropolis) / 2: symmetric, non-negative, doubly
stochastic and zero off the graph's edges, which repgossip checks before a run starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import networkx as nx
import numpy as np


def lazy_metropolis(adjacency: np.ndarray) -> np.ndarray:
    degrees = adjacency.sum(1)
    w = adjacency / (1.0 + np.maximum(degrees[:, None], degrees[None, :]))
    np.fill_diagonal(w, 1.0 - w.sum(1))
    return (np.eye(len(w)) + w) / 2.0


def main(folder: Path, workers: int = 16) -> None:
    graph = nx.connected_watts_strogatz_graph(workers, k=4, p=0.2, seed=0)
    adjacency = nx.to_numpy_array(graph, nodelist=range(workers))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "adjacency.npy", adjacency)
    np.save(folder / "W.npy", lazy_metropolis(adjacency))
    print(f"wrote {folder / 'adjacency.npy'} and {folder / 'W.npy'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
