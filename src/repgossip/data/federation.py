"""Per-worker train and test tensors, and the checks that user-supplied ones must pass.

A `Federation` is what every dataset becomes: one train and one test split per worker. Built-in
datasets, `package.module:function` plug-ins and tensors handed to `repgossip.run(data=...)` all
arrive here in one of three forms:

- a Federation;
- `(train_x, train_y, test_x, test_y)`: four lists (one entry per worker) of tensors or arrays;
- `(train, test)`: two centralized datasets (each an `(x, y)` pair of tensors or arrays, or a
  `torch.utils.data.Dataset` of `(x, y)` items) that the configured partition splits over workers,
  each worker's test split following its own train label distribution.

Labels of an integer dtype make a classification task (labels 0..C-1); floating labels a regression
task. Floating-point inputs are converted to float32; integer inputs are kept as int64 (token ids
for an embedding). Anything else is refused in one line naming the expected form.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from repgossip.data.partition import partition, test_split
from repgossip.errors import UsageError

if TYPE_CHECKING:
    from repgossip.config import Config

EXPECTED = (
    "a Federation, (train_x, train_y, test_x, test_y) lists with one tensor per worker, or "
    "(train, test) datasets of (x, y)"
)


@dataclass
class Federation:
    train_x: list[torch.Tensor]
    train_y: list[torch.Tensor]
    test_x: list[torch.Tensor]
    test_y: list[torch.Tensor]
    input_shape: tuple[int, ...]
    num_classes: int  # 0 for a regression task
    b_star: np.ndarray | None = None  # ground-truth representation (synthetic only)

    @property
    def regression(self) -> bool:
        return self.num_classes == 0

    def train_sizes(self) -> list[int]:
        return [len(y) for y in self.train_y]

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
        return check_federation(data, cfg.workers, source)
    if isinstance(data, (tuple, list)) and len(data) == 4:
        train_x, train_y, test_x, test_y = (
            _tensor_list(part, name, source) for part, name in zip(data, _SPLITS, strict=True)
        )
        return check_federation(_from_lists(train_x, train_y, test_x, test_y), cfg.workers, source)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        (x_tr, y_tr), (x_te, y_te) = (_centralized(d, name, source) for d, name in
                                       zip(data, ("train", "test"), strict=True))  # fmt: skip
        return check_federation(partitioned(x_tr, y_tr, x_te, y_te, cfg), cfg.workers, source)
    raise UsageError(f"dataset {source} must be {EXPECTED}; got {_kind(data)}")


_SPLITS = ("train_x", "train_y", "test_x", "test_y")


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


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


def _centralized(data: Any, name: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) arrays of a centralized split given as a pair of tensors or a Dataset."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (_tensor(v, f"{name} {w}", source) for v, w in zip(data, "xy", strict=True))
    elif isinstance(data, torch.utils.data.Dataset):
        if not hasattr(data, "__len__"):
            raise UsageError(f"dataset {source}: the {name} Dataset needs a __len__")
        items = [data[i] for i in range(len(data))]
        if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise UsageError(f"dataset {source}: the {name} Dataset must yield (x, y) items")
        x = torch.stack([_tensor(torch.as_tensor(it[0]), f"{name} x", source) for it in items])
        if any(torch.as_tensor(it[1]).numel() != 1 for it in items):
            raise UsageError(f"dataset {source}: the {name} Dataset must yield one label per item")
        y = torch.as_tensor([int(it[1]) if not torch.is_floating_point(torch.as_tensor(it[1]))
                             else float(it[1]) for it in items])  # fmt: skip
    else:
        raise UsageError(
            f"dataset {source}: the {name} split must be an (x, y) pair or a torch Dataset, "
            f"got {_kind(data)}"
        )
    if len(x) != len(y):
        raise UsageError(f"dataset {source}: {name} has {len(x)} inputs but {len(y)} labels")
    return x.numpy(), y.numpy()


def _from_lists(
    train_x: list[torch.Tensor],
    train_y: list[torch.Tensor],
    test_x: list[torch.Tensor],
    test_y: list[torch.Tensor],
) -> Federation:
    shape = tuple(train_x[0].shape[1:]) if train_x else ()
    labels = [*train_y, *test_y]
    classification = bool(labels) and not torch.is_floating_point(labels[0])
    num_classes = 0
    if classification:
        num_classes = 1 + max(int(y.max()) for y in labels if y.numel()) if labels else 0
    return Federation(train_x, train_y, test_x, test_y, shape, num_classes)


def partitioned(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: Config,
    num_classes: int | None = None,
) -> Federation:
    """Split centralized arrays over workers with the configured partition; each worker's test
    split follows its own train label distribution (classification) or is an even share of the
    test set (regression)."""
    if np.issubdtype(y_train.dtype, np.floating):
        return _regression_split(x_train, y_train, x_test, y_test, cfg)
    if not np.issubdtype(y_train.dtype, np.integer) or y_train.dtype == bool:
        raise UsageError(
            f"labels must be integers (classes) or floats (regression), got {y_train.dtype}"
        )
    train_idx = partition(
        y_train,
        cfg.workers,
        cfg.partition,
        alpha=cfg.alpha,
        classes_per_worker=cfg.classes_per_worker,
        samples_per_worker=cfg.samples_per_worker,
        seed=cfg.seed,
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
    test_idx = test_split([y_train[i] for i in train_idx], y_test, ratio, seed=cfg.seed)
    train_x, train_y = _gather(x_train, y_train, train_idx)
    test_x, test_y = _gather(x_test, y_test, test_idx)
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Federation(train_x, train_y, test_x, test_y, tuple(x_train.shape[1:]), num_classes)


def _regression_split(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, cfg: Config
) -> Federation:
    """Regression targets have no classes to skew: iid shares of train and test."""
    train_idx = partition(np.zeros(len(y_train), np.int64), cfg.workers, "iid",
                          samples_per_worker=cfg.samples_per_worker, seed=cfg.seed)  # fmt: skip
    test_idx = partition(np.zeros(len(y_test), np.int64), cfg.workers, "iid", seed=cfg.seed)
    train_x, train_y = _gather(x_train, y_train, train_idx)
    test_x, test_y = _gather(x_test, y_test, test_idx)
    return Federation(train_x, train_y, test_x, test_y, tuple(x_train.shape[1:]), 0)


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
    fed.train_x, fed.test_x = (
        [x.float() if x.is_floating_point() else x.long() for x in xs]
        for xs in (fed.train_x, fed.test_x)
    )
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
