"""Ditto (Li, Hu, Beirami, Smith, ICML 2021), decentralized: every worker keeps a global model w,
trained and gossiped as in D-PSGD, and a personal model v trained on its own data with the
proximal term lambda/2 ||v - w||^2 toward its copy of the global model; accuracy is the personal
model's.

As in Ditto's Algorithm 1, the personal model steps first, toward w as it stands at the start of
the round (after the last gossip), then the global model trains and is gossiped. Both train for the
same budget as the joint-training baselines, so a Ditto round takes twice their SGD steps (one set
per model). `ditto_lambda` = 0 makes the personal model purely local (the `local` baseline, bit
for bit); a large one ties it to the global model (D-PSGD).
"""

from __future__ import annotations

import torch

from repgossip.algorithms.base import Algorithm, Phase, Rows
from repgossip.layout import MAIN_MODEL
from repgossip.params import Param

PERSONAL = "personal"


class Ditto(Algorithm):
    name = "ditto"
    summary = "global model as D-PSGD; personal model pulled toward it (ditto_lambda)"
    phases = (
        Phase("all", "head", PERSONAL),
        Phase("all", "body", PERSONAL),
        Phase("all", "head"),
        Phase("all", "body"),
    )
    shared = "all"
    evaluated_model = PERSONAL
    params = (
        Param("ditto_lambda", 0.1, "strength of the pull of the personal model toward the global "
              "one (0: local training)", low=0),
    )  # fmt: skip

    @property
    def strength(self) -> float:
        return float(self.param("ditto_lambda"))

    def adjust_gradient(
        self, phase: Phase, grad: torch.Tensor, weights: torch.Tensor, rows: Rows
    ) -> None:
        if phase.model == PERSONAL and self.strength:
            grad.add_(weights - rows(MAIN_MODEL), alpha=self.strength)
