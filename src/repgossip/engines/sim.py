"""The one-process engine: every worker in one Population; gossip mixes rows of one tensor."""

from __future__ import annotations

import numpy as np
import torch

from repgossip.gossip import GossipSchedule, mix_rows
from repgossip.metrics import bytes_per_round
from repgossip.population import Population


class SimEngine:
    """All workers live in this process, so every neighbour's block is a row away."""

    def __init__(self, schedule: GossipSchedule) -> None:
        self.schedule = schedule

    def gossip(self, pop: Population, part: str, round_index: int) -> int:
        """Mix the `part` block of every worker with its neighbours'; return the bytes sent."""
        plan = self.schedule.round_plan(round_index)
        cols = pop.layout.part(part)
        block = pop.params[:, cols]
        before = block.clone()  # every worker mixes the blocks as they were before this gossip
        mix_rows(np.arange(len(pop)), plan.slots, lambda ids: before[torch.from_numpy(ids)], block)
        return bytes_per_round(plan.adjacency, cols.stop - cols.start)

    def shared_block(self, pop: Population, part: str) -> torch.Tensor:
        """Every worker's `part` parameters (all workers live here)."""
        return pop.params[:, pop.layout.part(part)]
