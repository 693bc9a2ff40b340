"""The dataset registry: each name builds a Federation from a config, offline.

A dataset is a function of the resolved config returning per-worker data (see
repgossip.data.federation for the accepted forms). Built-ins are registered here with the models
that fit them and their default learning rate; `--set dataset=package.module:function` (or
`repgossip.run(data=...)`) brings the user's own, which default to the `mlp` model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from repgossip.data import cifar
from repgossip.data.federation import BodyMetrics, Federation, as_federation, partitioned
from repgossip.data.har import hapt_federation
from repgossip.data.partition import NATURAL, PARTITIONS
from repgossip.data.sources import load_fmnist, make_synthetic
from repgossip.errors import UsageError, described, user_code_failed
from repgossip.memory import SYNTHETIC_DEFAULT_SAMPLES
from repgossip.metrics import subspace_distance
from repgossip.params import Param
from repgossip.registry import Factory, Registry, call_with_accepted, is_plugin_ref

if TYPE_CHECKING:
    from repgossip.schema import Config

PLUGIN_MODEL, PLUGIN_LR = "mlp", 0.05  # defaults for datasets that are not built in
# How a user's centralized data is split unless they say otherwise: all of it (no per-worker cap),
# iid, so that no worker loses classes it never asked to lose. The built-in datasets keep the
# demo's split (the config's defaults: 100 samples per worker, two classes each).
USER_SPLIT: dict[str, Any] = {"partition": "iid", "samples_per_worker": None}
# What a run records for data handed over one split per worker: used as given, nothing cut.
GIVEN_SPLIT_KEYS: dict[str, Any] = {"partition": NATURAL, "samples_per_worker": None}


@dataclass(frozen=True)
class DatasetSpec:
    build: Callable[[Config], Federation]
    default_model: str
    default_lr: float
    models: tuple[str, ...]  # built-in models that fit its inputs
    summary: str = ""
    params: tuple[Param, ...] = ()  # its own config keys (repgossip.params)
    # refuses, in one line, values of `params` that are valid alone but not together
    check: Callable[[Mapping[str, Any]], None] = lambda values: None


SYNTHETIC_PARAMS = (
    Param("dim", 20, "x in R^d", low=1),
    Param(
        "rank", 2, "B* is d x k: the shared representation's rank, the linear body's width", low=1
    ),
    Param("noise", 0.1, "label noise std", low=0),
)


def _check_synthetic(values: Mapping[str, Any]) -> None:
    if values["rank"] > values["dim"]:
        raise UsageError(f"rank must be <= dim, got rank={values['rank']} dim={values['dim']}")


def _fmnist(cfg: Config) -> Federation:
    data = load_fmnist(cfg.data_dir)
    return partitioned(
        data.x_train, data.y_train, data.x_test, data.y_test, cfg, num_classes=data.num_classes
    )


def _synthetic(cfg: Config) -> Federation:
    samples = cfg.samples_per_worker or SYNTHETIC_DEFAULT_SAMPLES  # what memory.py counts too
    dim, rank = cfg.param("dim"), cfg.param("rank")
    task = make_synthetic(cfg.workers, dim, rank, samples, cfg.param("noise"), seed=cfg.seed)
    train_x, train_y, test_x, test_y = (
        [torch.from_numpy(a) for a in arrays]
        for arrays in (task.x_train, task.y_train, task.x_test, task.y_test)
    )
    return Federation(train_x, train_y, test_x, test_y, (dim,), 0,
                      body_metrics=_subspace_metric(task.b_star, rank, dim),
                      split="generated per worker (synthetic)")  # fmt: skip


def _subspace_metric(b_star: np.ndarray, rank: int, dim: int) -> BodyMetrics:
    """`subspace_dist`, the distance of the average body's row space to the true representation's
    column space, where the body is the k x d matrix B^T it measures (the `linear` model)."""

    def metric(mean_body: torch.Tensor, body: nn.Module) -> dict[str, float]:
        if not (isinstance(body, nn.Linear) and tuple(body.weight.shape) == (rank, dim)):
            return {}
        weight = mean_body.view(rank, dim).cpu().numpy()
        return {"subspace_dist": subspace_distance(b_star, weight)}

    return metric


def _cifar(name: str) -> Callable[[Config], Federation]:
    """CIFAR-10 or -100 from data_dir, partitioned as uint8 and normalized per worker share (the
    whole normalized training set would cost 4x the images' bytes for nothing)."""

    def build(cfg: Config) -> Federation:
        x_tr, y_tr, x_te, y_te = cifar.read_cifar(name, cfg.data_dir)
        fed = partitioned(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), cfg,
                          num_classes=cifar.CIFAR[name].classes)  # fmt: skip
        fed.train_x = [cifar.normalize(x, name) for x in fed.train_x]
        fed.test_x = [cifar.normalize(x, name) for x in fed.test_x]
        return fed

    return build


# A dataset plug-in is a function returning data in one of the forms of repgossip.data.federation,
# or a Federation subclass whose constructor builds it (releases up to 0.2.0 called any callable).
DATASETS: Registry[DatasetSpec] = Registry(
    "dataset",
    plugins=Factory(
        Federation, "repgossip.Federation", returns=" that returns the data (see repgossip.run)"
    ),
)
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
    DatasetSpec(
        _synthetic,
        "linear",
        0.01,
        ("linear",),
        "linear representation, regression",
        SYNTHETIC_PARAMS,
        _check_synthetic,
    ),  # fmt: skip
)
_IMAGE_MODELS = ("vgg11", "resnet18", "alexnet", "mlp")  # 3x32x32 inputs; cnn needs 28x28
DATASETS.register(
    "cifar10",
    DatasetSpec(_cifar("cifar10"), "vgg11", 0.05, _IMAGE_MODELS, "CIFAR-10, 10 classes (data_dir)"),
)
DATASETS.register(
    "cifar100",
    DatasetSpec(
        _cifar("cifar100"),
        "resnet18",
        0.05,
        _IMAGE_MODELS,
        "CIFAR-100, 100 fine classes (data_dir)",
    ),
)
DATASETS.register(
    "hapt",
    DatasetSpec(
        hapt_federation,
        "mlp",
        0.05,
        ("mlp",),
        "UCI HAPT activities, 30 users, 6x128 sensor windows (partition=natural: one worker per user)",
    ),
)


def dataset_defaults(name: str) -> tuple[str, float]:
    """(default model, default lr) of dataset `name`; plug-ins get the generic defaults."""
    if name in DATASETS:
        spec = DATASETS.get(name)
        return spec.default_model, spec.default_lr
    return PLUGIN_MODEL, PLUGIN_LR


def split_defaults(name: str) -> dict[str, Any]:
    """The split keys a user's dataset (a plug-in or data handed to repgossip.run) defaults to;
    none for a built-in dataset, whose defaults are the config's."""
    return {} if name in DATASETS else dict(USER_SPLIT)


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
    function: Any = DATASETS.get(cfg.dataset)  # a plug-in: a function, checked by the registry
    try:
        own = dict(cfg.params)  # the selected components' parameters, by the names it takes
        produced = call_with_accepted(
            function, config=cfg, workers=cfg.workers, seed=cfg.seed, data_dir=cfg.data_dir, **own
        )
    except UsageError:
        raise
    except Exception as err:
        raise user_code_failed(
            f"dataset plug-in '{cfg.dataset}' raised {described(err)}", err
        ) from None
    return as_federation(produced, cfg, f"plug-in '{cfg.dataset}'")


def recorded_config(cfg: Config, fed: Federation) -> Config:
    """`cfg` as the run records it: data that came one split per worker was used as given, so
    its partition keys say so (partition=natural, samples_per_worker=none) whatever they were,
    and config.yaml names no split that played no part."""
    if not fed.given:
        return cfg
    split_keys = {p.name for p in getattr(PARTITIONS.get(cfg.partition), "params", ())}
    params = tuple((k, v) for k, v in cfg.params if k not in split_keys)  # they played no part
    return dataclasses.replace(cfg, **GIVEN_SPLIT_KEYS, params=params)
