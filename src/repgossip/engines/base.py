"""The engine interface: where workers live and how their blocks meet.

An engine owns a contiguous block of workers (all of them in one process) and provides gossip plus
the few collective operations the run loop needs. The one-process engine implements them as
identities; the distributed engine over torch.distributed. Algorithms never see the difference.
"""

from __future__ import annotations

import numpy as np
import torch

from repgossip.gossip import ALL_COLUMNS, Fetch, RoundPlan, masked_bytes, masked_mix, mix_rows
from repgossip.metrics import add_in_order, bytes_per_round, push_sum_bytes_per_round
from repgossip.population import Population


class Engine:
    """All workers in this one process: every neighbour's block is a row away."""

    name = "sim"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.rank, self.world = 0, 1
        self.blocks = [np.arange(workers)]
        self.wire_bytes = 0  # bytes that really crossed between processes
        self.comm_s = 0.0  # seconds spent waiting for gossip messages between processes

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0

    def local_workers(self) -> np.ndarray:
        return self.blocks[self.rank]

    def gossip(self, pop: Population, part: str, plan: RoundPlan) -> int:
        """Mix every local worker's `part` block (and, when shared, its BatchNorm statistics) with
        its neighbours'; return the bytes that all workers sent to their neighbours this round
        (the `bytes_sent` metric). On a directed graph, by push-sum (`push_sum`)."""
        blocks = pop.gossiped_blocks(part)
        block = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        if plan.push_sum:
            self.push_sum(block, pop.push_weight, plan)
            sent = push_sum_bytes_per_round(plan.graph.num_edges, block.shape[1])
        else:
            fetch = self.fetch_neighbours(block, plan)
            mix_rows(self.local_workers(), plan.slots, fetch, block)
            sent = bytes_per_round(plan.graph.num_edges, block.shape[1])
        if len(blocks) > 1:  # mixing is column by column: write each block's columns back
            for target, mixed in zip(
                blocks, block.split([b.shape[1] for b in blocks], 1), strict=True
            ):
                target.copy_(mixed)
        return sent

    def push_sum(self, block: torch.Tensor, weight: torch.Tensor, plan: RoundPlan) -> None:
        """One push-sum step (stochastic gradient push) on the local rows of `block`, which hold
        the de-biased values z = x / w, and of `weight` (w, one column), both updated in place.

        The mass x = z * w and w travel together through the same slots as one block, so the
        column-stochastic P keeps sum_i x_i and sum_i w_i, and z_i = x_i / w_i converges to the
        average of the initial values although P is not doubly stochastic. Where P happens to be
        doubly stochastic (the circulant directed topologies) every w stays 1, exactly where each
        row's float32 weights sum to 1 (the directed ring's halves), and this is plain mixing."""
        mass = torch.cat([block * weight, weight], dim=1)
        mix_rows(self.local_workers(), plan.slots, self.fetch_neighbours(mass, plan), mass)
        weight.copy_(mass[:, -1:])
        block.copy_(mass[:, :-1] / weight)

    def masked_gossip(self, block: torch.Tensor, mask: torch.Tensor, plan: RoundPlan) -> int:
        """Masked averaging of the local rows of `block` in place (`gossip.masked_mix`: each
        weight a worker's `mask` row holds becomes its mean over the worker and the neighbours
        whose masks hold it), sending only masked values and mask bits; returns the bytes all
        workers sent (`gossip.masked_bytes`)."""
        fetch = self.fetch_neighbours(torch.cat([block * mask, mask], dim=1), plan)
        masked_mix(self.local_workers(), plan, fetch, block, mask)
        nnz = torch.zeros(self.workers, dtype=torch.float64)
        nnz[torch.from_numpy(self.local_workers())] = mask.sum(1).double().cpu()
        return masked_bytes(self.all_sum(nnz).numpy(), mask.shape[1], plan.graph.degrees)

    def fetch_neighbours(self, block: torch.Tensor, plan: RoundPlan) -> Fetch:
        """A snapshot of every local worker's row of `block` (local workers x columns) and of its
        neighbours' rows under `plan`: `fetch(ids)` returns the rows of workers `ids` (global ids,
        each a local worker or a neighbour of one) as they were at this call, `fetch(ids, cols)`
        only their columns `cols`.

        The one way rows travel between workers: gossip mixes what it fetches, and an algorithm
        with its own messages (masked entries, a second block) exchanges them through this too,
        so the same code runs in one process and across ranks."""
        before = block.clone()
        return lambda ids, cols=ALL_COLUMNS: before[torch.from_numpy(ids), cols]

    # collectives: identities in one process
    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_min(self, value: int) -> int:
        return value

    def broadcast_bytes(self, payload: bytes) -> bytes:
        return payload

    def ordered_sum(self, rows: torch.Tensor) -> torch.Tensor:
        """The sum of every worker's row, this process's `rows` (local workers x columns) among
        them, on every process: in float64, one worker at a time in ascending id, so the bits do
        not depend on how workers are spread over processes or on any thread count."""
        return add_in_order(_float64_zeros(rows), rows)

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Every worker's rows on the writer (None elsewhere), in worker order."""
        return rows

    def scatter_rows(self, full: torch.Tensor | None, local: torch.Tensor) -> None:
        """Copy this process's workers' rows of the writer's `full` into `local`."""
        assert full is not None
        local.copy_(full)

    def assemble(self, local: torch.Tensor) -> torch.Tensor:
        """Per-worker rows (n_local, ...) of every process, as (workers, ...) on every process."""
        full = torch.zeros((self.workers, *local.shape[1:]), dtype=local.dtype)
        full[torch.from_numpy(self.local_workers())] = local.cpu()
        return self.all_sum(full)

    def agree(self, ok: bool) -> bool:
        """True on every process if `ok` is true on every process."""
        return bool(self.all_min(int(ok)))

    def close(self) -> None:
        pass


def _float64_zeros(rows: torch.Tensor) -> torch.Tensor:
    return torch.zeros(rows.shape[1:], dtype=torch.float64, device=rows.device)
