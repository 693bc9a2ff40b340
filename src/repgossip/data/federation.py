"""Per-worker train and test tensors, and the checks that user-supplied ones must pass.

A `Federation` is what every dataset becomes: one train and one test split per worker. Built-in
datasets, `package.module:function` plug-ins and data handed to `repgossip.run(data=...)` all
arrive here in one of four forms:

- a Federation;
- `(train_x, train_y, test_x, test_y)`: four lists (one entry per worker) of tensors or arrays;
- `(train, test)`: two lists with one torch `Dataset` (or `DataLoader`) of `(x, y)` items per worker;
- `(train, test)`: two centralized datasets (each an `(x, y)` pair of tensors or arrays, a torch
  `Dataset` of `(x, y)` items, or a `DataLoader`, of which only the Dataset is used) that the
  configured partition splits over workers, each worker's test split following its own train
  label distribution.

Per-worker data is used as given (the run records partition=natural); a user's centralized data is
split iid and whole unless the config says otherwise (repgossip.data.datasets.USER_SPLIT).

A torch Dataset is read item by item, under global generators seeded from the run's seed and the
read (repgossip.streams.read_seed), so its random transforms give the same items in every process.
A training Dataset with a transform (`reread_data`, see `rereads`) is read anew for every training
batch (a `TrainSource`), so its random transforms are drawn anew every epoch; its first read gives
the tensors that the train loss is evaluated on, the checks and the data digest. Test Datasets, and
labels, are read once.

Labels of an integer dtype make a classification task (labels 0..C-1); floating labels a regression
task. Floating-point inputs are converted to float32; integer inputs are kept as int64 (token ids
for an embedding). Anything else is refused in one line naming the expected form.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from repgossip.data.partition import PARTITIONS, partition, test_split
from repgossip.errors import UsageError, described, first_line, user_code_failed
from repgossip.streams import global_generators, read_seed

if TYPE_CHECKING:
    from repgossip.schema import Config

EXPECTED = (
    "a Federation, (train_x, train_y, test_x, test_y) lists with one tensor per worker, (train, "
    "test) lists with one torch Dataset per worker, or (train, test) datasets of (x, y)"
)
REREAD_CHOICES = ("auto", "always", "never")  # the config key reread_data
GIVEN_SPLIT = "one split per worker, as given (partition=natural)"
# What each read of a Dataset is, the first word of its seed (repgossip.streams.read_seed).
FIRST_READ, WORKER_READ, TRAINING_READ = 0, 1, 2
SPLIT_WORDS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class TrainSource:
    """A worker's training samples in a torch Dataset that is read anew for every training batch:
    `indices[k]` is the Dataset index of the worker's sample k, `shape` the input shape its first
    read gave (every later read must give it too)."""

    dataset: Any
    indices: np.ndarray
    shape: tuple[int, ...]
    source: str  # names the dataset in error messages

    def read(
        self,
        samples: torch.Tensor,
        seed: int,
        where: Sequence[int],
        reseed: Callable[[int], None],
    ) -> torch.Tensor:
        """The inputs of the worker's `samples` (positions into its split), read in order as
        training takes them, right after `reseed` (of streams.global_generators) seeded the
        global generators from (`seed`, TRAINING_READ, *`where`)."""
        reseed(read_seed(seed, (TRAINING_READ, *where)))
        x, _ = _read_items(self.dataset, self.indices[samples.cpu().numpy()], "train", self.source)
        if tuple(x.shape[1:]) != self.shape:
            raise UsageError(
                f"dataset {self.source}: the train Dataset gave inputs of shape "
                f"{tuple(x.shape[1:])} on a later read, {self.shape} on the first; its transforms "
                "must keep the shape"
            )
        return _as_trained(x)


# (the workers' average body as one flat float64 row, the model's body module) -> named values
BodyMetrics = Callable[[torch.Tensor, nn.Module], dict[str, float]]


@dataclass
class Federation:
    train_x: list[torch.Tensor]
    train_y: list[torch.Tensor]
    test_x: list[torch.Tensor]
    test_y: list[torch.Tensor]
    input_shape: tuple[int, ...]
    num_classes: int  # 0 for a regression task
    # metrics of the workers' average body that only this task can compute, for each evaluation
    # record (the synthetic task's distance to its true representation); None: none
    body_metrics: BodyMetrics | None = None
    split: str = ""  # how the data was split over workers, in words (the run's note says it)
    pool: int | None = None  # the training samples a partition drew from; None: split per worker
    given: bool = False  # handed over one split per worker: the run records partition=natural
    sources: list[TrainSource | None] | None = None  # per worker: read anew for every batch

    @property
    def regression(self) -> bool:
        return self.num_classes == 0

    def train_sizes(self) -> list[int]:
        return [len(y) for y in self.train_y]

    def describe(self) -> str:
        """One line: how the data was split, how much of it each worker trains on."""
        sizes = self.train_sizes()
        used = f"{sum(sizes):,}" + (f" of {self.pool:,}" if self.pool is not None else "")
        low, high = min(sizes, default=0), max(sizes, default=0)
        each = f"{low:,} per worker" if low == high else f"{low:,} to {high:,} per worker"
        anew = ", inputs read anew for every training batch" if any(self.sources or ()) else ""
        return f"{self.split or 'split per worker'}: {used} training samples, {each}{anew}"

    def digest(self) -> str:
        """sha256 over every worker's train and test tensors, in worker order: a checkpoint records
        it, so a run resumes only on the data split it was trained on."""
        hasher = hashlib.sha256()
        for tensors in (self.train_x, self.train_y, self.test_x, self.test_y):
            for tensor in tensors:
                array = tensor.detach().cpu().contiguous().numpy()
                hasher.update(f"{array.dtype}{array.shape}".encode())
                hasher.update(array.reshape(-1).view(np.uint8).data)
        return hasher.hexdigest()


def as_federation(data: Any, cfg: Config, source: str) -> Federation:
    """`data` in any of the accepted forms as a checked Federation for `cfg.workers` workers;
    `source` names where it came from, for error messages."""
    if isinstance(data, Federation):
        data.split, data.given = data.split or GIVEN_SPLIT, True
        return check_federation(data, cfg.workers, source)
    if isinstance(data, (tuple, list)) and len(data) == 4:
        train_x, train_y, test_x, test_y = (
            _tensor_list(part, name, source) for part, name in zip(data, _SPLITS, strict=True)
        )
        fed = _from_lists(train_x, train_y, test_x, test_y)
        return check_federation(fed, cfg.workers, source)
    if _per_worker_datasets(data):
        return check_federation(_from_datasets(data, cfg, source), cfg.workers, source)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        train, test = (_centralized(d, name, source, cfg.seed) for d, name in
                       zip(data, ("train", "test"), strict=True))  # fmt: skip
        dataset = train[2] if train[2] is not None and rereads(train[2], cfg.reread_data) else None
        fed = partitioned(*train[:2], *test[:2], cfg, reread=dataset, source=source)
        return check_federation(fed, cfg.workers, source)
    raise UsageError(f"dataset {source} must be {EXPECTED}; got {_kind(data)}")


def comes_per_worker(data: Any) -> bool:
    """Whether `data` (handed to repgossip.run) gives one split per worker, used as given."""
    four_lists = isinstance(data, (tuple, list)) and len(data) == 4 and _is_list(data[0])
    return isinstance(data, Federation) or four_lists or _per_worker_datasets(data)


def workers_of(data: Any) -> int | None:
    """How many workers per-worker `data` has; None for centralized data."""
    if isinstance(data, Federation):
        return len(data.train_x)
    return len(data[0]) if comes_per_worker(data) else None


def rereads(dataset: Any, mode: str) -> bool:
    """Whether a training Dataset is read anew for every batch under `reread_data=mode`: always,
    never, or (auto) where it, or a Dataset it wraps (a Subset's, a ConcatDataset's), has a
    `transform` or `transforms` attribute that is not None, as torchvision's datasets do."""
    if mode != "auto":
        return mode == "always"
    if any(getattr(dataset, name, None) is not None for name in ("transform", "transforms")):
        return True
    inner = [getattr(dataset, "dataset", None), *getattr(dataset, "datasets", ())]
    return any(isinstance(d, Dataset) and d is not dataset and rereads(d, mode) for d in inner)


_SPLITS = ("train_x", "train_y", "test_x", "test_y")


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def _is_list(value: Any) -> bool:
    return isinstance(value, (tuple, list))


def _is_dataset(value: Any) -> bool:
    return isinstance(value, (Dataset, DataLoader))


def _per_worker_datasets(data: Any) -> bool:
    """`(train, test)`, each a non-empty list of Datasets or DataLoaders: one per worker."""
    return (
        _is_list(data)
        and len(data) == 2
        and all(_is_list(part) and part and all(map(_is_dataset, part)) for part in data)
    )


def _tensor(value: Any, what: str, source: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    raise UsageError(
        f"dataset {source}: {what} must be a tensor or numpy array, got {_kind(value)}"
    )


def _tensor_list(part: Any, name: str, source: str) -> list[torch.Tensor]:
    if not isinstance(part, Sequence) or isinstance(part, (torch.Tensor, np.ndarray, str)):
        raise UsageError(
            f"dataset {source}: {name} must be a list with one tensor per worker, got {_kind(part)}"
        )
    return [_tensor(t, f"{name}[{i}]", source) for i, t in enumerate(part)]


def _map_style(data: Any, what: str, source: str) -> Any:
    """The Dataset of `data` (a DataLoader's own: its batch size, sampler and workers play no
    part, as repgossip draws every batch itself), refused unless it can be indexed and sized."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset) or not (
        hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    ):
        raise UsageError(
            f"dataset {source}: the {what} is a {type(dataset).__name__}; give a map-style "
            "Dataset (with __len__ and __getitem__) or tensors"
        )
    return dataset


def _read_items(
    dataset: Any, indices: Sequence[int] | np.ndarray, what: str, source: str
) -> tuple[torch.Tensor, list[Any]]:
    """(inputs, raw labels) of the `indices` items of a Dataset of (x, y) items, in order; every
    failure one line naming the dataset. `_labels` makes the labels a tensor (a re-read, whose
    labels were read the first time, skips it)."""
    items = []
    for i in indices:
        try:
            items.append(dataset[int(i)])
        except Exception as err:
            raise user_code_failed(
                f"dataset {source}: reading item {int(i)} of the {what} Dataset raised "
                f"{described(err)}",
                err,
            ) from None
    if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
        raise UsageError(f"dataset {source}: the {what} Dataset must yield (x, y) items")
    try:
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
    except (TypeError, RuntimeError, ValueError) as err:
        line = first_line(err, 200)
        raise UsageError(
            f"dataset {source}: the {what} Dataset's inputs must be tensors or arrays of one "
            f"shape ({line})"
        ) from None
    return x.detach().cpu(), [it[1] for it in items]


def _labels(raw: list[Any], what: str, source: str) -> torch.Tensor:
    """One label per item as a tensor: int64 classes or float targets."""
    labels = [torch.as_tensor(v) for v in raw]
    if any(label.numel() != 1 for label in labels):
        raise UsageError(f"dataset {source}: the {what} Dataset must yield one label per item")
    return torch.as_tensor([float(v) if torch.is_floating_point(v) else int(v) for v in labels])


def _first_read(
    data: Any, what: str, source: str, seed: int, where: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(inputs, labels, Dataset) of a whole Dataset or DataLoader, read once under global
    generators seeded from (`seed`, *`where`)."""
    dataset = _map_style(data, what, source)
    with global_generators() as reseed:
        reseed(read_seed(seed, where))
        x, raw = _read_items(dataset, range(len(dataset)), what, source)
    return x, _labels(raw, what, source), dataset


def _centralized(
    data: Any, name: str, source: str, seed: int
) -> tuple[np.ndarray, np.ndarray, Any]:
    """(x, y) arrays of a centralized split given as a pair of tensors, a Dataset or a
    DataLoader, and the Dataset (None for tensors)."""
    dataset = None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (_tensor(v, f"{name} {w}", source) for v, w in zip(data, "xy", strict=True))
    elif _is_dataset(data):
        x, y, dataset = _first_read(data, f"{name} Dataset", source, seed,
                                    (FIRST_READ, SPLIT_WORDS[name]))  # fmt: skip
    else:
        raise UsageError(
            f"dataset {source}: the {name} split must be an (x, y) pair, a torch Dataset or a "
            f"DataLoader, got {_kind(data)}"
        )
    if len(x) != len(y):
        raise UsageError(f"dataset {source}: {name} has {len(x)} inputs but {len(y)} labels")
    return x.numpy(), y.numpy(), dataset


def _from_datasets(data: Any, cfg: Config, source: str) -> Federation:
    """A Federation of one train and one test Dataset (or DataLoader) per worker, used as given;
    a training Dataset that `rereads` is read anew for every batch."""
    splits: dict[str, list[tuple[torch.Tensor, torch.Tensor, Any]]] = {}
    for name, part in zip(("train", "test"), data, strict=True):
        if len(part) != cfg.workers:
            raise UsageError(
                f"dataset {source}: the {name} list has {len(part)} Datasets but "
                f"workers={cfg.workers}; give one per worker"
            )
        splits[name] = [
            _first_read(
                d,
                f"{name} Dataset of worker {w}",
                source,
                cfg.seed,
                (WORKER_READ, SPLIT_WORDS[name], w),
            )  # fmt: skip
            for w, d in enumerate(part)
        ]
    (train_x, train_y, datasets), (test_x, test_y, _) = (
        map(list, zip(*splits[name], strict=True)) for name in ("train", "test")
    )
    fed = _from_lists(train_x, train_y, test_x, test_y)
    fed.sources = [
        TrainSource(d, np.arange(len(x)), tuple(x.shape[1:]), source)
        if rereads(d, cfg.reread_data)
        else None
        for d, x in zip(datasets, train_x, strict=True)
    ]
    return fed


def _as_trained(x: torch.Tensor) -> torch.Tensor:
    """Inputs as training takes them: floats as float32, anything else as int64 (token ids)."""
    return x.float() if x.is_floating_point() else x.long()


def _from_lists(
    train_x: list[torch.Tensor],
    train_y: list[torch.Tensor],
    test_x: list[torch.Tensor],
    test_y: list[torch.Tensor],
) -> Federation:
    """The Federation of per-worker tensors, used as given."""
    shape = tuple(train_x[0].shape[1:]) if train_x else ()
    labels = [*train_y, *test_y]
    classification = bool(labels) and not torch.is_floating_point(labels[0])
    num_classes = 0
    if classification:
        num_classes = 1 + max(int(y.max()) for y in labels if y.numel()) if labels else 0
    return Federation(train_x, train_y, test_x, test_y, shape, num_classes, split=GIVEN_SPLIT,
                      given=True)  # fmt: skip


def partitioned(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: Config,
    num_classes: int | None = None,
    *,
    reread: Any = None,
    source: str = "",
) -> Federation:
    """Split centralized arrays over workers with the configured partition; each worker's test
    split follows its own train label distribution (classification) or is an even share of the
    test set (regression). `reread`: the training Dataset the arrays were read from, to read each
    worker's samples from anew for every training batch."""
    if np.issubdtype(y_train.dtype, np.floating):
        train_idx, test_idx = _regression_split(y_train, y_test, cfg)
        num_classes, split = 0, f"partition=iid (regression), {_cap(cfg)}"
    elif not np.issubdtype(y_train.dtype, np.integer) or y_train.dtype == bool:
        raise UsageError(
            f"labels must be integers (classes) or floats (regression), got {y_train.dtype}"
        )
    else:
        train_idx, test_idx = _classification_split(y_train, y_test, cfg)
        split = f"partition={cfg.partition}{_scheme_keys(cfg)}, {_cap(cfg)}"
        if num_classes is None:
            num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    train_x, train_y = _gather(x_train, y_train, train_idx)
    test_x, test_y = _gather(x_test, y_test, test_idx)
    shape = tuple(x_train.shape[1:])
    fed = Federation(train_x, train_y, test_x, test_y, shape, num_classes, split=split,
                     pool=len(y_train))  # fmt: skip
    if reread is not None:
        fed.sources = [TrainSource(reread, idx, shape, source) for idx in train_idx]
    return fed


def _scheme_params(cfg: Config) -> dict[str, Any]:
    """The configured partition scheme's own parameters and their values."""
    return {p.name: cfg.param(p.name) for p in getattr(PARTITIONS.get(cfg.partition), "params", ())}


def _scheme_keys(cfg: Config) -> str:
    """The keys the configured partition scheme reads, as a note shows them."""
    own = ", ".join(f"{k}={v}" for k, v in _scheme_params(cfg).items())
    return f" ({own})" if own else ""


def _cap(cfg: Config) -> str:
    cap = cfg.samples_per_worker
    return f"samples_per_worker={'none' if cap is None else cap}"


def _classification_split(
    y_train: np.ndarray, y_test: np.ndarray, cfg: Config
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train, test) indices of each worker: the configured partition of the training labels,
    and test samples following each worker's label mix."""
    train_idx = partition(
        y_train,
        cfg.workers,
        cfg.partition,
        samples_per_worker=cfg.samples_per_worker,
        seed=cfg.seed,
        **_scheme_params(cfg),
    )
    if len(y_test) < cfg.workers:
        raise UsageError(
            f"the test set has {len(y_test)} samples, fewer than the {cfg.workers} workers; use "
            f"workers <= {len(y_test)}"
        )
    # As many test samples as training samples, up to an even share of the global test set. The
    # share is measured against the mean train size: for equal sizes that is the size itself (the
    # numbers of earlier runs), and under dirichlet_classwise every worker keeps the same ratio.
    mean_size = sum(len(i) for i in train_idx) / cfg.workers
    ratio = min(1.0, (len(y_test) // cfg.workers) / mean_size)
    return train_idx, test_split([y_train[i] for i in train_idx], y_test, ratio, seed=cfg.seed)


def _regression_split(
    y_train: np.ndarray, y_test: np.ndarray, cfg: Config
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Regression targets have no classes to skew: iid shares of train and test."""
    train_idx = partition(np.zeros(len(y_train), np.int64), cfg.workers, "iid",
                          samples_per_worker=cfg.samples_per_worker, seed=cfg.seed)  # fmt: skip
    test_idx = partition(np.zeros(len(y_test), np.int64), cfg.workers, "iid", seed=cfg.seed)
    return train_idx, test_idx


def _gather(x: np.ndarray, y: np.ndarray, idx: list[np.ndarray]) -> tuple[list, list]:
    return [torch.from_numpy(x[i]) for i in idx], [torch.from_numpy(y[i]) for i in idx]


def check_federation(fed: Federation, workers: int, source: str) -> Federation:
    """Refuse in one line what training would trip over later; convert inputs to float32 and
    class labels to int64."""
    for name in _SPLITS:
        if len(getattr(fed, name)) != workers:
            raise UsageError(
                f"dataset {source}: {name} has {len(getattr(fed, name))} entries but "
                f"workers={workers}; give one per worker"
            )
    for i in range(workers):
        for split in ("train", "test"):
            x, y = getattr(fed, f"{split}_x")[i], getattr(fed, f"{split}_y")[i]
            _check_worker(fed, x, y, f"{split} split of worker {i}", source)
    if fed.sources is not None and len(fed.sources) != workers:
        raise UsageError(
            f"dataset {source}: {len(fed.sources)} train sources for {workers} workers"
        )
    fed.train_x, fed.test_x = ([_as_trained(x) for x in xs] for xs in (fed.train_x, fed.test_x))
    fed.train_y, fed.test_y = (
        [y.float() if fed.regression else y.long() for y in ys] for ys in (fed.train_y, fed.test_y)
    )
    return fed


def _check_worker(
    fed: Federation, x: torch.Tensor, y: torch.Tensor, where: str, source: str
) -> None:
    if tuple(x.shape[1:]) != tuple(fed.input_shape):
        raise UsageError(
            f"dataset {source}: the {where} has inputs of shape {tuple(x.shape[1:])}; expected "
            f"{tuple(fed.input_shape)} like the others"
        )
    if x.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise UsageError(
            f"dataset {source}: the {where} has inputs of dtype {x.dtype}; expected floats (or "
            "integer token ids)"
        )
    if x.is_floating_point():
        _refuse_non_finite(x, "input", where, source)
    if y.dim() != 1 or len(y) != len(x) or len(x) == 0:
        raise UsageError(
            f"dataset {source}: the {where} needs as many 1-D labels as inputs (at least one), "
            f"got {len(x)} inputs and labels of shape {tuple(y.shape)}"
        )
    if fed.regression:
        if not y.is_floating_point():
            raise UsageError(
                f"dataset {source}: the {where} has {y.dtype} labels in a regression task"
            )
        _refuse_non_finite(y, "label", where, source)
        return
    if y.is_floating_point() or y.dtype == torch.bool:
        raise UsageError(
            f"dataset {source}: the {where} has {y.dtype} labels; classes must be integers "
            f"0..{fed.num_classes - 1}"
        )
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= fed.num_classes:
        raise UsageError(
            f"dataset {source}: the {where} has label {low if low < 0 else high}; classes must be "
            f"0..{fed.num_classes - 1}"
        )


def _refuse_non_finite(values: torch.Tensor, what: str, where: str, source: str) -> None:
    """Refuse, naming the first sample, a NaN or infinite value in floating inputs or regression
    targets, as training sees them (float32: a float64 1e300 becomes inf). Training on one would
    end in a "divergence" (exit 3) that no learning rate cures; it is bad input (exit 2)."""
    if values.numel() == 0:
        return  # nothing to check (an empty split is refused by its own check)
    as_trained = values.float().reshape(len(values), -1)
    bad = (~torch.isfinite(as_trained)).any(1).nonzero()
    if len(bad):
        sample = int(bad[0])
        value = next(v for v in as_trained[sample].tolist() if not math.isfinite(v))
        raise UsageError(
            f"dataset {source}: the {where} has a NaN or infinite {what} at sample {sample} ({value} "
            f"as float32); {what}s must be finite numbers"
        )
