"""DisPFL (Dai, Shen, Sun, Zhang, Li, Tao, ICML 2022): decentralized sparse training with a
personalized mask per worker.

Each worker holds a binary mask over the model's weight matrices and kernels (biases and other
1-D parameters stay dense) with `density` of the entries on, drawn at random per worker. Every
round:

1. communication first: each worker sends its masked weights and its mask (as bits) to its
   neighbours, and sets each weight its mask holds to the average over itself and the neighbours
   whose masks hold that weight (DisPFL's aggregation); `bytes_sent` counts exactly that;
2. local SGD on the masked weights only (the gradient is masked; pruned weights stay zero);
3. the mask evolves: in each masked tensor the `rate` share of the active weights with the
   smallest magnitude is pruned and as many inactive weights with the largest gradient magnitude
   (on one batch of the worker's data) regrow at zero; `rate` anneals from `prune_rate` to 0 by a
   cosine over the rounds, so masks settle.

Differences from the DisPFL code, kept simple on purpose: masks start uniformly random per tensor
(the code uses an Erdos-Renyi-kernel density per layer); the regrowth gradient is one batch in
eval mode; the neighbours are the graph's (the code samples some each round).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from repgossip.algorithms.base import JOINT, Algorithm, Phase, Rows, StateSpec
from repgossip.params import Param
from repgossip.streams import worker_generator
from repgossip.training import dense_gradients

if TYPE_CHECKING:
    from repgossip.algorithms.base import RoundContext
    from repgossip.layout import RowEntry
    from repgossip.population import Population

MASK = "mask"
_MASK_TAG, _REGROW_TAG = 0xD15F, 0xD160  # phase numbers of the mask streams, apart from training


class DisPFL(Algorithm):
    name = "dispfl"
    summary = "personal sparse masks (density); masked averaging; prune and regrow every round"
    phases = JOINT
    shared = "all"
    communicate_first = True
    schedule_reads_rounds = True  # the prune rate anneals over config.rounds
    params = (  # the DisPFL code's defaults (prune_rate is its anneal_factor)
        Param("density", 0.5, "share of each weight matrix or kernel a worker's mask holds",
              low=0, low_open=True, high=1),
        Param("prune_rate", 0.5, "share of active weights pruned and regrown in the first round, "
              "annealed to 0 by a cosine", low=0, high=1),
    )  # fmt: skip

    @property
    def density(self) -> float:
        return float(self.param("density"))

    @property
    def prune_rate(self) -> float:
        return float(self.param("prune_rate"))

    def extra_state(self) -> Mapping[str, StateSpec]:
        return {MASK: StateSpec(width="params", fill=1.0)}

    def init_state(self, population: Population) -> None:
        """Each worker's random mask from its own stream (so it does not depend on the process
        layout); pruned weights start at zero."""
        seed = self.config.seed if self.config else 0
        for local, worker in enumerate(population.worker_ids):
            gen = worker_generator(seed, worker, 0, _MASK_TAG)
            mask = population.rows[MASK][local]
            for entry in _masked_entries(population):
                size = entry.stop - entry.start
                keep = max(1, round(self.density * size))
                chosen = torch.randperm(size, generator=gen)[:keep]
                mask[entry.start : entry.stop] = 0.0
                mask[entry.start + chosen.to(mask.device)] = 1.0
        population.params.mul_(population.rows[MASK])

    def adjust_gradient(
        self, phase: Phase, grad: torch.Tensor, weights: torch.Tensor, rows: Rows
    ) -> None:
        grad.mul_(rows(MASK))  # only active weights learn; pruned ones stay at zero

    def communicate(self, ctx: RoundContext) -> int:
        return ctx.engine.masked_gossip(ctx.population.params, ctx.population.rows[MASK], ctx.plan)

    def end_round(self, ctx: RoundContext) -> None:
        rounds = ctx.config.rounds
        rate = self.prune_rate / 2 * (1 + math.cos(math.pi * ctx.round_index / max(1, rounds)))
        if rate <= 0:
            return
        pop, seed = ctx.population, ctx.config.seed
        active = [local for local, worker in enumerate(pop.worker_ids) if ctx.plan.active[worker]]
        batches = {}
        for local in active:
            gen = worker_generator(seed, pop.worker_ids[local], ctx.round_index, _REGROW_TAG)
            n = len(pop.train_y[local])
            batches[local] = torch.randperm(n, generator=gen)[: ctx.config.batch_size]
        grads = dense_gradients(pop, batches)
        for local in active:
            _prune_and_regrow(pop, local, grads[local], rate)


def _masked_entries(pop: Population) -> list[RowEntry]:
    """The tensors a mask thins out: weight matrices and kernels, not biases or 1-D scales."""
    return [e for e in pop.layout.entries if len(e.shape) > 1]


def _prune_and_regrow(pop: Population, local: int, grad: torch.Tensor, rate: float) -> None:
    """In every masked tensor, drop the `rate` share of active weights smallest in magnitude and
    grow as many inactive ones largest in gradient magnitude, at zero; the momentum of dropped
    weights is cleared so they stay at zero."""
    mask, params, velocity = pop.rows[MASK][local], pop.params[local], pop.momentum[local]
    for entry in _masked_entries(pop):
        cols = slice(entry.start, entry.stop)
        on = mask[cols] > 0
        count = int(rate * int(on.sum()))
        if count == 0 or int((~on).sum()) == 0:
            continue
        count = min(count, int((~on).sum()))
        weight = params[cols].abs().masked_fill(~on, math.inf)
        drop = torch.topk(weight, count, largest=False).indices
        growth = grad[cols].abs().masked_fill(on, -math.inf)
        grow = torch.topk(growth, count).indices
        mask[cols][drop] = 0.0
        mask[cols][grow] = 1.0
        params[cols][drop] = 0.0
        params[cols][grow] = 0.0
        velocity[cols][drop] = 0.0
        velocity[cols][grow] = 0.0
