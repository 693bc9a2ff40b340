"""An algorithm plug-in with messages of its own: each worker trains and sends only the weights its
fixed random mask holds, and averages each weight over the neighbours whose masks hold it (the
aggregation DisPFL uses, without its mask evolution). `bytes_sent` counts exactly what is sent:
4 bytes per masked value plus the mask as bits, to every neighbour.

    repgossip run --set algorithm=sparsegossip:SparseGossip

It shows the communication hook: rows travel between workers only through
`engine.fetch_neighbours`, so the same code runs in one process and across torch.distributed ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

import repgossip
from repgossip import Phase, RoundContext, StateSpec


class SparseGossip(repgossip.Algorithm):
    name = "sparsegossip"
    summary = "masked joint training; masked entries averaged over the neighbours holding them"
    phases = (Phase("all", "head"), Phase("all", "body"))
    shared = "all"
    density = 0.5  # share of each worker's weights its mask holds

    def extra_state(self) -> Mapping[str, StateSpec]:
        return {"mask": StateSpec(width="params", fill=1.0)}

    def init_state(self, population) -> None:
        """Each worker's mask from its own seed, so it does not depend on the process layout."""
        size = population.layout.size
        for local, worker in enumerate(population.worker_ids):
            gen = torch.Generator().manual_seed(1000 + worker)
            keep = torch.rand(size, generator=gen) < self.density
            population.rows["mask"][local] = keep.float()
        population.params.mul_(population.rows["mask"])  # pruned weights start at zero

    def adjust_gradient(self, phase: Phase, grad: torch.Tensor, weights, rows) -> None:
        grad.mul_(rows("mask"))  # only masked weights learn; pruned ones stay zero (so decay 0)

    def communicate(self, ctx: RoundContext) -> int:
        pop, slots = ctx.population, ctx.plan.slots
        params, mask = pop.params, pop.rows["mask"]
        fetch = ctx.engine.fetch_neighbours(torch.cat([params * mask, mask], dim=1), ctx.plan)
        size = pop.layout.size
        for local, worker in enumerate(pop.worker_ids):
            if not ctx.plan.active[worker]:
                continue
            ids = slots.index[slots.start[worker] : slots.start[worker + 1]]
            rows = fetch(ids)
            values, holders = rows[:, :size].sum(0), rows[:, size:].sum(0)
            mine = mask[local] > 0
            params[local, mine] = values[mine] / holders[mine]
        return self._bytes(ctx, mask)

    @staticmethod
    def _bytes(ctx: RoundContext, mask: torch.Tensor) -> int:
        """Every worker sends its masked values and its mask bits to each neighbour."""
        per_worker = np.zeros(ctx.config.workers)
        nnz = mask.sum(1).cpu().numpy()
        per_worker[ctx.population.worker_ids] = 4 * nnz + math.ceil(mask.shape[1] / 8)
        per_worker = ctx.engine.all_sum(torch.from_numpy(per_worker)).numpy()
        degrees = ctx.plan.graph.degrees
        return int((per_worker * degrees).sum())
