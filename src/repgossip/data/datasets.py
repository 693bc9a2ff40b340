"""The dataset registry: each name builds a Federation from a config, offline.

A dataset is a function of the resolved config returning per-worker data (see
repgossip.data.federation for the accepted forms). Built-ins are registered here with the models
that fit them and their default learning rate; `--set dataset=package.module:function` (or
`repgossip.run(data=...)`) brings the user's own, which default to the `mlp` model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from repgossip.data.federation import Federation, as_federation, partitioned
from repgossip.data.sources import load_fmnist, make_synthetic
from repgossip.errors import UsageError
from repgossip.memory import SYNTHETIC_DEFAULT_SAMPLES
from repgossip.registry import Registry, call_with_accepted, is_plugin_ref

if TYPE_CHECKING:
    from repgossip.config import Config

PLUGIN_MODEL, PLUGIN_LR = "mlp", 0.05  # defaults for datasets that are not built in


@dataclass(frozen=True)
class DatasetSpec:
    build: Callable[[Config], Federation]
    default_model: str
    default_lr: float
    models: tuple[str, ...]  # built-in models that fit its inputs
    summary: str = ""


def _fmnist(cfg: Config) -> Federation:
    data = load_fmnist(cfg.data_dir)
    return partitioned(
        data.x_train, data.y_train, data.x_test, data.y_test, cfg, num_classes=data.num_classes
    )


def _synthetic(cfg: Config) -> Federation:
    samples = cfg.samples_per_worker or SYNTHETIC_DEFAULT_SAMPLES  # what memory.py counts too
    task = make_synthetic(cfg.workers, cfg.dim, cfg.rank, samples, cfg.noise, seed=cfg.seed)
    train_x, train_y, test_x, test_y = (
        [torch.from_numpy(a) for a in arrays]
        for arrays in (task.x_train, task.y_train, task.x_test, task.y_test)
    )
    return Federation(train_x, train_y, test_x, test_y, (cfg.dim,), 0, b_star=task.b_star)


DATASETS: Registry[DatasetSpec] = Registry("dataset", plugins=True)
DATASETS.register(
    "fmnist",
    DatasetSpec(
        _fmnist,
        "cnn",
        0.05,
        ("cnn", "mlp", "alexnet"),
        "Fashion-MNIST, 10 classes (Debian package)",
    ),
)
DATASETS.register(
    "synthetic",
    DatasetSpec(_synthetic, "linear", 0.01, ("linear",), "linear representation, regression"),
)


def dataset_defaults(name: str) -> tuple[str, float]:
    """(default model, default lr) of dataset `name`; plug-ins get the generic defaults."""
    if name in DATASETS:
        spec = DATASETS.get(name)
        return spec.default_model, spec.default_lr
    return PLUGIN_MODEL, PLUGIN_LR


def fitting_models(name: str) -> tuple[str, ...] | None:
    """The built-in models that fit built-in dataset `name`; None where any model may."""
    return DATASETS.get(name).models if name in DATASETS else None


def load_federation(cfg: Config, data: Any = None) -> Federation:
    """The config's dataset as a checked Federation; `data` is what the Python API was handed."""
    if data is not None:
        return as_federation(data, cfg, f"'{cfg.dataset}'")
    if cfg.dataset in DATASETS:
        return DATASETS.get(cfg.dataset).build(cfg)
    if not is_plugin_ref(cfg.dataset):
        raise UsageError(
            f"dataset '{cfg.dataset}' was an object handed to repgossip.run(); pass it again "
            "(data=...) to run or resume this config"
        )
    function = DATASETS.get(cfg.dataset)
    if not callable(function):
        raise UsageError(f"dataset plug-in '{cfg.dataset}' must be a function, got {function!r}")
    try:
        produced = call_with_accepted(
            function, config=cfg, workers=cfg.workers, seed=cfg.seed, data_dir=cfg.data_dir
        )
    except UsageError:
        raise
    except Exception as err:
        line = (str(err).strip().splitlines() or [""])[0][:300]
        raise UsageError(
            f"dataset plug-in '{cfg.dataset}' raised {type(err).__name__}: {line}"
        ) from None
    return as_federation(produced, cfg, f"plug-in '{cfg.dataset}'")
