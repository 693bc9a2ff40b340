"""An algorithm plug-in with messages of its own: each worker trains and sends only the weights its
fixed random mask holds, and averages each weight over the neighbours whose masks hold it (the
aggregation DisPFL uses, without its mask evolution). `bytes_sent` counts exactly what is sent:
4 bytes per masked value plus the mask as bits, to every neighbour.

    repgossip run --set algorithm=sparsegossip:SparseGossip

It shows the communication hook, with the engine's masked averaging (`engine.masked_gossip`, the
one DisPFL uses): rows travel between workers only through the engine, so the same code runs in
one process and across torch.distributed ranks.
"""

from __future__ import annotations

from collections.abc import Mapping

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
        return ctx.engine.masked_gossip(
            ctx.population.params, ctx.population.rows["mask"], ctx.plan
        )
