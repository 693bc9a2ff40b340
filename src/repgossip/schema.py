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
