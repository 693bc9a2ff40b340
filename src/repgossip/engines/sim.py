"""The one-process engine: every worker in one Population, gossip as one matrix product.

Gossip replaces each worker's shared block x_i by sum_j W_ij x_j, i.e. X <- W X on the stacked
block. Sparse graphs use a sparse W so a round costs O(edges x P), not O(N^2 x P).
"""

from __future__ import annotations

import numpy as np
import torch

from repgossip.metrics import bytes_per_round
from repgossip.population import Population
from repgossip.topology import mixing_matrix, round_adjacency

SPARSE_BELOW_DENSITY = 0.25  # use a sparse W when at most this share of its entries is non-zero


class Gossip:
    """The per-round graph and mixing matrix (link failures included) and their application."""

    def __init__(
        self, base_adjacency: np.ndarray, mixing: str, link_failure_prob: float, seed: int
    ):
        self.base_adjacency = base_adjacency
        self.mixing = mixing
        self.link_failure_prob = link_failure_prob
        self.seed = seed
        self._static = mixing_matrix(base_adjacency, mixing) if link_failure_prob == 0 else None

    @property
    def is_static(self) -> bool:
        return self._static is not None

    def round_graph(self, round_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(adjacency, W) used in round `round_index`; the same for every process and on resume."""
        if self._static is not None:
            return self.base_adjacency, self._static
        adj = round_adjacency(self.base_adjacency, self.link_failure_prob, self.seed, round_index)
        return adj, mixing_matrix(adj, self.mixing)


class SimEngine:
    """All workers in this process."""

    def __init__(self, schedule: Gossip) -> None:
        self.schedule = schedule
        self._static_weights: torch.Tensor | None = None

    def _weights(self, round_index: int, device: torch.device) -> tuple[np.ndarray, torch.Tensor]:
        adj, w = self.schedule.round_graph(round_index)
        if self._static_weights is not None:
            return adj, self._static_weights
        weights = torch.as_tensor(w, dtype=torch.float32, device=device)
        if np.count_nonzero(w) <= SPARSE_BELOW_DENSITY * w.size:
            weights = weights.to_sparse()
        if self.schedule.is_static:
            self._static_weights = weights
        return adj, weights

    def gossip(self, pop: Population, part: str, round_index: int) -> int:
        """Mix the `part` block of every worker with its neighbours'; return the bytes sent."""
        adj, weights = self._weights(round_index, pop.device)
        cols = pop.layout.part(part)
        block = pop.params[:, cols]
        block.copy_(weights @ block)
        shared = cols.stop - cols.start
        return bytes_per_round(adj, shared)

    def shared_block(self, pop: Population, part: str) -> torch.Tensor:
        """Every worker's `part` parameters (all workers live here)."""
        return pop.params[:, pop.layout.part(part)]
