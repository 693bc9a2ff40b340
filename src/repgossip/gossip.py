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

from repgossip.topology import mixing_matrix, round_adjacency

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
    def from_matrix(cls, w: np.ndarray) -> Slots:
        n = w.shape[0]
        rows = [np.flatnonzero(w[i]) for i in range(n)]
        width = max(len(r) for r in rows)
        index = np.repeat(np.arange(n)[:, None], width, axis=1)
        weight = np.zeros((n, width))
        for i, cols in enumerate(rows):
            index[i, : len(cols)] = cols
            weight[i, : len(cols)] = w[i, cols]
        return cls(index, weight)


@dataclass(frozen=True)
class RoundPlan:
    """Who takes part in a round and how they mix: the same in every process, derived from the seed."""

    adjacency: np.ndarray  # (N, N) bool: links that are up between workers that are in
    weights: np.ndarray  # (N, N) mixing matrix on that graph (absent workers keep their block)
    slots: Slots
    active: np.ndarray  # (N,) bool: workers that train and gossip this round


_DROPOUT_TAG = 0xD809  # separates the dropout stream from the link-failure stream of the same round


class GossipSchedule:
    """Each round's graph, mixing matrix and active workers, with link failures and dropouts.

    Stateless in the round index, so a resumed run or another process sees the same rounds.
    """

    def __init__(
        self,
        base_adjacency: np.ndarray,
        mixing: str,
        link_failure_prob: float = 0.0,
        worker_dropout_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.base_adjacency = base_adjacency
        self.mixing = mixing
        self.link_failure_prob = link_failure_prob
        self.worker_dropout_prob = worker_dropout_prob
        self.seed = seed
        self._static = None if self.varies else self._plan(base_adjacency, None)

    @property
    def varies(self) -> bool:
        return self.link_failure_prob > 0 or self.worker_dropout_prob > 0

    def round_plan(self, round_index: int) -> RoundPlan:
        if self._static is not None:
            return self._static
        adj = round_adjacency(self.base_adjacency, self.link_failure_prob, self.seed, round_index)
        active = None
        if self.worker_dropout_prob > 0:
            rng = np.random.default_rng([self.seed, round_index, _DROPOUT_TAG])
            active = rng.random(len(adj)) >= self.worker_dropout_prob
            adj = adj & active[:, None] & active[None, :]
        return self._plan(adj, active)

    def _plan(self, adj: np.ndarray, active: np.ndarray | None) -> RoundPlan:
        w = mixing_matrix(adj, self.mixing)
        everyone = np.ones(len(adj), dtype=bool)
        return RoundPlan(adj, w, Slots.from_matrix(w), everyone if active is None else active)


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
