"""Local SGD for a population: budgets, step rules, batch orders, and the two training paths.

- Worker by worker: each worker steps on a scratch module whose tensors are views of its rows
  (repgossip.scratch), workers side by side on threads.
- Stacked: a small module (the head, or a whole small model such as the synthetic task's) trains a
  group of workers' steps at once, one batched forward and backward over their stacked rows
  (repgossip.stacked); a head alone does so on features its frozen body computes once per round.
Both paths apply the same update rule and the algorithm's gradient hook, so an algorithm's local
objective (a proximal term, a mask) works on either. docs/performance.md has the measurements
behind each choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from repgossip import stacked
from repgossip.augment import crop_and_flip
from repgossip.errors import UsageError
from repgossip.layout import row_key
from repgossip.streams import generator, global_generators, worker_seeds

if TYPE_CHECKING:
    from repgossip.config import Config
    from repgossip.population import Population
    from repgossip.scratch import Scratch

# Largest module trained stacked over workers. Stacking turns each worker's Python-bound steps into
# one batched kernel per step, which wins for small modules; for larger ones the stacked weights
# and gradients no longer fit in cache and the per-worker loop is faster (docs/performance.md).
STACK_MAX_PARAMS = 4096

Rows = Callable[[str], torch.Tensor]
# (grad, weights, rows) -> None, in place: see Algorithm.adjust_gradient.
GradientHook = Callable[[torch.Tensor, torch.Tensor, Rows], None]
# (outputs, targets, rows) -> loss: see Algorithm.loss.
LossHook = Callable[[torch.Tensor, torch.Tensor, Rows], torch.Tensor]
STACKABLE_PARTS = ("body", "head", "all")


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


def budget(cfg: Config, which: str) -> Budget:
    """The budget of a phase whose keys are `which` ("head" or "body")."""
    return Budget(epochs=getattr(cfg, f"{which}_epochs"), steps=getattr(cfg, f"{which}_steps"))


def step_rule(cfg: Config, part: str, round_index: int) -> StepRule:
    """The SGD rule of a phase training `part`: lr_head or lr_body for a head or body phase, lr
    for the whole model, decayed per round."""
    base = {"head": cfg.lr_head, "body": cfg.lr_body}.get(part) or cfg.lr
    assert base is not None, "a resolved config always has lr"
    lr = base * cfg.lr_decay**round_index
    return StepRule(lr=lr, momentum=cfg.momentum or 0.0, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class BatchOrder:
    """The samples of one phase in training order, cut into consecutive batches of `sizes`."""

    order: torch.Tensor  # (sum(sizes),) sample indices
    sizes: tuple[int, ...]

    def batches(self) -> list[torch.Tensor]:
        return list(self.order.split(self.sizes))


def batch_schedule(
    n: int, batch_size: int, budget: Budget, gen: torch.Generator, no_single: bool = False
) -> BatchOrder:
    """Index batches for one phase: whole shuffled epochs (the last batch of each may be short),
    or `steps` batches of exactly `batch_size` drawn from consecutive shuffles. With `no_single`
    (a model with BatchNorm, which cannot normalise one sample) an epoch's lone last sample joins
    the batch before it instead of forming a batch of one."""
    if budget.epochs is not None:
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(budget.epochs)])
        full, rest = divmod(n, batch_size)
        epoch = (batch_size,) * full + ((rest,) if rest else ())
        if no_single and rest == 1 and full > 0:
            epoch = (batch_size,) * (full - 1) + (batch_size + 1,)
        return BatchOrder(order, epoch * budget.epochs)
    steps = budget.steps or 0
    needed = steps * batch_size
    stream = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(needed / n))])
    return BatchOrder(stream[:needed], (batch_size,) * steps)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_batch_norm_batches(model: nn.Module, sizes: list[int], cfg: Config) -> None:
    """BatchNorm cannot normalise a batch of one sample in train mode: refuse, before training,
    a batch size that would leave some worker such a batch (a whole batch of one, or an epoch's
    last one)."""
    if not has_batch_norm(model):
        return
    size = cfg.batch_size
    lonely = [n for n in sizes if size == 1 or n == 1]  # an epoch's last lone sample is merged
    if lonely:
        raise UsageError(
            f"the model has BatchNorm, which cannot train on a batch of one sample, and "
            f"batch_size={size} leaves one to a worker with {lonely[0]} samples; choose a "
            "batch_size >= 2 (and at least 2 samples per worker)"
        )


def stacks_well(module: nn.Module) -> bool:
    """Whether `module` trains faster stacked over workers than worker by worker: it has a stacked
    form (no convolutions, no batch statistics, no dropout) and it is small."""
    small = sum(p.numel() for p in module.parameters()) <= STACK_MAX_PARAMS
    return small and stacked.can_stack(module)


@dataclass(frozen=True)
class PhaseWork:
    """What one phase does to every chosen worker."""

    part: str
    model: str  # the model copy trained
    rule: StepRule
    hook: GradientHook | None
    loss: LossHook | None = None


def train_phase(
    pop: Population,
    part: str,
    budget: Budget,
    rule: StepRule,
    round_index: int,
    phase: int,
    active: Collection[int] | None,
    model: str,
    hook: GradientHook | None,
    loss: LossHook | None = None,
) -> None:
    """Run one local phase on every worker of `pop` (or those in `active`, by global id)."""
    chosen = [
        local for local, worker in enumerate(pop.worker_ids) if active is None or worker in active
    ]
    ids = np.array([pop.worker_ids[local] for local in chosen], dtype=np.int64)
    seeds = worker_seeds(pop.seed, ids, round_index, phase)
    gens = {local: generator(s) for local, s in zip(chosen, seeds, strict=True)}
    batches = {
        local: batch_schedule(
            len(pop.train_y[local]), pop.batch_size, budget, gens[local], pop.has_batch_norm
        )
        for local in chosen
    }  # drawn first: dropout masks continue each worker's stream after its batch order
    fresh = read_anew(pop, chosen, batches, round_index, phase)
    work = PhaseWork(part, model, rule, hook, loss)
    stackable = loss is None and part in STACKABLE_PARTS and not pop.augment and not fresh
    with pop.pool.one_thread_per_worker() as threads:
        if stackable and (pop.stack_model or (part == "head" and pop.stack_head)):
            _train_stacked(pop, chosen, work, batches, threads)
        else:
            pop.pool.each(
                chosen,
                lambda scratch, local: _train_worker(
                    pop, scratch, local, work, batches[local], gens[local], fresh.get(local)
                ),
                threads,
            )


# A phase's inputs read anew, its targets, and its batch order over their positions.
Fresh = tuple[torch.Tensor, torch.Tensor, BatchOrder]


def read_anew(
    pop: Population,
    chosen: list[int],
    batches: dict[int, BatchOrder],
    round_index: int,
    phase: int,
) -> dict[int, Fresh]:
    """Every training batch of the phase for the workers whose data is a Dataset read anew (its
    random transforms drawn again), read in this thread, worker by worker and step by step, each
    step under global generators seeded from (seed, worker, round, phase, step): training threads
    never touch a global generator, so no number depends on threads, processes or a resume. The
    inputs come in batch order, with their targets and a batch order over their positions (the
    frozen body's features of a head phase are then computed once over them, as for tensors)."""
    fresh: dict[int, Fresh] = {}
    with global_generators() as reseed:
        for local in chosen:
            source = pop.sources[local]
            if source is None:
                continue
            order, worker = batches[local], pop.worker_ids[local]
            inputs = [
                source.read(idx, pop.seed, (worker, round_index, phase, step), reseed)
                for step, idx in enumerate(order.batches())
            ]
            targets = pop.train_y[local][order.order.to(pop.device)]
            positions = BatchOrder(torch.arange(len(order.order)), order.sizes)
            fresh[local] = (torch.cat(inputs).to(pop.device), targets, positions)
    return fresh


def _rows_of(
    pop: Population, index: int | torch.Tensor, cols: slice
) -> Callable[[str], torch.Tensor]:
    return lambda name: pop.rows[name][index, cols]


def _train_worker(
    pop: Population,
    scratch: Scratch,
    local: int,
    work: PhaseWork,
    batches: BatchOrder,
    gen: torch.Generator,
    fresh: Fresh | None = None,
) -> None:
    rows = pop.worker_rows(local, work.model)
    cols = pop.layout.part(work.part)
    inputs, targets = pop.train_x[local], pop.train_y[local]
    if fresh is not None:  # read anew for this phase (read_anew)
        inputs, targets, batches = fresh
    # The body is frozen: a model that is provably head(body(x)) computes its features once (per
    # step with augmentation) and trains the head on them; a user's model runs its own forward.
    on_features = cols.start >= pop.layout.body_size and pop.model.separable
    stage = "head" if on_features else "full"
    if on_features and not pop.augment:  # the body's features are the same at every step
        inputs = scratch.outputs(rows, inputs, "body")
    scratch.bind(rows, cols)
    scratch.start(gen, training=True)
    segment, grad = rows.params[cols], scratch.grad[cols]
    velocity = pop.rows[row_key(work.model, "momentum")][local, cols]
    others = _rows_of(pop, local, cols)
    loss = _loss_of(pop, work, local)
    for idx in batches.batches():
        grad.zero_()
        x = inputs[idx]
        if pop.augment:  # a new crop and flip each step, from the worker's stream
            x = crop_and_flip(x, gen)
            x = scratch.features(x) if on_features else x
        try:
            loss(scratch.module(x, stage=stage), targets[idx]).backward()
        except Exception as err:  # the user's model or loss failed: say where, in one line
            raise _step_failed(pop, local, err) from None
        with torch.no_grad():
            if work.hook is not None:
                work.hook(grad, segment, others)
            _apply(segment, velocity, grad, work.rule)


def _step_failed(pop: Population, local: int, err: Exception) -> UsageError:
    line = (str(err).strip().splitlines() or [""])[0][:300]
    return UsageError(
        f"a training step failed on worker {pop.worker_ids[local]}: {type(err).__name__}: {line}"
    )


def _loss_of(
    pop: Population, work: PhaseWork, local: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The phase's loss for worker `local`: the task's, or the algorithm's with that worker's rows."""
    hook = work.loss
    if hook is None:
        return pop.loss
    whole_rows = _rows_of(pop, local, slice(None))
    return lambda outputs, targets: hook(outputs, targets, whole_rows)


def _train_stacked(
    pop: Population,
    chosen: list[int],
    work: PhaseWork,
    batches: dict[int, BatchOrder],
    threads: int,
) -> None:
    """SGD on `work.part` of all chosen workers, each step of a group of workers as one stacked
    forward and backward; a head phase on body features computed once per worker.

    Why: a step of a small module is mostly Python and autograd overhead when done worker by
    worker. Workers with the same number of samples have batches of the same sizes, so each
    such group steps together, cut into at most one chunk per thread. A worker's numbers do not
    depend on which other workers share its chunk (tests/test_stacked.py).

    A model stacked whole recomputes its small body at every head step, stacked, rather than
    computing features worker by worker.
    """
    stage = "head" if work.part == "head" and not pop.stack_model else "full"
    if stage == "head":  # the body is frozen: its features are the same at every step
        features = pop.pool.each(
            chosen,
            lambda scratch, local: scratch.outputs(
                pop.worker_rows(local, work.model), pop.train_x[local], "body"
            ),
            threads,
        )
        inputs = dict(zip(chosen, features, strict=True))
    else:
        inputs = {local: pop.train_x[local] for local in chosen}
    pop.pool.each(
        pop.pool.stacks(chosen, lambda local: len(pop.train_y[local]), threads),
        lambda _, members: _train_group(
            pop, members, work, stage, [inputs[m] for m in members], [batches[m] for m in members]
        ),
        threads,
    )


def _train_group(
    pop: Population,
    members: list[int],
    work: PhaseWork,
    stage: str,
    inputs: list[torch.Tensor],
    batches: list[BatchOrder],
) -> None:
    """SGD on `work.part` of `members` (equal sample counts), each with its own batch order."""
    params_all = pop.rows[row_key(work.model, "params")]
    momentum_all = pop.rows[row_key(work.model, "momentum")]
    device = params_all.device
    rows = torch.tensor(members, device=device)
    cols = pop.layout.part(work.part)
    order = torch.stack([b.order for b in batches]).to(device)  # (G, samples of the phase)
    every = torch.arange(len(members), device=device)[:, None]
    x_pool, y_pool = torch.stack(inputs), torch.stack([pop.train_y[m] for m in members])
    segment = params_all[rows, cols].requires_grad_()  # a copy: a leaf updated in place
    velocity = momentum_all[rows, cols]
    params = pop.layout.views(segment, work.part)
    other = {"body": "head", "head": "body"}.get(work.part)
    if other and stage == "full":  # the frozen part takes part in the forward pass
        params |= pop.layout.views(params_all[rows, pop.layout.part(other)], other)
    others = _rows_of(pop, rows, cols)
    for idx in order.split(batches[0].sizes, 1):
        x, y = x_pool[every, idx], y_pool[every, idx]
        out = stacked.model_forward(pop.model, params, x, stage)
        losses = pop.loss(out.flatten(0, 1), y.flatten(), reduction="none")
        (grad,) = torch.autograd.grad(losses.view(len(members), -1).mean(1).sum(), segment)
        with torch.no_grad():
            if work.hook is not None:
                work.hook(grad, segment, others)
            _apply(segment, velocity, grad, work.rule)
    params_all[rows, cols] = segment.detach()
    momentum_all[rows, cols] = velocity


def dense_gradients(
    pop: Population, batches: dict[int, torch.Tensor], model: str
) -> dict[int, torch.Tensor]:
    """The gradient of the task loss with respect to every parameter of model copy `model`, for
    each local worker in `batches` on its samples `batches[local]`, as a flat row. Eval mode, so
    no BatchNorm statistic moves and no dropout mask is drawn: a measurement, not a step."""

    def one(scratch: Scratch, local: int) -> torch.Tensor:
        rows = pop.worker_rows(local, model)
        scratch.bind(rows, slice(0, pop.layout.size))
        scratch.start(None, training=False)
        scratch.grad.zero_()
        idx = batches[local]
        pop.loss(scratch.module(pop.train_x[local][idx]), pop.train_y[local][idx]).backward()
        return scratch.grad.clone()

    chosen = list(batches)
    with pop.pool.one_thread_per_worker() as threads:
        grads = pop.pool.each(chosen, one, threads)
    return dict(zip(chosen, grads, strict=True))


def _apply(
    segment: torch.Tensor, velocity: torch.Tensor, grad: torch.Tensor, rule: StepRule
) -> None:
    if rule.weight_decay:
        grad.add_(segment, alpha=rule.weight_decay)
    if rule.momentum:
        velocity.mul_(rule.momentum).add_(grad)
        grad = velocity
    segment.add_(grad, alpha=-rule.lr)
