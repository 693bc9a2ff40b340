"""Every knob of an experiment: one flat, typed, validated, frozen record.

A run is fully described by its `Config`; the resolved config (defaults and derived choices filled in)
is what `config.yaml` records, so a run folder says exactly what produced it. Bad input raises
`UsageError` with one line that names the bad value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from repgossip.algorithms import ALGORITHMS, Algorithm, algorithm_class
from repgossip.data.datasets import DATASETS, dataset_defaults, fitting_models
from repgossip.data.partition import PARTITIONS
from repgossip.errors import UsageError
from repgossip.models import MODELS
from repgossip.registry import API_PREFIX
from repgossip.topology import check_mixing_rule

ENGINES = ("sim", "dist")
DEVICES = ("auto", "cpu", "cuda")

# Local work per round comes in pairs: steps or epochs, one of each pair. When the user gives neither,
# the epoch default applies (the authors' setting: several head epochs, one body epoch).
BUDGET_PAIRS = {"head": ("head_steps", "head_epochs"), "body": ("body_steps", "body_epochs")}
DEFAULT_EPOCHS = {"head": 3, "body": 1}


@dataclass(frozen=True)
class Config:
    """One experiment. Field order is the order of `config.yaml`."""

    algorithm: str = "deprl"
    dataset: str = "fmnist"
    data_dir: str | None = None
    model: str | None = None
    workers: int = 16
    partition: str = "shards"
    alpha: float = 0.5
    classes_per_worker: int = 2
    samples_per_worker: int | None = 100
    topology: str = "ring"
    edge_prob: float = 0.3
    mixing: str = "metropolis"
    link_failure_prob: float = 0.0
    worker_dropout_prob: float = 0.0
    rounds: int = 30
    head_steps: int | None = None
    body_steps: int | None = None
    head_epochs: int | None = None
    body_epochs: int | None = None
    batch_size: int = 16
    lr: float | None = None
    lr_head: float | None = None
    lr_body: float | None = None
    momentum: float | None = None
    weight_decay: float = 0.0
    lr_decay: float = 1.0
    seed: int = 0
    eval_every: int = 1
    engine: str = "sim"
    dist_timeout_s: float = 300.0
    device: str = "auto"
    checkpoint_every: int = 10
    dim: int = 20
    rank: int = 2
    noise: float = 0.1
    share_bn_stats: bool = False
    tensorboard: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


KEYS = tuple(f.name for f in fields(Config))
_FIELD_TYPES = typing.get_type_hints(Config)
_NONE_WORDS = ("none", "null", "~", "")
_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, whether None is allowed) of a field annotation such as `int | None`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        scalar = next(a for a in args if a is not type(None))
        return scalar, type(None) in args
    return annotation, False


def suggest_key(key: str) -> str:
    """The one-line error for an unknown key, with the closest valid key when there is one."""
    close = difflib.get_close_matches(key, KEYS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(KEYS)}"
    return f"unknown config key '{key}'{hint}"


def coerce(key: str, value: Any) -> Any:
    """Turn a YAML value or a `--set` string into the field's type, or raise a one-line UsageError."""
    if key not in _FIELD_TYPES:
        raise UsageError(suggest_key(key))
    scalar, optional = _base_type(_FIELD_TYPES[key])
    if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
        if optional:
            return None
        raise UsageError(f"{key} cannot be empty; it needs a {scalar.__name__}")
    if value is None:
        if optional:
            return None
        raise UsageError(f"{key} cannot be empty; it needs a {scalar.__name__}")
    if scalar is str:
        return str(value)
    if scalar is bool:
        return _boolean(key, value)
    kind = "an integer" if scalar is int else "a number"
    if isinstance(value, bool):
        raise UsageError(f"{key} must be {kind}, got '{value}'")
    if (
        scalar is int
        and isinstance(value, (int, str))
        and str(value).strip().lstrip("+-").isdigit()
    ):
        return int(value)  # exact, also for integers beyond float precision
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key} must be {kind}, got '{value}'") from None
    if not math.isfinite(number):
        raise UsageError(f"{key} must be a finite number, got '{value}'")
    if scalar is int:
        if number != int(number):
            raise UsageError(f"{key} must be an integer, got '{value}'")
        return int(number)
    return number


def _boolean(key: str, value: Any) -> bool:
    """true/false (yes/no, on/off, 1/0) as YAML or `--set` gives them; nothing else."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise UsageError(f"{key} must be true or false, got '{value}'")


def parse_assignments(pairs: Iterable[str]) -> dict[str, Any]:
    """`["a=1", "b=x"]` -> raw strings by key, later pairs winning. Values are coerced later."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set takes key=value, got '{pair}'")
        if key not in KEYS:
            raise UsageError(suggest_key(key))
        result[key] = value.strip()
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping. Safe YAML only; every failure is one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"config file '{path}' not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read config file '{path}': {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"config file '{path}' is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"config file '{path}' must hold a mapping of key: value, not a list or scalar"
        )
    return data


def build_config(
    base: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    algorithm: type[Algorithm] | None = None,
) -> Config:
    """Merge a config-file mapping with `--set` overrides, coerce, resolve derived keys, validate.

    `algorithm` is the class an API caller handed over, when the `algorithm` key cannot name it.
    """
    given: dict[str, Any] = {}
    for source in (base or {}, overrides or {}):
        for key, value in source.items():
            given[str(key)] = coerce(str(key), value)
    given = _resolve(given, algorithm)
    cfg = Config(**given)
    validate(cfg)
    return cfg


def _resolve(given: dict[str, Any], algorithm: type[Algorithm] | None) -> dict[str, Any]:
    """Fill in choices that depend on other keys, so `config.yaml` states what really ran."""
    resolved = dict(given)
    default_model, default_lr = dataset_defaults(resolved.get("dataset", Config.dataset))
    if resolved.get("model") is None:
        resolved["model"] = default_model
    if resolved.get("lr") is None:
        resolved["lr"] = default_lr
    for part, (steps_key, epochs_key) in BUDGET_PAIRS.items():
        steps, epochs = resolved.get(steps_key), resolved.get(epochs_key)
        if steps is not None and epochs is not None:
            raise UsageError(
                f"give {steps_key} or {epochs_key}, not both (got {steps} and {epochs})"
            )
        if steps is None and epochs is None:
            resolved[epochs_key] = DEFAULT_EPOCHS[part]
    name = resolved.get("algorithm", Config.algorithm)
    cls = algorithm or (None if name.startswith(API_PREFIX) else algorithm_class(name))
    if resolved.get("momentum") is None:
        resolved["momentum"] = cls.default_momentum if cls else 0.0
    if cls is not None and cls.exact_average:
        topology = resolved.get("topology", "complete")
        if topology != "complete":
            raise UsageError(
                f"{name} averages exactly over all workers, so topology must be "
                f"'complete', got '{topology}' (use deprl or dpsgd for a sparse graph)"
            )
        resolved["topology"] = "complete"
    return resolved


def _choice(key: str, value: str, valid: Iterable[str]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise UsageError(f"unknown {key} '{value}'; valid: {', '.join(valid)}")


def _at_least(cfg: Config, key: str, low: float, strict: bool = False) -> None:
    value = getattr(cfg, key)
    if value is None:
        return
    if value < low or (strict and value == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise UsageError(f"{key} must be {bound}, got {value}")


def _within(cfg: Config, key: str, low: float, high: float, *, high_open: bool = False) -> None:
    value = getattr(cfg, key)
    if value is None:
        return
    if not (low <= value <= high) or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise UsageError(f"{key} must be in [{low}, {high}{bracket}, got {value}")


def validate(cfg: Config) -> None:
    """Names against their choices, numbers against their ranges, keys against each other."""
    ALGORITHMS.check(cfg.algorithm)
    DATASETS.check(cfg.dataset)
    MODELS.check(cfg.model or "")
    PARTITIONS.check(cfg.partition)
    check_mixing_rule(cfg.mixing)
    _choice("engine", cfg.engine, ENGINES)
    _choice("device", cfg.device, DEVICES)
    fitting = fitting_models(cfg.dataset)
    if fitting is not None and cfg.model in MODELS and cfg.model not in fitting:
        raise UsageError(
            f"model '{cfg.model}' does not fit dataset '{cfg.dataset}'; valid: {', '.join(fitting)}"
        )
    for key in (
        "workers",
        "rounds",
        "batch_size",
        "eval_every",
        "checkpoint_every",
        "classes_per_worker",
        "samples_per_worker",
        "dim",
        "rank",
        "head_steps",
        "body_steps",
        "head_epochs",
        "body_epochs",
    ):
        _at_least(cfg, key, 1)
    for key in ("lr", "lr_head", "lr_body", "alpha"):
        _at_least(cfg, key, 0, strict=True)
    _at_least(cfg, "weight_decay", 0)
    _at_least(cfg, "dist_timeout_s", 0, strict=True)
    _at_least(cfg, "noise", 0)
    _within(cfg, "momentum", 0.0, 1.0, high_open=True)
    _within(cfg, "edge_prob", 0.0, 1.0)
    _at_least(cfg, "edge_prob", 0, strict=True)
    _within(cfg, "link_failure_prob", 0.0, 1.0, high_open=True)
    _within(cfg, "worker_dropout_prob", 0.0, 1.0, high_open=True)
    _within(cfg, "lr_decay", 0.0, 1.0)
    _at_least(cfg, "lr_decay", 0, strict=True)
    if cfg.rank > cfg.dim:
        raise UsageError(f"rank must be <= dim, got rank={cfg.rank} dim={cfg.dim}")


# Keys that may differ between a checkpointed run and its resumption without changing its numbers.
RESUMABLE_KEYS = (
    "rounds", "eval_every", "checkpoint_every", "data_dir", "engine", "dist_timeout_s"
)  # fmt: skip


def changed_keys(old: Config, new: Config) -> list[str]:
    """Keys whose change would make a resumed run differ from an uninterrupted one."""
    return [k for k in KEYS if k not in RESUMABLE_KEYS and getattr(old, k) != getattr(new, k)]


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def load_resolved(path: str | Path) -> Config:
    """A `config.yaml` written by a run, read back as a Config."""
    return build_config(read_yaml(path))
