"""The workers one process owns: their parameters, optimizer state, data, and local training.

Every worker's parameters are one row of a flat tensor `params` (workers x P), laid out body first,
then head, so "the body" of all workers is one contiguous column block. Gossip mixes rows of that block
(repgossip.gossip), and a worker's SGD update is a handful of vector operations on its row.

Local training (docs/performance.md has the measurements behind each choice):
- a worker trains on a private module copy whose parameters are views of its row (`_Scratch`), so a
  step is a plain forward and backward with no per-step re-binding or gradient concatenation;
- on CPU, workers run side by side on the available threads, each with single-threaded kernels:
  a batch of 16 is too small to split across cores, a worker is not;
- a small module (the head, or a whole small model such as the synthetic task's) trains all
  workers' steps at once: one batched forward and backward over the workers' stacked parameter
  rows (repgossip.stacked); a head alone does so on features its frozen body computes once per
  round.
Every worker's numbers are computed by the same single-threaded kernels on its own data, so they do
not depend on the thread count or on which other workers this process holds.

Randomness is per worker and stateless: the batch order of worker w in phase p of round r comes from
a generator seeded by (seed, w, r, p) (repgossip.streams). A worker's numbers therefore do not
depend on which process holds it or on whether the run was resumed.
"""

from __future__ import annotations

import copy
import math
import queue
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from repgossip import stacked
from repgossip.models import SplitModel
from repgossip.streams import generator, worker_seeds

PARTS = ("body", "head", "all")
FORWARD_CHUNK = 256  # samples per gradient-free forward pass: bounded activation memory
# Largest module trained stacked over workers. Stacking turns each worker's Python-bound steps into
# one batched kernel per step, which wins for small modules; for larger ones the stacked weights
# and gradients no longer fit in cache and the per-worker loop is faster (docs/performance.md).
STACK_MAX_PARAMS = 4096
# Fewest workers worth a thread of their own in a stacked step: below it, a second thread adds more
# Python overhead (which the GIL serialises) than it saves in arithmetic.
STACK_CHUNK = 256
S = TypeVar("S")
T = TypeVar("T")


def stacks_well(module: nn.Module) -> bool:
    """Whether `module` trains faster stacked over workers than worker by worker: it has a stacked
    form (no convolutions: on this CPU a per-worker loop beat stacked ones) and it is small."""
    small = sum(p.numel() for p in module.parameters()) <= STACK_MAX_PARAMS
    return small and stacked.can_stack(module)


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

    def views(self, block: torch.Tensor, part: str = "all") -> dict[str, torch.Tensor]:
        """Named views of the parameters of `part` in `block`, whose last dimension holds exactly
        that part's columns (a whole row for "all"); leading dimensions (workers) are kept.
        Writing the block changes the views, and vice versa."""
        base, lead = self.part(part).start, block.shape[:-1]
        return {
            e.name: block[..., e.start - base : e.stop - base].view(*lead, *e.shape)
            for e in self.entries_of(part)
        }

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


@dataclass(frozen=True)
class BatchOrder:
    """The samples of one phase in training order, cut into consecutive batches of `sizes`."""

    order: torch.Tensor  # (sum(sizes),) sample indices
    sizes: tuple[int, ...]

    def batches(self) -> list[torch.Tensor]:
        return list(self.order.split(self.sizes))


def batch_schedule(n: int, batch_size: int, budget: Budget, gen: torch.Generator) -> BatchOrder:
    """Index batches for one phase: whole shuffled epochs (the last batch of each may be short),
    or `steps` batches of exactly `batch_size` drawn from consecutive shuffles."""
    if budget.epochs is not None:
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(budget.epochs)])
        full, rest = divmod(n, batch_size)
        epoch = (batch_size,) * full + ((rest,) if rest else ())
        return BatchOrder(order, epoch * budget.epochs)
    steps = budget.steps or 0
    needed = steps * batch_size
    stream = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(needed / n))])
    return BatchOrder(stream[:needed], (batch_size,) * steps)


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
        self.stack_head = stacks_well(model.head)
        self.stack_model = stacks_well(model)

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
        ids = np.array([self.worker_ids[local] for local in chosen], dtype=np.int64)
        seeds = worker_seeds(self.seed, ids, round_index, phase)
        batches = {
            local: batch_schedule(len(self.train_y[local]), self.batch_size, budget, generator(s))
            for local, s in zip(chosen, seeds, strict=True)
        }
        with self._one_thread_per_worker() as threads:
            if self.stack_model or (part == "head" and self.stack_head):
                self._train_stacked(chosen, part, batches, rule, threads)
            else:
                self._each(
                    chosen,
                    lambda scratch, local: self._train_worker(
                        scratch, local, part, batches[local], rule
                    ),
                    threads,
                )

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

    def _each(self, items: Sequence[S], fn: Callable[[_Scratch, S], T], threads: int) -> list[T]:
        """`fn(scratch, item)` for every item (a worker, or a chunk of workers), up to `threads` at
        a time, each with a scratch model of its own; results in order."""
        threads = max(1, min(threads, len(items)))
        while len(self._scratches) < threads:
            self._scratches.append(_Scratch(self.model, self.layout, self.params.device))
        if threads == 1:
            return [fn(self._scratches[0], item) for item in items]
        free: queue.SimpleQueue[_Scratch] = queue.SimpleQueue()
        for scratch in self._scratches[:threads]:
            free.put(scratch)

        def task(item: S) -> T:
            scratch = free.get()  # never blocks: as many scratch models as threads
            try:
                return fn(scratch, item)
            finally:
                free.put(scratch)

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(task, items))

    # ------------------------------------------------------------------ local SGD

    def _train_worker(
        self, scratch: _Scratch, local: int, part: str, batches: BatchOrder, rule: StepRule
    ) -> None:
        row, cols = self.params[local], self.layout.part(part)
        inputs, targets = self.train_x[local], self.train_y[local]
        stage = "full"
        if part == "head":  # the body is frozen: its features are the same at every step
            inputs, stage = scratch.outputs(row, inputs, "body"), "head"
        scratch.bind(row, cols)
        segment, velocity, grad = row[cols], self.momentum[local, cols], scratch.grad[cols]
        for idx in batches.batches():
            grad.zero_()
            self.loss(scratch.module(inputs[idx], stage=stage), targets[idx]).backward()
            with torch.no_grad():
                self._apply(segment, velocity, grad, rule)

    def _train_stacked(
        self,
        chosen: list[int],
        part: str,
        batches: dict[int, BatchOrder],
        rule: StepRule,
        threads: int,
    ) -> None:
        """SGD on `part` of all chosen workers, each step of a group of workers as one stacked
        forward and backward (repgossip.stacked); a head phase on body features computed once per
        worker.

        Why: a step of a small module is mostly Python and autograd overhead when done worker by
        worker. Workers with the same number of samples have batches of the same sizes, so each
        such group steps together, cut into at most one chunk per thread. A worker's numbers do not
        depend on which other workers share its chunk (tests/test_stacked.py).

        A model stacked whole recomputes its small body at every head step, stacked, rather than
        computing features worker by worker.
        """
        stage = "head" if part == "head" and not self.stack_model else "full"
        if stage == "head":  # the body is frozen: its features are the same at every step
            features = self._each(
                chosen,
                lambda scratch, local: scratch.outputs(
                    self.params[local], self.train_x[local], "body"
                ),
                threads,
            )  # fmt: skip
            inputs = dict(zip(chosen, features, strict=True))
        else:
            inputs = {local: self.train_x[local] for local in chosen}
        self._each(
            self._stacks(chosen, lambda local: len(self.train_y[local]), threads),
            lambda _, members: self._train_group(
                members, part, stage, [inputs[m] for m in members], [batches[m] for m in members],
                rule,
            ),
            threads,
        )  # fmt: skip

    def _stacks(
        self, chosen: list[int], shape: Callable[[int], Hashable], threads: int
    ) -> list[list[int]]:
        """Workers of equal `shape(local)` (sample counts) stack; each such group is cut into
        chunks of at least STACK_CHUNK workers, at most one per thread."""
        groups: dict[Hashable, list[int]] = {}
        for local in chosen:
            groups.setdefault(shape(local), []).append(local)
        return [
            chunk.tolist()
            for members in groups.values()
            for chunk in np.array_split(members, min(threads, -(-len(members) // STACK_CHUNK)))
        ]

    def _train_group(
        self,
        members: list[int],
        part: str,
        stage: str,
        inputs: list[torch.Tensor],
        batches: list[BatchOrder],
        rule: StepRule,
    ) -> None:
        """SGD on `part` of `members` (equal sample counts), each with its own batch order."""
        device = self.params.device
        rows = torch.tensor(members, device=device)
        cols = self.layout.part(part)
        order = torch.stack([b.order for b in batches]).to(device)  # (G, samples of the phase)
        every = torch.arange(len(members), device=device)[:, None]
        x_pool, y_pool = torch.stack(inputs), torch.stack([self.train_y[m] for m in members])
        segment = self.params[rows, cols].requires_grad_()  # a copy: a leaf updated in place
        velocity = self.momentum[rows, cols]
        params = self.layout.views(segment, part)
        other = {"body": "head", "head": "body"}.get(part)
        if other and stage == "full":  # the frozen part takes part in the forward pass
            params |= self.layout.views(self.params[rows, self.layout.part(other)], other)
        sizes = batches[0].sizes
        for idx in order.split(sizes, 1):
            x, y = x_pool[every, idx], y_pool[every, idx]
            out = stacked.model_forward(self.model, params, x, stage)
            losses = self.loss(out.flatten(0, 1), y.flatten(), reduction="none")
            (grad,) = torch.autograd.grad(losses.view(len(members), -1).mean(1).sum(), segment)
            with torch.no_grad():
                self._apply(segment, velocity, grad, rule)
        self.params[rows, cols] = segment.detach()
        self.momentum[rows, cols] = velocity

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
        everyone = list(range(len(self)))
        with self._one_thread_per_worker() as threads:
            if self.stack_model:
                sizes = lambda local: (len(self.train_y[local]), len(self.test_y[local]))  # noqa: E731
                stacks = self._stacks(everyone, sizes, threads)
                done = self._each(stacks, lambda _, members: self._evaluate_stack(members), threads)
                by_worker = {m: r for members, rs in zip(stacks, done, strict=True)
                             for m, r in zip(members, rs, strict=True)}  # fmt: skip
                rows = [by_worker[local] for local in everyone]
            else:
                rows = self._each(everyone, self._evaluate_worker, threads)
        keys = ("test_loss", "train_loss", "correct", "count")
        stats = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
        if self.regression:
            stats["correct"] = []
        return {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}

    def _evaluate_stack(self, members: list[int]) -> list[tuple[float, float, int, int]]:
        """_evaluate_worker for workers of equal train and test sizes, as one stacked forward."""
        rows = torch.tensor(members, device=self.params.device)
        params = self.layout.views(self.params[rows])
        stats = []
        for xs, ys in ((self.test_x, self.test_y), (self.train_x, self.train_y)):
            x, y = torch.stack([xs[m] for m in members]), torch.stack([ys[m] for m in members])
            out = stacked.model_forward(self.model, params, x, "full")
            losses = self.loss(out.flatten(0, 1), y.flatten(), reduction="none")
            stats.append((losses.view(y.shape).mean(1), out, y))
        (test_loss, test_out, test_y), (train_loss, _, _) = stats
        correct = [0] * len(members)
        if not self.regression:
            correct = (test_out.argmax(-1) == test_y).sum(1).tolist()
        count = test_y.shape[1]
        return [
            (test, train, c, count)
            for test, train, c in zip(test_loss.tolist(), train_loss.tolist(), correct, strict=True)
        ]

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
