"""The workers one process owns: their parameters, optimizer state, data, and local training.

Every worker's parameters are one row of a flat tensor `params` (workers x P), laid out body first,
then head, so "the body" of all workers is one contiguous column block. Gossip mixes rows of that block
(repgossip.gossip), and a worker's SGD update is a handful of vector operations on its row.

Local training (docs/performance.md has the measurements behind each choice):
- a worker trains on a private module copy whose parameters are views of its row (`_Scratch`), so a
  step is a plain forward and backward with no per-step re-binding or gradient concatenation;
- on CPU, workers run side by side on the available threads, each with single-threaded kernels:
  a batch of 16 is too small to split across cores, a worker is not;
- a linear head trains on features its frozen body computes once per round, all workers' steps as
  one batched matrix product.
Every worker's numbers are computed by the same single-threaded kernels on its own data, so they do
not depend on the thread count or on which other workers this process holds.

Randomness is per worker and stateless: the batch order of worker w in phase p of round r comes from
a generator seeded by (seed, w, r, p). A worker's numbers therefore do not depend on which process
holds it or on whether the run was resumed.
"""

from __future__ import annotations

import copy
import math
import queue
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from repgossip.models import SplitModel

PARTS = ("body", "head", "all")
FORWARD_CHUNK = 256  # samples per gradient-free forward pass: bounded activation memory
T = TypeVar("T")


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


class _Scratch:
    """A private copy of the model whose parameters are pointed at one worker's row at a time.

    Why: `functional_call` re-binds every parameter on every call, and `autograd.grad` hands back
    per-tensor gradients to concatenate. Here the parameters are views of the worker's row and
    their `.grad` views of one flat buffer, bound once per worker and phase: a step is a plain
    forward and backward whose gradient lands in flat layout, and the update writes the row.
    """

    def __init__(self, model: nn.Module, layout: ParamLayout, device: torch.device) -> None:
        self.module = copy.deepcopy(model)
        self.params = list(self.module.parameters())
        self.entries = layout.entries
        self.grad = torch.zeros(layout.size, device=device)

    def bind(self, row: torch.Tensor, trainable: slice) -> None:
        """Point the parameters at `row`; those inside `trainable` columns get gradients."""
        for param, entry in zip(self.params, self.entries, strict=True):
            learns = trainable.start <= entry.start and entry.stop <= trainable.stop
            param.data = row[entry.start : entry.stop].view(entry.shape)
            param.requires_grad_(learns)
            param.grad = self.grad[entry.start : entry.stop].view(entry.shape) if learns else None

    @torch.no_grad()
    def outputs(self, row: torch.Tensor, inputs: torch.Tensor, stage: str = "full") -> torch.Tensor:
        """The worker's model (or one stage of it) on all `inputs`, FORWARD_CHUNK at a time."""
        self.bind(row, slice(0, 0))
        return torch.cat([self.module(x, stage=stage) for x in inputs.split(FORWARD_CHUNK)])


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
        self._scratches: list[_Scratch] = []
        self._find_linear_head()

    def _find_linear_head(self) -> None:
        """Columns of a single nn.Linear head, which the head phase batches over workers."""
        head = getattr(self.model, "head", None)
        self._linear_head = isinstance(self.model, SplitModel) and type(head) is nn.Linear
        if not self._linear_head:
            return
        entries = {e.name: e for e in self.layout.entries_of("head")}
        base = self.layout.body_size
        weight, bias = entries["head.weight"], entries.get("head.bias")
        self._head_weight = slice(weight.start - base, weight.stop - base)
        self._head_weight_shape = weight.shape
        self._head_bias = None if bias is None else slice(bias.start - base, bias.stop - base)

    def __len__(self) -> int:
        return len(self.worker_ids)

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(outputs, targets, reduction=reduction)
        return F.cross_entropy(outputs, targets, reduction=reduction)

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
        chosen = [
            local
            for local, worker in enumerate(self.worker_ids)
            if active is None or worker in active
        ]
        batches = {local: self._schedule(local, budget, round_index, phase) for local in chosen}
        with self._one_thread_per_worker() as threads:
            if part == "head" and self._linear_head:
                self._train_heads(chosen, batches, rule, threads)
            else:
                self._each(
                    chosen,
                    lambda scratch, local: self._train_worker(
                        scratch, local, part, batches[local], rule
                    ),
                    threads,
                )

    def _schedule(
        self, local: int, budget: Budget, round_index: int, phase: int
    ) -> list[torch.Tensor]:
        gen = worker_generator(self.seed, self.worker_ids[local], round_index, phase)
        return batch_schedule(len(self.train_y[local]), self.batch_size, budget, gen)

    # ------------------------------------------------------------------ worker-level parallelism

    @contextmanager
    def _one_thread_per_worker(self) -> Iterator[int]:
        """Spread workers over the intra-op threads instead of splitting each small kernel.

        Why: a batch of 16 is too small for two OpenMP threads to share (and on a busy machine their
        barriers cost many times the work), while whole workers are independent. Inside, every
        kernel runs single-threaded, so a worker's numbers are bitwise the same for any thread count
        and any placement of workers over processes. Yields how many workers run at once.
        """
        if self.device.type != "cpu":
            yield 1
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield threads
        finally:
            torch.set_num_threads(threads)

    def _each(self, chosen: list[int], fn: Callable[[_Scratch, int], T], threads: int) -> list[T]:
        """`fn(scratch, local)` for every chosen worker, up to `threads` at a time, in order."""
        threads = max(1, min(threads, len(chosen)))
        while len(self._scratches) < threads:
            self._scratches.append(_Scratch(self.model, self.layout, self.params.device))
        if threads == 1:
            return [fn(self._scratches[0], local) for local in chosen]
        free: queue.SimpleQueue[_Scratch] = queue.SimpleQueue()
        for scratch in self._scratches[:threads]:
            free.put(scratch)

        def task(local: int) -> T:
            scratch = free.get()  # never blocks: as many scratch models as threads
            try:
                return fn(scratch, local)
            finally:
                free.put(scratch)

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(task, chosen))

    # ------------------------------------------------------------------ local SGD

    def _train_worker(
        self, scratch: _Scratch, local: int, part: str, batches: list[torch.Tensor], rule: StepRule
    ) -> None:
        row, cols = self.params[local], self.layout.part(part)
        inputs, targets = self.train_x[local], self.train_y[local]
        stage = "full"
        if part == "head":  # the body is frozen: its features are the same at every step
            inputs, stage = scratch.outputs(row, inputs, "body"), "head"
        scratch.bind(row, cols)
        segment, velocity, grad = row[cols], self.momentum[local, cols], scratch.grad[cols]
        for idx in batches:
            grad.zero_()
            self.loss(scratch.module(inputs[idx], stage=stage), targets[idx]).backward()
            with torch.no_grad():
                self._apply(segment, velocity, grad, rule)

    def _train_heads(
        self,
        chosen: list[int],
        batches: dict[int, list[torch.Tensor]],
        rule: StepRule,
        threads: int,
    ) -> None:
        """The head phase of a linear head: body features once per worker, then every step of all
        workers with as many samples as one batched matrix product.

        Why: a head step is a (16 x 128) by (128 x 10) product; done worker by worker, Python and
        autograd overhead is most of its cost. Workers with the same number of samples have batches
        of the same sizes, so each group steps together.
        """
        features = self._each(
            chosen,
            lambda scratch, local: scratch.outputs(self.params[local], self.train_x[local], "body"),
            threads,
        )  # fmt: skip
        groups: dict[int, list[int]] = {}
        for position, local in enumerate(chosen):
            groups.setdefault(len(self.train_y[local]), []).append(position)
        for positions in groups.values():
            members = [chosen[p] for p in positions]
            self._train_head_group(
                members, [features[p] for p in positions], [batches[m] for m in members], rule
            )

    def _train_head_group(
        self,
        members: list[int],
        features: list[torch.Tensor],
        batches: list[list[torch.Tensor]],
        rule: StepRule,
    ) -> None:
        """SGD on the heads of `members` (equal sample counts), each with its own batch order."""
        rows = torch.tensor(members, device=self.params.device)
        cols = self.layout.part("head")
        order = torch.stack([torch.cat(b) for b in batches]).to(self.params.device)
        every = torch.arange(len(members), device=order.device)[:, None]
        inputs = torch.stack(features)[every, order]  # (G, samples of the phase, features)
        targets = torch.stack([self.train_y[m] for m in members])[every, order]
        head = self.params[rows, cols].requires_grad_()  # a copy: a leaf updated in place
        velocity = self.momentum[rows, cols]
        sizes = [len(b) for b in batches[0]]
        for x, y in zip(inputs.split(sizes, 1), targets.split(sizes, 1), strict=True):
            out = self._linear_heads(head, x)
            losses = self.loss(out.flatten(0, 1), y.flatten(), reduction="none")
            (grad,) = torch.autograd.grad(losses.view(len(members), -1).mean(1).sum(), head)
            with torch.no_grad():
                self._apply(head, velocity, grad, rule)
        self.params[rows, cols] = head.detach()
        self.momentum[rows, cols] = velocity

    def _linear_heads(self, head: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Each worker's linear head (rows of `head`) on its features x (G, batch, features)."""
        weight = head[:, self._head_weight].view(len(head), *self._head_weight_shape)
        out = torch.bmm(x, weight.transpose(1, 2))
        if self._head_bias is not None:
            out = out + head[:, self._head_bias].unsqueeze(1)
        return out.squeeze(-1) if self.model.squeeze_output else out

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
        with self._one_thread_per_worker() as threads:
            rows = self._each(list(range(len(self))), self._evaluate_worker, threads)
        keys = ("test_loss", "train_loss", "correct", "count")
        stats = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
        if self.regression:
            stats["correct"] = []
        return {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}

    def _evaluate_worker(self, scratch: _Scratch, local: int) -> tuple[float, float, int, int]:
        row = self.params[local]
        test_out = scratch.outputs(row, self.test_x[local])
        train_out = scratch.outputs(row, self.train_x[local])
        correct = 0 if self.regression else int((test_out.argmax(1) == self.test_y[local]).sum())
        return (
            self.loss(test_out, self.test_y[local]).item(),
            self.loss(train_out, self.train_y[local]).item(),
            correct,
            len(self.test_y[local]),
        )
