"""Per-worker train and test tensors for a config: a dataset source plus a partition.

Each worker's test split follows its own training label distribution, drawn from the global test
set, so personalized accuracy measures what the worker would meet in deployment. It is as large as
the training split where the test set allows (at most an even share of it), so accuracies are
resolved finely enough to compare algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from repgossip.config import Config
from repgossip.data.partition import partition, test_split
from repgossip.data.sources import load_fmnist, make_synthetic


@dataclass
class Federation:
    train_x: list[torch.Tensor]
    train_y: list[torch.Tensor]
    test_x: list[torch.Tensor]
    test_y: list[torch.Tensor]
    input_shape: tuple[int, ...]
    num_classes: int  # 0 for the regression (synthetic) task
    b_star: np.ndarray | None = None  # ground-truth representation (synthetic only)

    @property
    def regression(self) -> bool:
        return self.num_classes == 0

    def train_sizes(self) -> list[int]:
        return [len(y) for y in self.train_y]


def build_federation(cfg: Config) -> Federation:
    if cfg.dataset == "synthetic":
        return _synthetic(cfg)
    return _image_classification(cfg)


def _synthetic(cfg: Config) -> Federation:
    task = make_synthetic(
        cfg.workers, cfg.dim, cfg.rank, cfg.samples_per_worker or 200, cfg.noise, seed=cfg.seed
    )
    tensors = [[torch.from_numpy(a) for a in arrays]
               for arrays in (task.x_train, task.y_train, task.x_test, task.y_test)]  # fmt: skip
    return Federation(*tensors, input_shape=(cfg.dim,), num_classes=0, b_star=task.b_star)


def _image_classification(cfg: Config) -> Federation:
    data = load_fmnist(cfg.data_dir)
    train_idx = partition(
        data.y_train,
        cfg.workers,
        cfg.partition,
        alpha=cfg.alpha,
        classes_per_worker=cfg.classes_per_worker,
        samples_per_worker=cfg.samples_per_worker,
        seed=cfg.seed,
    )
    # As many test samples as training samples, up to an even share of the global test set.
    ratio = min(1.0, (len(data.y_test) // cfg.workers) / max(len(i) for i in train_idx))
    test_idx = test_split([data.y_train[i] for i in train_idx], data.y_test, ratio, seed=cfg.seed)

    def gather(x: np.ndarray, y: np.ndarray, idx: list[np.ndarray]) -> tuple[list, list]:
        return [torch.from_numpy(x[i]) for i in idx], [torch.from_numpy(y[i]) for i in idx]

    train_x, train_y = gather(data.x_train, data.y_train, train_idx)
    test_x, test_y = gather(data.x_test, data.y_test, test_idx)
    return Federation(train_x, train_y, test_x, test_y, data.input_shape, data.num_classes)
