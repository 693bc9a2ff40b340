"""The workers one process owns: their parameters, optimizer state, data, and local training.

Every worker's parameters are one row of a flat tensor `params` (workers x P), laid out body first,
then head, so "the body" of all workers is one contiguous column block. Gossip is then a matrix
product on that block, and a worker's SGD update is a handful of vector operations on its row. One
module template computes every worker's forward pass through `torch.func.functional_call` with views
of that worker's row: no per-worker module copies, no state_dict shuffling.

Randomness is per worker and stateless: the batch order of worker w in phase p of round r comes from
a generator seeded by (seed, w, r, p). A worker's numbers therefore do not depend on which process
holds it or on whether the run was resumed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from repgossip.models import SplitModel

PARTS = ("body", "head", "all")


@dataclass(frozen=True)
class ParamEntry:
    name: str
    shape: tuple[int, ...]
    start: int
    stop: int


class ParamLayout:
    """Where each named parameter of a SplitModel lives in a flat row: body block, then head block."""

    def __init__(self, model: SplitModel) -> None:
        entries, offset = [], 0
        for name, tensor in model.named_parameters():
            entries.append(ParamEntry(name, tuple(tensor.shape), offset, offset + tensor.numel()))
            offset += tensor.numel()
        body = [e for e in entries if e.name.startswith("body.")]
        if [e.name for e in entries[: len(body)]] != [e.name for e in body]:
            raise ValueError("SplitModel must register its body before its head")
        self.entries = tuple(entries)
        self.size = offset
        self.body_size = body[-1].stop if body else 0

    @property
    def head_size(self) -> int:
        return self.size - self.body_size

    def part(self, part: str) -> slice:
        """Column slice of a part: 'body', 'head' or 'all'."""
        if part == "body":
            return slice(0, self.body_size)
        if part == "head":
            return slice(self.body_size, self.size)
        if part == "all":
            return slice(0, self.size)
        raise ValueError(f"unknown part '{part}'; valid: {', '.join(PARTS)}")

    def entries_of(self, part: str) -> tuple[ParamEntry, ...]:
        cols = self.part(part)
        return tuple(e for e in self.entries if cols.start <= e.start and e.stop <= cols.stop)

    def views(self, row: torch.Tensor, part: str = "all") -> dict[str, torch.Tensor]:
        """Named views into one worker's row: writing the row changes them, and vice versa."""
        return {e.name: row[e.start : e.stop].view(e.shape) for e in self.entries_of(part)}

    def flatten(self, model: SplitModel) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@dataclass(frozen=True)
class Budget:
    """Local work of one phase: a number of epochs or of SGD steps (exactly one is set)."""

    epochs: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class StepRule:
    """SGD with optional momentum and weight decay, as torch.optim.SGD (dampening 0, no Nesterov)."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


def worker_generator(seed: int, worker: int, round_index: int, phase: int) -> torch.Generator:
    """A CPU generator owned by one worker for one phase of one round (see module docstring)."""
    state = np.random.SeedSequence([seed, worker, round_index, phase]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF)


def batch_schedule(
    n: int, batch_size: int, budget: Budget, gen: torch.Generator
) -> list[torch.Tensor]:
    """Index batches for one phase: whole shuffled epochs (last batch may be short), or `steps`
    batches of exactly `batch_size` drawn from consecutive shuffles."""
    if budget.epochs is not None:
        return [
            b
            for _ in range(budget.epochs)
            for b in torch.randperm(n, generator=gen).split(batch_size)
        ]
    steps = budget.steps or 0
    needed = steps * batch_size
    stream = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(needed / n))])
    return list(stream[:needed].split(batch_size))


class Population:
    """The block of workers held by this process (all of them for the `sim` engine)."""

    def __init__(
        self,
        model: SplitModel,
        worker_ids: Sequence[int],
        train: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
        test: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
        regression: bool,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.layout = ParamLayout(model)
        self.worker_ids = list(worker_ids)
        self.train_x, self.train_y = ([t.to(device) for t in ts] for ts in train)
        self.test_x, self.test_y = ([t.to(device) for t in ts] for ts in test)
        self.regression = regression
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        init = self.layout.flatten(model).to(device)
        self.params = init.repeat(len(self.worker_ids), 1)
        self.momentum = torch.zeros_like(self.params)

    def __len__(self) -> int:
        return len(self.worker_ids)

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(outputs, targets, reduction=reduction)
        return F.cross_entropy(outputs, targets, reduction=reduction)

    def forward(self, row: torch.Tensor, inputs: torch.Tensor, stage: str = "full") -> torch.Tensor:
        part = {"full": "all", "body": "body", "head": "head"}[stage]
        return functional_call(
            self.model, self.layout.views(row, part), (inputs,), {"stage": stage}
        )

    def train(
        self,
        part: str,
        budget: Budget,
        rule: StepRule,
        round_index: int,
        phase: int,
        active: Collection[int] | None = None,
    ) -> None:
        """Run one local phase on every worker (or those in `active`, by global id): SGD on `part`,
        the other parameters frozen."""
        for local, worker in enumerate(self.worker_ids):
            if active is not None and worker not in active:
                continue
            gen = worker_generator(self.seed, worker, round_index, phase)
            batches = batch_schedule(len(self.train_y[local]), self.batch_size, budget, gen)
            self._train_worker(local, part, batches, rule)

    def _train_worker(
        self, local: int, part: str, batches: list[torch.Tensor], rule: StepRule
    ) -> None:
        row, cols = self.params[local], self.layout.part(part)
        inputs, targets = self.train_x[local], self.train_y[local]
        stage = "full"
        if part == "head":  # the body is frozen: its features are the same at every step
            with torch.no_grad():
                inputs = self.forward(row, inputs, "body")
            stage = "head"
        params = self.layout.views(row, "all" if stage == "full" else "head")
        trainable = [e.name for e in self.layout.entries_of(part)]
        leaves = [params[name].detach().requires_grad_() for name in trainable]
        params.update(zip(trainable, leaves, strict=True))
        segment, velocity = row[cols], self.momentum[local, cols]
        for idx in batches:
            out = functional_call(self.model, params, (inputs[idx],), {"stage": stage})
            grads = torch.autograd.grad(self.loss(out, targets[idx]), leaves)
            with torch.no_grad():
                self._apply(segment, velocity, torch.cat([g.reshape(-1) for g in grads]), rule)

    @staticmethod
    def _apply(
        segment: torch.Tensor, velocity: torch.Tensor, grad: torch.Tensor, rule: StepRule
    ) -> None:
        if rule.weight_decay:
            grad.add_(segment, alpha=rule.weight_decay)
        if rule.momentum:
            velocity.mul_(rule.momentum).add_(grad)
            grad = velocity
        segment.add_(grad, alpha=-rule.lr)

    @torch.no_grad()
    def evaluate(self) -> dict[str, np.ndarray]:
        """Per-worker statistics of each worker's own model on its own train and test splits."""
        stats: dict[str, list[float]] = {
            "test_loss": [],
            "train_loss": [],
            "correct": [],
            "count": [],
        }
        for local in range(len(self)):
            row = self.params[local]
            test_out = self.forward(row, self.test_x[local])
            train_out = self.forward(row, self.train_x[local])
            stats["test_loss"].append(self.loss(test_out, self.test_y[local]).item())
            stats["train_loss"].append(self.loss(train_out, self.train_y[local]).item())
            stats["count"].append(len(self.test_y[local]))
            if not self.regression:
                stats["correct"].append((test_out.argmax(1) == self.test_y[local]).sum().item())
        return {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
