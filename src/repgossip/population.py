"""The workers one process owns: their rows (parameters, optimizer state, buffers, algorithm
state) and data. Local training (repgossip.training, `train_phase`) and evaluation
(repgossip.evaluation, `evaluate`) sit above this module and take a Population.

Every per-worker quantity is a row set: a tensor whose first dimension is this process's workers.
The main model's are `params`, `momentum` (SGD's velocity, or Adam's first moment), `buffers`
(BatchNorm running statistics) and `int_buffers` (BatchNorm's batch counters), and with Adam also
`second_moment` and `optimizer_steps` (a step count per parameter tensor); another model copy `m`
of an algorithm (Ditto's personal model) has `m`, `m.momentum`, `m.buffers`, ...; an algorithm's
extra state
(a mask) has its own name; on a directed graph each worker's push-sum weight is the row set
`push_weight`. Checkpoints save every row set and the distributed engine moves each like the
parameters, so anything stored here survives a resume and any layout over processes.

Randomness is per worker and stateless: the batch order (and dropout masks) of worker w in phase p
of round r come from a generator seeded by (seed, w, r, p) (repgossip.streams), so a worker's
numbers do not depend on which process holds it or on whether the run was resumed. A worker whose
training data is a Dataset read anew (random transforms) has its batches read in the main thread
under seeds of the same kind (repgossip.training.read_anew).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from repgossip.data.federation import TrainSource
from repgossip.layout import (
    MAIN_MODEL,
    OPTIMIZER_STEPS,
    SECOND_MOMENT,
    RowLayout,
    StateSpec,
    row_key,
)
from repgossip.models import SplitModel, has_batch_norm
from repgossip.objectives import LossFn, MetricScore
from repgossip.scratch import Scratch, WorkerPool, WorkerRows
from repgossip.stacked import stacks_well

# Each worker's push-sum weight w_i (width 1, starting at 1) on a directed graph: the stored shared
# block is the de-biased z_i = x_i / w_i, so the weight must survive checkpoints and layouts too.
PUSH_WEIGHT = "push_weight"


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
        *,
        models: Sequence[str] = (),
        extra_state: Mapping[str, StateSpec] | None = None,
        share_buffers: bool = False,
        augment: bool = False,
        sources: Sequence[TrainSource | None] | None = None,
        push_sum: bool = False,
        threads: int | None = None,
        optimizer: str = "sgd",
        loss_fn: LossFn | None = None,
        metric_fn: MetricScore | None = None,
        last_batch: str = "merge",
    ) -> None:
        self.model = model.to(device)
        self.layout = RowLayout.parameters(model)
        self.buffer_layout = RowLayout.buffers(model, integer=False)
        self.int_buffer_layout = RowLayout.buffers(model, integer=True)
        self.worker_ids = list(worker_ids)
        self.train_x, self.train_y = ([t.to(device) for t in ts] for ts in train)
        self.test_x, self.test_y = ([t.to(device) for t in ts] for ts in test)
        self.regression = regression
        self.batch_size = batch_size
        self.last_batch = last_batch  # what an epoch's remainder becomes (training.batch_schedule)
        self.seed = seed
        self.device = device
        self.share_buffers = share_buffers  # BatchNorm statistics travel with the body
        self.augment = augment  # crop and flip every training batch (repgossip.augment)
        # per worker: a Dataset read anew for every training batch (random transforms), or None
        self.sources = list(sources) if sources is not None else [None] * len(self.worker_ids)
        self.models = (MAIN_MODEL, *models)
        self.adam = optimizer != "sgd"  # Adam's second moment and step counts get rows too
        self.loss_fn = loss_fn  # a plug-in loss (repgossip.objectives), or None: the task's own
        self.metric_fn = metric_fn  # a plug-in metric, evaluated on each worker's test split
        self.rows: dict[str, torch.Tensor] = {}
        for name in self.models:
            self._add_model_rows(name)
        for name, spec in (extra_state or {}).items():
            width = self.layout.size if spec.width == "params" else int(spec.width)
            self.rows[name] = torch.full((len(self), width), spec.fill, device=device)
        if push_sum:  # only then: an undirected run's rows and checkpoints stay as they were
            self.rows[PUSH_WEIGHT] = torch.ones((len(self), 1), device=device)
        self.has_batch_norm = has_batch_norm(self.model)  # no training batch of one sample
        # Stacked training runs the library's own forward: only for a model that is provably it.
        self.stack_model = model.separable and stacks_well(self.model)
        self.stack_head = model.separable and stacks_well(self.model.head)
        layouts = (self.layout, self.buffer_layout, self.int_buffer_layout)
        self.pool = WorkerPool(lambda: Scratch(self.model, layouts, device), device, threads)

    def _add_model_rows(self, name: str) -> None:
        """Every worker's copy `name` starts from the common initialisation, optimizer state zero."""
        n = len(self)
        params = self.layout.flatten(self.model.parameters()).to(self.device)
        buffers = self.buffer_layout.flatten(
            b for _, b in self.model.named_buffers() if b.is_floating_point()
        ).to(self.device, torch.float32)
        ints = self.int_buffer_layout.flatten(
            b for _, b in self.model.named_buffers() if not b.is_floating_point()
        ).to(self.device, torch.int64)
        self.rows[row_key(name, "params")] = params.repeat(n, 1)
        self.rows[row_key(name, "momentum")] = torch.zeros(n, params.numel(), device=self.device)
        self.rows[row_key(name, "buffers")] = buffers.repeat(n, 1)
        self.rows[row_key(name, "int_buffers")] = ints.repeat(n, 1)
        if self.adam:
            tensors = len(self.layout.entries)
            self.rows[row_key(name, SECOND_MOMENT)] = torch.zeros(
                n, params.numel(), device=self.device
            )
            self.rows[row_key(name, OPTIMIZER_STEPS)] = torch.zeros(
                n, tensors, dtype=torch.int64, device=self.device
            )

    def __len__(self) -> int:
        return len(self.worker_ids)

    @property
    def params(self) -> torch.Tensor:
        return self.rows["params"]

    @property
    def momentum(self) -> torch.Tensor:
        return self.rows["momentum"]

    @property
    def push_weight(self) -> torch.Tensor:
        """(local workers, 1): each worker's push-sum weight; only on a directed graph."""
        return self.rows[PUSH_WEIGHT]

    def reset_momentum(self) -> None:
        """Zero every worker's optimizer state, of every model copy (SGD's velocity; Adam's moments
        and step counts): what the DePRL authors' code does by building a fresh optimizer each
        round (`reset_momentum`)."""
        kinds = ("momentum", SECOND_MOMENT, OPTIMIZER_STEPS) if self.adam else ("momentum",)
        for name in self.models:
            for kind in kinds:
                self.rows[row_key(name, kind)].zero_()

    def worker_rows(self, local: int, model: str = MAIN_MODEL) -> WorkerRows:
        """Views of worker `local`'s rows of model copy `model`, for a scratch module to bind."""
        return WorkerRows(
            *(
                self.rows[row_key(model, kind)][local]
                for kind in ("params", "buffers", "int_buffers")
            )
        )

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """The task's loss: the plug-in's (a mean over the batch only), or cross-entropy for
        classification and mean squared error for regression."""
        if self.loss_fn is not None:
            if reduction != "mean":
                raise ValueError("a loss plug-in gives the mean over the batch only")
            return self.loss_fn(outputs, targets)
        if self.regression:
            return F.mse_loss(outputs, targets, reduction=reduction)
        return F.cross_entropy(outputs, targets, reduction=reduction)

    def mean_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(G,) each stacked worker's mean loss over its batch, from outputs (G, batch, ...) and
        targets (G, batch): one call of the built-in loss on all samples, or the plug-in's once
        per worker (its mean over a batch cannot be split by worker afterwards)."""
        if self.loss_fn is not None:
            return torch.stack([self.loss_fn(o, t) for o, t in zip(outputs, targets, strict=True)])
        losses = self.loss(outputs.flatten(0, 1), targets.flatten(), reduction="none")
        return losses.view(len(outputs), -1).mean(1)

    def gossiped_blocks(self, part: str) -> list[torch.Tensor]:
        """The column blocks that gossip of `part` mixes: the parameters, and the BatchNorm
        statistics of the same part when they are shared (`share_bn_stats`)."""
        blocks = [self.params[:, self.layout.part(part)], *self.shared_buffer_blocks(part)]
        return [b for b in blocks if b.shape[1]] or blocks[:1]

    def shared_buffer_blocks(self, part: str) -> list[torch.Tensor]:
        """The BatchNorm statistics of `part` that gossip mixes with its parameters: one block
        when `share_bn_stats` shares them, none otherwise."""
        if not (self.share_buffers and self.buffer_layout.size):
            return []
        return [self.rows["buffers"][:, self.buffer_layout.part(part)]]
