"""FedRoD (Chen & Chao, ICLR 2022), decentralized: one body and a generic head, trained with the
balanced softmax loss and gossiped; a personal head trained on the body's features with plain cross
entropy on the sum of both heads' logits; a worker predicts with that sum.

The balanced softmax adds each worker's log class frequencies to the generic logits during
training (Ren et al., 2020), so the generic head learns the class-balanced decision rule however
skewed a worker's labels are; the personal head then adds back what is particular to the worker.

Two local schedules (`fedrod_schedule`), both taking the joint-training baselines' head budget
and then their body budget for the generic model:
- "interleaved" (the default): on every batch, one step of the generic model and one of the
  personal head, on the features and generic logits of the same forward pass, as PFLlib and fluke
  train FedRoD. Neither loss reaches the other's parameters (the personal head reads detached
  features and generic logits), so the two steps are one step of the summed loss; with
  `clip_norm`, the two gradients are clipped together.
- "sequential": the generic model trains for its budget, then the personal head trains for the
  head budget on the features of the updated, frozen body (computed once).
The personal head starts at zero, so the first prediction is the generic one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from repgossip.algorithms.base import Algorithm, Phase, Rows, StateSpec
from repgossip.errors import UsageError
from repgossip.models import SplitModel
from repgossip.params import Param

if TYPE_CHECKING:
    from repgossip.population import Population
    from repgossip.schema import Config

GENERIC, PERSONAL = "head.generic", "head.personal"
GENERIC_MODEL = f"body+{GENERIC}"
FEDROD_SCHEDULES = ("interleaved", "sequential")  # the first is the default
SCHEDULES = {
    "interleaved": (Phase("all", "head"), Phase("all", "body")),
    "sequential": (
        Phase(GENERIC_MODEL, "head"),
        Phase(GENERIC_MODEL, "body"),
        Phase(PERSONAL, "head"),
    ),
}
LOG_PRIOR = "class_log_prior"
SMALLEST_FREQUENCY = 1e-8  # a class a worker never saw: its logit is pushed down by log(1e-8)


class TwoHeads(nn.Module):
    """The generic and the personal head side by side: outputs are their logits concatenated, so
    the loss of each phase and the prediction can take the half they need."""

    def __init__(self, generic: nn.Module) -> None:
        super().__init__()
        self.generic = generic
        self.personal = copy.deepcopy(generic)
        with torch.no_grad():
            for param in self.personal.parameters():
                param.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # detached: the personal head's loss never trains the body, under either schedule
        return torch.cat([self.generic(features), self.personal(features.detach())], dim=-1)


def halves(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    generic, personal = outputs.chunk(2, dim=-1)
    return generic, personal


class FedRoD(Algorithm):
    name = "fedrod"
    summary = "balanced-softmax generic model gossiped; personal head added to its logits"
    phases = SCHEDULES["interleaved"]
    shared = GENERIC_MODEL
    num_classes = 0

    params = (
        Param("fedrod_schedule", FEDROD_SCHEDULES[0], "interleaved: on every batch a step of the "
              "generic model, then one of the personal head on the same forward's detached "
              "features and generic logits (as PFLlib and fluke train FedRoD); sequential: the "
              "generic model for its budget, then the personal head for the head budget",
              choices=FEDROD_SCHEDULES),
    )  # fmt: skip

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        if type(self).phases is FedRoD.phases:  # a subclass that declares its phases keeps them
            self.phases = SCHEDULES[self.param("fedrod_schedule")]  # type: ignore[misc]

    def adapt_model(self, model: SplitModel, num_classes: int) -> SplitModel:
        if num_classes == 0:
            raise UsageError("fedrod needs a classification task; this dataset is a regression")
        self.num_classes = num_classes
        model.replace_head(TwoHeads(model.head))
        return model

    def extra_state(self) -> Mapping[str, StateSpec]:
        return {LOG_PRIOR: StateSpec(width=self.num_classes)}

    def init_state(self, population: Population) -> None:
        """Each worker's log class frequencies, from its own training labels."""
        for local, labels in enumerate(population.train_y):
            counts = torch.bincount(labels.cpu(), minlength=self.num_classes).float()
            frequency = (counts / counts.sum()).clamp_min(SMALLEST_FREQUENCY)
            population.rows[LOG_PRIOR][local] = frequency.log().to(population.params.device)

    def loss(
        self,
        phase: Phase,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        rows: Rows,
    ) -> torch.Tensor:
        generic, personal = halves(outputs)
        if phase.part == PERSONAL:
            return task_loss(generic.detach() + personal, targets)
        balanced = task_loss(generic + rows(LOG_PRIOR), targets)  # the balanced softmax
        if phase.part == GENERIC_MODEL:
            return balanced
        # interleaved: each loss trains only its own part
        return balanced + task_loss(generic.detach() + personal, targets)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        generic, personal = halves(outputs)
        return generic + personal
