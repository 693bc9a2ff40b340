"""An algorithm plug-in: DePRL whose body steps are pulled toward the body the worker held after
the last gossip (a FedProx-style proximal term, mu/2 ||phi - phi_anchor||^2).

    repgossip run --set algorithm=proxdeprl:ProxDePRL mu=0.1

It shows every hook an algorithm can own: a parameter of its own (`mu`, a config key once the
algorithm is selected: checked against its range, recorded in config.yaml, listed by `repgossip
keys`), extra per-worker state (`anchor`, checkpointed and moved between processes like the
parameters), its initialisation, a gradient hook on one phase, and an end-of-round hook. Nothing in
repgossip changes to add it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

import repgossip
from repgossip import Param, Phase, RoundContext, StateSpec


class ProxDePRL(repgossip.Algorithm):
    name = "proxdeprl"
    summary = "DePRL with a proximal term on the body toward its last gossiped value"
    params = (
        Param("mu", 0.5, "strength of the proximal term toward the last gossiped body", low=0),
    )

    def extra_state(self) -> Mapping[str, StateSpec]:
        return {"anchor": StateSpec(width="params")}

    def init_state(self, population) -> None:
        population.rows["anchor"].copy_(population.params)

    def adjust_gradient(
        self, phase: Phase, grad: torch.Tensor, weights: torch.Tensor, rows
    ) -> None:
        if phase.part == "body":
            grad.add_(weights - rows("anchor"), alpha=self.param("mu"))

    def end_round(self, ctx: RoundContext) -> None:
        ctx.population.rows["anchor"].copy_(ctx.population.params)
