"""Gossip: the per-round mixing matrix and the one way every engine applies it.

Worker i's new shared block is sum_j W_ij x_j over j in its closed neighbourhood. Every engine
computes that sum in the same order (ascending j, self included) with separate, exactly rounded
multiplications and additions (no fused multiply-add, no BLAS reduction order), so the one-process
and the distributed engines produce bit-identical parameters however workers are laid out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from repgossip.topology import Graph, Mixing, mixing_matrix, round_graph

ROWS_PER_CHUNK_ELEMENTS = 1 << 24  # bound the temporary memory of a mixing step (64 MiB of float32)


@dataclass(frozen=True)
class Slots:
    """W as padded neighbour lists: row i mixes x[index[i, k]] with weight[i, k], k ascending.

    Rows with fewer neighbours are padded with (i, 0.0); adding 0.0 * x_i changes no bit of a finite
    sum, so padding never changes results.
    """

    index: np.ndarray  # (N, K) int64, ascending along k for the real entries
    weight: np.ndarray  # (N, K) float64

    @classmethod
    def from_mixing(cls, mixing: Mixing) -> Slots:
        """Each row's entries (self and neighbours) sorted by column, padded to the widest row."""
        n, nodes = mixing.graph.workers, np.arange(mixing.graph.workers)
        rows, cols, values = mixing.entries()
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        counts = np.bincount(rows, minlength=n)
        first = np.cumsum(counts) - counts
        position = np.arange(len(rows)) - first[rows]
        index = np.repeat(nodes[:, None], counts.max(), axis=1)
        weight = np.zeros(index.shape)
        index[rows, position] = cols
        weight[rows, position] = values
        return cls(index, weight)


@dataclass(frozen=True)
class RoundPlan:
    """Who takes part in a round and how they mix: the same in every process, derived from the seed."""

    graph: Graph  # links that are up between workers that are in
    mixing: Mixing  # W on that graph (absent workers keep their block)
    slots: Slots
    active: np.ndarray  # (N,) bool: workers that train and gossip this round


_DROPOUT_TAG = 0xD809  # separates the dropout stream from the link-failure stream of the same round


class GossipSchedule:
    """Each round's graph, mixing matrix and active workers, with link failures and dropouts.

    Stateless in the round index, so a resumed run or another process sees the same rounds.
    """

    def __init__(
        self,
        base_graph: Graph,
        mixing: str,
        link_failure_prob: float = 0.0,
        worker_dropout_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.base_graph = base_graph
        self.mixing = mixing
        self.base_mixing = mixing_matrix(base_graph, mixing)  # W of the graph without failures
        self.link_failure_prob = link_failure_prob
        self.worker_dropout_prob = worker_dropout_prob
        self.seed = seed
        self._static = None if self.varies else self._plan(self.base_mixing, None)

    @property
    def varies(self) -> bool:
        return self.link_failure_prob > 0 or self.worker_dropout_prob > 0

    def round_plan(self, round_index: int) -> RoundPlan:
        if self._static is not None:
            return self._static
        graph = round_graph(self.base_graph, self.link_failure_prob, self.seed, round_index)
        active = None
        if self.worker_dropout_prob > 0:
            rng = np.random.default_rng([self.seed, round_index, _DROPOUT_TAG])
            active = rng.random(graph.workers) >= self.worker_dropout_prob
            graph = graph.among(active)
        return self._plan(mixing_matrix(graph, self.mixing), active)

    @staticmethod
    def _plan(mixing: Mixing, active: np.ndarray | None) -> RoundPlan:
        everyone = np.ones(mixing.graph.workers, dtype=bool)
        slots = Slots.from_mixing(mixing)
        return RoundPlan(mixing.graph, mixing, slots, everyone if active is None else active)


def mix_rows(
    rows: np.ndarray, slots: Slots, fetch: Callable[[np.ndarray], torch.Tensor], out: torch.Tensor
) -> None:
    """out[r] = sum_k weight[rows[r], k] * fetch(index[rows[r], k]) in slot order, exactly rounded.

    `fetch(ids)` returns the shared blocks of workers `ids` as a (len(ids), P) tensor; the engine
    decides where they come from (its own memory, or buffers received from other ranks).
    """
    if len(rows) == 0:
        return
    step = max(1, ROWS_PER_CHUNK_ELEMENTS // max(1, out.shape[1]))
    weight = torch.as_tensor(slots.weight[rows], dtype=out.dtype, device=out.device)
    for start in range(0, len(rows), step):
        chunk = slice(start, start + step)
        index = slots.index[rows[chunk]]
        acc = fetch(index[:, 0]) * weight[chunk, 0:1]
        for k in range(1, index.shape[1]):
            acc.add_(fetch(index[:, k]) * weight[chunk, k : k + 1])
        out[chunk].copy_(acc)
