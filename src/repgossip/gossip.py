"""Gossip: the per-round mixing matrix and the one way every engine applies it.

Worker i's new shared block is sum_j W_ij x_j over j in its closed neighbourhood. Every engine
computes that sum in the same order (ascending j, self included) with separate, exactly rounded
multiplications and additions (no fused multiply-add, no BLAS reduction order), so the one-process
and the distributed engines produce bit-identical parameters however workers are laid out.

On a directed graph the same rule mixes push-sum's mass and weight with the column-stochastic P
(row i: what worker i receives, from itself and its in-neighbours); see `Engine.gossip`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from repgossip.errors import UsageError
from repgossip.topology import (
    MIXING_RULES,
    Graph,
    Mixing,
    check_mixing_rule,
    mixing_matrix,
    round_graph,
)

# Elements mixed at a time (rows, and columns of a row wider than this): 4 MiB of float32, so a
# chunk's gathered terms and running sum stay in cache between the multiply and the add. 1,024
# workers x 78,000 body parameters on a ring, 2-core Xeon: 1.10 s per gossip with 64 MiB chunks,
# 0.36 with 16 MiB, 0.32 with 4 MiB, 0.34 with 1 MiB, 0.38 with 256 KiB (`python
# benchmarks/gossip.py --workers 1024 --params 78000 --topologies ring --chunk-bits 24 22 20 18 16`).
CHUNK_ELEMENTS = 1 << 20
ALL_COLUMNS = slice(None)


class Fetch(Protocol):
    """Global worker ids -> their rows of a snapshot taken by the engine (`Engine.fetch_neighbours`),
    only columns `cols` if given: a row can be wider than a chunk of mixing."""

    def __call__(self, ids: np.ndarray, cols: slice = ALL_COLUMNS) -> torch.Tensor: ...


@dataclass(frozen=True)
class Slots:
    """W row by row: row i mixes x[index[k]] with weight[k] for k in start[i] .. start[i+1] - 1,
    its self and its neighbours in ascending order. Memory O(N + E) whatever the degrees: a star's
    hub has N entries, its leaves two each.
    """

    start: np.ndarray  # (N + 1,) int64: where each row's entries begin
    index: np.ndarray  # (nnz,) int64
    weight: np.ndarray  # (nnz,) float64

    @classmethod
    def from_mixing(cls, mixing: Mixing) -> Slots:
        rows, cols, values = mixing.entries()
        n = mixing.graph.workers
        order = np.argsort(rows * n + cols, kind="stable")  # by row, then column
        counts = np.bincount(rows, minlength=n)
        return cls(np.concatenate([[0], np.cumsum(counts)]), cols[order], values[order])

    def counts(self, rows: np.ndarray) -> np.ndarray:
        return self.start[rows + 1] - self.start[rows]

    def neighbours(self, rows: np.ndarray) -> np.ndarray:
        """The workers whose blocks `rows` mix (themselves included), sorted, once each."""
        counts = self.counts(rows)
        first = np.repeat(self.start[rows] - (np.cumsum(counts) - counts), counts)
        return np.unique(self.index[first + np.arange(counts.sum())])


@dataclass(frozen=True)
class RoundPlan:
    """Who takes part in a round and how they mix: the same in every process, derived from the seed."""

    graph: Graph  # links that are up between workers that are in
    mixing: Mixing  # W on that graph (absent workers keep their block)
    slots: Slots
    active: np.ndarray  # (N,) bool: workers that train and gossip this round

    @property
    def push_sum(self) -> bool:
        """Whether the graph is directed, so that gossip must carry push-sum weights: a
        column-stochastic P moves mass without keeping each worker's share at 1/N."""
        return self.graph.directed


_DROPOUT_TAG = 0xD809  # separates the dropout stream from the link-failure stream of the same round


def _shown_rule(mixing: str | np.ndarray) -> str:
    return "(an array)" if isinstance(mixing, np.ndarray) else repr(str(mixing))


class GossipSchedule:
    """Each round's graph, mixing matrix and active workers, with link failures and dropouts, on a
    fixed or a time-varying graph (`Graph.cycle`).

    Stateless in the round index, so a resumed run or another process sees the same rounds.
    """

    def __init__(
        self,
        base_graph: Graph,
        mixing: str | np.ndarray,
        link_failure_prob: float = 0.0,
        worker_dropout_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.base_graph = base_graph
        self.mixing = mixing
        self.link_failure_prob = link_failure_prob
        self.worker_dropout_prob = worker_dropout_prob
        self.seed = seed
        self._check_fixed_matrix()
        self.base_mixing = mixing_matrix(base_graph, mixing)  # W of the graph without failures
        # without failures or dropouts: the plans of one period, built once
        self._fixed = None if self.varies else self._period_plans()

    def _period_plans(self) -> list[RoundPlan]:
        """One plan per round of the graph's period (one for a static graph, on base_mixing)."""
        if not self.base_graph.cycle:
            return [self._plan(self.base_mixing, None)]
        return [self._plan(mixing_matrix(g, self.mixing), None) for g in self.base_graph.cycle]

    def _check_fixed_matrix(self) -> None:
        """A W read from a file is fixed for the full graph: it has no weights for the graph left
        after links fail or workers drop out, which only a rule can recompute each round."""
        check_mixing_rule(self.mixing)
        if self.varies and not (isinstance(self.mixing, str) and self.mixing in MIXING_RULES):
            raise UsageError(
                f"mixing {_shown_rule(self.mixing)} is a fixed matrix for the full graph, but "
                f"link_failure_prob={self.link_failure_prob} and worker_dropout_prob="
                f"{self.worker_dropout_prob} change the graph every round; those need a rule "
                f"({', '.join(MIXING_RULES.names())})"
            )

    @property
    def varies(self) -> bool:
        return self.link_failure_prob > 0 or self.worker_dropout_prob > 0

    @property
    def directed(self) -> bool:
        """Whether gossip is push-sum (the graph is directed)."""
        return self.base_graph.directed

    def round_plan(self, round_index: int) -> RoundPlan:
        if self._fixed is not None:
            return self._fixed[round_index % len(self._fixed)]
        graph = self.base_graph.at(round_index)
        graph = round_graph(graph, self.link_failure_prob, self.seed, round_index)
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


def mix_rows(rows: np.ndarray, slots: Slots, fetch: Fetch, out: torch.Tensor) -> None:
    """out[r] = sum_k weight_k * fetch(index_k) over row rows[r]'s entries in order, exactly rounded.

    `fetch(ids, cols)` returns columns `cols` of the shared blocks of workers `ids`; the engine
    decides where they come from (its own memory, or buffers received from other ranks). Rows are
    taken longest first, so the k-th term of every row that has one is one prefix of the rows;
    they are mixed CHUNK_ELEMENTS at a time, a wide row (VGG-11's 9 million parameters) column
    chunk by column chunk. Every element is computed alike whatever the chunking.
    """
    width = out.shape[1]
    if len(rows) == 0 or width == 0:
        return
    cols_per_chunk = min(width, CHUNK_ELEMENTS)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // cols_per_chunk)
    counts = slots.counts(rows)
    by_length = np.argsort(-counts, kind="stable")
    for begin in range(0, len(rows), rows_per_chunk):
        chosen = by_length[begin : begin + rows_per_chunk]
        first, length = slots.start[rows[chosen]], counts[chosen]
        terms: Iterable[tuple[np.ndarray, torch.Tensor]] = _terms(slots, first, length, out)
        if width > cols_per_chunk:  # reused by every column piece (else made one at a time: a
            terms = list(terms)  # star's hub of 100,000 leaves would hold 50 MB of them)
        target = torch.from_numpy(chosen).to(out.device)
        for start in range(0, width, cols_per_chunk):
            cols = slice(start, start + cols_per_chunk)
            each = iter(terms)
            ids, weights = next(each)
            acc = fetch(ids, cols) * weights
            for ids, weights in each:
                acc[: len(ids)].add_(fetch(ids, cols) * weights)
            out[target, cols] = acc


def _terms(
    slots: Slots, first: np.ndarray, length: np.ndarray, like: torch.Tensor
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """The k-th entries (ids and weights) of rows starting at `first`, longest first, k = 0, 1,
    ...: the k-th term of the rows that have one, a prefix of them."""
    yield slots.index[first], _weights(slots, first, like)
    for k in range(1, int(length[0])):
        have = int(np.searchsorted(-length, -k))  # rows with more than k entries
        at = first[:have] + k
        yield slots.index[at], _weights(slots, at, like)


def _weights(slots: Slots, at: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(slots.weight[at], dtype=like.dtype, device=like.device).unsqueeze(1)


def masked_mix(
    rows: np.ndarray, plan: RoundPlan, fetch: Fetch, out: torch.Tensor, mask: torch.Tensor
) -> None:
    """Masked averaging (DisPFL's aggregation): for every active worker rows[r], each column its
    mask row mask[r] holds becomes the mean of that column over the worker and those of its
    neighbours whose masks hold it; other columns are left alone. `fetch` returns snapshot rows
    [values * mask, mask] (twice out's width), so only masked values and mask bits travel."""
    width, slots = out.shape[1], plan.slots
    for local, worker in enumerate(rows):
        if not plan.active[worker]:
            continue
        neighbourhood = fetch(slots.index[slots.start[worker] : slots.start[worker + 1]])
        values, holders = neighbourhood[:, :width].sum(0), neighbourhood[:, width:].sum(0)
        mine = mask[local] > 0
        out[local, mine] = values[mine] / holders[mine]


def masked_bytes(nnz: np.ndarray, columns: int, degrees: np.ndarray) -> int:
    """What masked averaging sends in a round: every worker sends its `nnz` masked values (4
    bytes each) and its mask of `columns` entries as bits to each of its `degrees` neighbours
    this round (both over all workers; an absent worker has degree 0)."""
    per_worker = 4 * nnz.astype(np.float64) + math.ceil(columns / 8)
    return int((per_worker * degrees).sum())
