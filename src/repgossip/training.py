"""Local training for a population: budgets, step rules (SGD, Adam, AdamW, gradient clipping),
batch orders, and the two training paths.

- Worker by worker: each worker steps on a scratch module whose tensors are views of its rows
  (repgossip.scratch), workers side by side on threads.
- Stacked: a small module (the head, or a whole small model such as the synthetic task's) trains a
  group of workers' steps at once, one batched forward and backward over their stacked rows
  (repgossip.stacked); a head alone does so on features its frozen body computes once per round.
Both paths apply the same update rule and the algorithm's gradient hook, so an algorithm's local
objective (a proximal term, a mask) works on either. The rule works on (G, columns) blocks, one row
per worker (G = 1 worker by worker), with each worker's own clipping norm and Adam step count, so a
worker's update is the same arithmetic on either path. docs/performance.md has the measurements
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
from repgossip.errors import RepgossipError, UsageError, described, user_code_failed
from repgossip.layout import MAIN_MODEL, OPTIMIZER_STEPS, SECOND_MOMENT, RowLayout, row_key
from repgossip.models import has_batch_norm
from repgossip.streams import generator, global_generators, worker_seeds

if TYPE_CHECKING:
    from repgossip.population import Population
    from repgossip.schema import Config
    from repgossip.scratch import Scratch

Rows = Callable[[str], torch.Tensor]
# (grad, weights, rows) -> None, in place: see Algorithm.adjust_gradient.
GradientHook = Callable[[torch.Tensor, torch.Tensor, Rows], None]
# (outputs, targets, rows) -> loss: see Algorithm.loss.
LossHook = Callable[[torch.Tensor, torch.Tensor, Rows], torch.Tensor]
STACKABLE_PARTS = ("body", "head", "all")
OPTIMIZERS = ("sgd", "adam", "adamw")
LAST_BATCH = ("merge", "drop", "keep")  # what an epoch's remainder becomes: batch_schedule
ADAM_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}  # torch.optim.Adam's
CLIP_EPS = 1e-6  # what torch.nn.utils.clip_grad_norm_ adds to the norm before dividing by it


@dataclass(frozen=True)
class Budget:
    """Local work of one phase: a number of epochs or of SGD steps (exactly one is set)."""

    epochs: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class StepRule:
    """One phase's update, as torch.optim computes it: SGD (dampening 0, optionally Nesterov), Adam
    (weight decay added to the gradient) or AdamW (decoupled weight decay), without amsgrad; with
    `clip_norm`, each worker's gradient is first scaled as torch.nn.utils.clip_grad_norm_ does."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    nesterov: bool = False
    betas: tuple[float, float] = (ADAM_DEFAULTS["beta1"], ADAM_DEFAULTS["beta2"])
    eps: float = ADAM_DEFAULTS["eps"]
    clip_norm: float | None = None

    @property
    def adam(self) -> bool:
        """Whether the rule keeps Adam's moments and step counts (adam and adamw)."""
        return self.optimizer != "sgd"


def budget(cfg: Config, which: str) -> Budget:
    """The budget of a phase whose keys are `which` ("head" or "body")."""
    return Budget(epochs=getattr(cfg, f"{which}_epochs"), steps=getattr(cfg, f"{which}_steps"))


def step_rule(cfg: Config, part: str, round_index: int) -> StepRule:
    """The update rule of a phase training `part`: lr_head or lr_body for a head or body phase, lr
    for the whole model, decayed per round; the optimizer and its coefficients from the config."""
    base = {"head": cfg.lr_head, "body": cfg.lr_body}.get(part) or cfg.lr
    assert base is not None, "a resolved config always has lr"
    lr = base * cfg.lr_decay**round_index
    adam = {
        k: ADAM_DEFAULTS[k] if getattr(cfg, k) is None else getattr(cfg, k) for k in ADAM_DEFAULTS
    }
    return StepRule(
        lr=lr,
        momentum=cfg.momentum or 0.0,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        nesterov=cfg.nesterov,
        betas=(adam["beta1"], adam["beta2"]),
        eps=adam["eps"],
        clip_norm=cfg.clip_norm,
    )


@dataclass(frozen=True)
class BatchOrder:
    """The samples of one phase in training order, cut into consecutive batches of `sizes`."""

    order: torch.Tensor  # (sum(sizes),) sample indices
    sizes: tuple[int, ...]

    def batches(self) -> list[torch.Tensor]:
        return list(self.order.split(self.sizes))


def batch_schedule(
    n: int,
    batch_size: int,
    budget: Budget,
    gen: torch.Generator,
    last_batch: str = "merge",
    no_single: bool = False,
) -> BatchOrder:
    """Index batches for one phase: whole shuffled epochs, or `steps` batches of exactly
    `batch_size` drawn from consecutive shuffles.

    An epoch whose samples do not divide into full batches ends with a remainder, and
    `last_batch` says what becomes of it:
    - "merge": it joins the epoch's last full batch (one batch of up to 2 * batch_size - 1). Every
      sample is seen and no step rests on a handful of samples: a step on a remainder of 1 to 8
      samples moves a personal model as far as a full step on noisier gradients, and the model
      evaluated right after it carries that noise (about twice the round-to-round spread of
      Ditto's accuracy at 200 samples and batch 16, docs/results.md).
    - "drop": it is left out, as torch's `drop_last=True` does (PFLlib does so); it changes with
      every shuffle, so no sample is left out for good.
    - "keep": it is a batch of its own, as a plain DataLoader gives it; with `no_single` (a model
      with BatchNorm, which cannot normalise one sample) a lone last sample still joins the batch
      before it.
    A worker with fewer samples than `batch_size` takes one batch of all of them per epoch under
    every policy (dropping it would leave the worker untrained)."""
    if budget.epochs is not None:
        full, rest = divmod(n, batch_size)
        used = full * batch_size if last_batch == "drop" and full else n
        order = torch.cat([torch.randperm(n, generator=gen)[:used] for _ in range(budget.epochs)])
        return BatchOrder(
            order, _epoch_sizes(full, rest, batch_size, last_batch, no_single) * budget.epochs
        )
    steps = budget.steps or 0
    needed = steps * batch_size
    stream = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(needed / n))])
    return BatchOrder(stream[:needed], (batch_size,) * steps)


def _epoch_sizes(
    full: int, rest: int, batch_size: int, last_batch: str, no_single: bool
) -> tuple[int, ...]:
    """The batch sizes of one epoch of `full` whole batches and a remainder of `rest` samples."""
    if not rest:
        return (batch_size,) * full
    if not full:
        return (rest,)
    if last_batch == "drop":
        return (batch_size,) * full
    if last_batch == "merge" or (no_single and rest == 1):
        return (batch_size,) * (full - 1) + (batch_size + rest,)
    return (batch_size,) * full + (rest,)


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
    active: Collection[int] | None = None,
    *,
    model: str = MAIN_MODEL,
    hook: GradientHook | None = None,
    loss: LossHook | None = None,
) -> None:
    """One local phase on every worker of `pop` (or those in `active`, by global id): the update
    rule on `part` of model copy `model`, the rest frozen; `hook` may change each gradient before
    the update, `loss` replaces the task's loss."""
    chosen = [
        local for local, worker in enumerate(pop.worker_ids) if active is None or worker in active
    ]
    ids = np.array([pop.worker_ids[local] for local in chosen], dtype=np.int64)
    seeds = worker_seeds(pop.seed, ids, round_index, phase)
    gens = {local: generator(s) for local, s in zip(chosen, seeds, strict=True)}
    batches = {
        local: batch_schedule(
            len(pop.train_y[local]),
            pop.batch_size,
            budget,
            gens[local],
            pop.last_batch,
            pop.has_batch_norm,
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
    slots = _slots(pop, work, local, cols, len(batches.sizes))
    others = _rows_of(pop, local, cols)
    loss = _loss_of(pop, work, local)
    for step, idx in enumerate(batches.batches()):
        grad.zero_()
        x = inputs[idx]
        if pop.augment:  # a new crop and flip each step, from the worker's stream
            x = crop_and_flip(x, gen)
            x = scratch.features(x) if on_features else x
        try:
            loss(scratch.module(x, stage=stage), targets[idx]).backward()
        except RepgossipError:
            raise
        except Exception as err:  # the user's model or loss failed: say where, in one line
            raise _step_failed(pop, local, err) from None
        with torch.no_grad():
            if work.hook is not None:
                work.hook(grad, segment, others)
            _apply(segment.view(1, -1), grad.view(1, -1), slots, work.rule, step)
    _keep(pop, work, local, cols, slots)


def _step_failed(pop: Population, local: int, err: Exception) -> UsageError:
    return user_code_failed(
        f"a training step failed on worker {pop.worker_ids[local]}: {described(err)}", err
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
    """The update rule on `work.part` of `members` (equal sample counts), each with its own batch
    order."""
    params_all = pop.rows[row_key(work.model, "params")]
    device = params_all.device
    rows = torch.tensor(members, device=device)
    cols = pop.layout.part(work.part)
    order = torch.stack([b.order for b in batches]).to(device)  # (G, samples of the phase)
    every = torch.arange(len(members), device=device)[:, None]
    x_pool, y_pool = torch.stack(inputs), torch.stack([pop.train_y[m] for m in members])
    segment = params_all[rows, cols].requires_grad_()  # a copy: a leaf updated in place
    slots = _slots(pop, work, rows, cols, len(batches[0].sizes))
    params = pop.layout.views(segment, work.part)
    other = {"body": "head", "head": "body"}.get(work.part)
    if other and stage == "full":  # the frozen part takes part in the forward pass
        params |= pop.layout.views(params_all[rows, pop.layout.part(other)], other)
    others = _rows_of(pop, rows, cols)
    for step, idx in enumerate(order.split(batches[0].sizes, 1)):
        x, y = x_pool[every, idx], y_pool[every, idx]
        out = stacked.model_forward(pop.model, params, x, stage)
        (grad,) = torch.autograd.grad(pop.mean_losses(out, y).sum(), segment)
        with torch.no_grad():
            if work.hook is not None:
                work.hook(grad, segment, others)
            _apply(segment, grad, slots, work.rule, step)
    params_all[rows, cols] = segment.detach()
    _keep(pop, work, rows, cols, slots)


def dense_gradients(
    pop: Population, batches: dict[int, torch.Tensor], model: str = MAIN_MODEL
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


# ---------------------------------------------------------------- the update rule


class AdamClock:
    """Adam's bias corrections at every step of a phase, for each worker and parameter tensor.

    torch.optim.Adam counts steps per parameter tensor (a frozen tensor gets no gradient, and its
    count stands still), so a worker's head and body may have taken different numbers of steps,
    and workers differ (one that sat out a round took none). Each correction is computed from the
    step count as a Python float, in double precision, exactly as torch computes it, and rounded
    to float32 once, as torch's kernel rounds its scalar: the update has torch's bits.
    """

    def __init__(self, rule: StepRule, counts: torch.Tensor, widths: list[int], steps: int) -> None:
        beta1, beta2 = rule.betas
        starts = sorted(set(counts.flatten().tolist()))
        table = [
            [(-(rule.lr / (1 - beta1 ** float(c + k))), (1 - beta2 ** float(c + k)) ** 0.5)
             for k in range(1, steps + 1)]
            for c in starts
        ]  # fmt: skip
        device = counts.device
        # (distinct start counts, steps, 2): float64 first, so float32 rounds each value once
        self.table = torch.tensor(table, dtype=torch.float64).reshape(len(starts), steps, 2)
        self.table = self.table.to(device, torch.float32)
        position = {c: i for i, c in enumerate(starts)}
        where = torch.tensor(
            [[position[c] for c in row] for row in counts.tolist()], dtype=torch.int64
        ).reshape(counts.shape)
        uniform = bool((counts == counts[:, :1]).all())  # the usual case: one count per worker
        self.where = (where[:, :1] if uniform else where).to(device)
        self.widths = None if uniform else torch.tensor(widths, device=device)

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(-lr / (1 - beta1^t), sqrt(1 - beta2^t)) at the phase's step `step` (from 0), each of
        shape (G, 1), or (G, columns) where a worker's tensors have different counts."""
        values = self.table[self.where, step]  # (G, 1 or tensors, 2)
        if self.widths is not None:
            values = values.repeat_interleave(self.widths, dim=1)
        return values[..., 0], values[..., 1]


@dataclass
class Slots:
    """The optimizer state of G workers' columns of one part during one phase, as (G, columns)
    blocks (views of the rows worker by worker, copies when stacked): SGD's velocity or Adam's
    first moment, Adam's second moment and step clock; `spans` are the columns of each parameter
    tensor in the block, and `tensors` their indices in the layout (Adam counts steps per tensor)."""

    momentum: torch.Tensor
    second: torch.Tensor | None
    clock: AdamClock | None
    spans: tuple[tuple[int, int], ...]
    tensors: slice
    steps: int


def _tensors_of(layout: RowLayout, cols: slice) -> tuple[slice, tuple[tuple[int, int], ...]]:
    """(indices of the parameter tensors inside `cols`, their column spans relative to it)."""
    inside = [
        i for i, e in enumerate(layout.entries) if cols.start <= e.start and e.stop <= cols.stop
    ]
    spans = tuple((layout.entries[i].start - cols.start, layout.entries[i].stop - cols.start)
                  for i in inside)  # fmt: skip
    return slice(inside[0], inside[-1] + 1) if inside else slice(0, 0), spans


def _block(rows: torch.Tensor, index: int | torch.Tensor, cols: slice) -> torch.Tensor:
    """(G, columns) of `rows`: a view for one worker (an int), a copy for a tensor of workers."""
    block = rows[index, cols]
    return block if block.dim() == 2 else block.unsqueeze(0)


def _slots(
    pop: Population, work: PhaseWork, index: int | torch.Tensor, cols: slice, steps: int
) -> Slots:
    """The optimizer state of workers `index` for a phase of `steps` steps on columns `cols`."""
    rule, rows = work.rule, pop.rows
    tensors, spans = _tensors_of(pop.layout, cols)
    momentum = _block(rows[row_key(work.model, "momentum")], index, cols)
    if not rule.adam:
        return Slots(momentum, None, None, spans, tensors, steps)
    key = row_key(work.model, SECOND_MOMENT)
    if key not in rows:
        raise ValueError(f"{rule.optimizer} needs Adam state rows: build the Population with it")
    counts = _block(rows[row_key(work.model, OPTIMIZER_STEPS)], index, tensors)
    widths = [b - a for a, b in spans]
    clock = AdamClock(rule, counts, widths, steps)
    return Slots(momentum, _block(rows[key], index, cols), clock, spans, tensors, steps)


def _keep(
    pop: Population, work: PhaseWork, index: int | torch.Tensor, cols: slice, slots: Slots
) -> None:
    """Write a phase's optimizer state back to the rows: the blocks of a stacked group are
    copies; and count the phase's steps of every trained tensor."""
    rows = pop.rows
    if isinstance(index, torch.Tensor):
        rows[row_key(work.model, "momentum")][index, cols] = slots.momentum
        if slots.second is not None:
            rows[row_key(work.model, SECOND_MOMENT)][index, cols] = slots.second
    if slots.clock is not None:
        rows[row_key(work.model, OPTIMIZER_STEPS)][index, slots.tensors] += slots.steps


def clip_rows_(grad: torch.Tensor, spans: tuple[tuple[int, int], ...], max_norm: float) -> None:
    """Scale each worker's row of `grad` (G, columns) as torch.nn.utils.clip_grad_norm_(params,
    max_norm) scales that worker's gradients: by min(1, max_norm / (norm + 1e-6)), the norm being
    the L2 norm of the per-tensor norms (`spans`). Every row is reduced on its own, in the same
    order whatever G is, so a worker's factor does not depend on the path or its stack."""
    norms = torch.stack([torch.linalg.vector_norm(grad[:, a:b], dim=1) for a, b in spans], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1, keepdim=True)
    grad.mul_(((total + CLIP_EPS).reciprocal() * max_norm).clamp_(max=1.0))


def _apply(
    segment: torch.Tensor, grad: torch.Tensor, slots: Slots, rule: StepRule, step: int
) -> None:
    """Step `step` of a phase on G workers' blocks (G, columns), in place, from their gradients:
    torch.optim's arithmetic, operation by operation, on every worker's row at once."""
    if rule.clip_norm is not None:
        clip_rows_(grad, slots.spans, rule.clip_norm)
    if rule.adam:
        _adam(segment, grad, slots, rule, step)
        return
    if rule.weight_decay:
        grad.add_(segment, alpha=rule.weight_decay)
    if rule.momentum:
        velocity = slots.momentum
        velocity.mul_(rule.momentum).add_(grad)
        grad = grad.add_(velocity, alpha=rule.momentum) if rule.nesterov else velocity
    segment.add_(grad, alpha=-rule.lr)


def _adam(
    segment: torch.Tensor, grad: torch.Tensor, slots: Slots, rule: StepRule, step: int
) -> None:
    """torch.optim.Adam's single-tensor step (AdamW's decoupled weight decay for adamw), with each
    worker's own bias corrections as (G, 1) factors in place of torch's scalars."""
    assert slots.second is not None and slots.clock is not None
    beta1, beta2 = rule.betas
    if rule.weight_decay:
        if rule.optimizer == "adamw":
            segment.mul_(1 - rule.lr * rule.weight_decay)
        else:
            grad.add_(segment, alpha=rule.weight_decay)
    first, second = slots.momentum, slots.second
    first.lerp_(grad, 1 - beta1)
    second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    neg_step, root = slots.clock.at(step)
    denom = (second.sqrt() / root).add_(rule.eps)
    segment.add_(first * neg_step / denom)  # addcdiv_(first, denom, value=-step_size), per row
