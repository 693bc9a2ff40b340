"""Every knob of an experiment: one flat, typed, validated, frozen record.

A run is fully described by its `Config`; the resolved config (defaults and derived choices filled in)
is what `config.yaml` records, so a run folder says exactly what produced it. Bad input raises
`UsageError` with one line that names the bad value and the valid choices.
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from repgossip import footprint
from repgossip.algorithms import ALGORITHMS, Algorithm, algorithm_class
from repgossip.architectures import MODELS
from repgossip.components import REGISTRIES, builtin_params, owners, params_of, selected
from repgossip.configfile import parse_mapping, read_config_text
from repgossip.data.datasets import DATASETS, dataset_defaults, fitting_models, split_defaults
from repgossip.data.federation import REREAD_CHOICES
from repgossip.data.partition import PARTITIONS
from repgossip.errors import UsageError
from repgossip.evaluation import EVAL_MODELS
from repgossip.objectives import SIGNATURES, resolve
from repgossip.registry import API_PREFIX, Registry, is_plugin_ref
from repgossip.schema import KEYS, LEGACY_VALUES, Config
from repgossip.text import check_printable, quoted_path, shown
from repgossip.topology import check_mixing_rule
from repgossip.training import ADAM_DEFAULTS, LAST_BATCH, OPTIMIZERS

# The keys whose values may be plug-ins (code: `package.module:name`), with their registries.
PLUGIN_REGISTRIES: dict[str, Registry[Any]] = {
    kind: registry for kind, registry in REGISTRIES.items() if registry.plugins is not None
}
ENGINES = ("sim", "dist")
DEVICES = (
    "auto",
    "cpu",
    "cuda",
    "cuda:N",
    "mps",
)  # cuda:N: the N-th GPU (checked when a run starts)

# Local work per round comes in pairs: steps or epochs, one of each pair. When the user gives neither,
# the epoch default applies (the authors' setting: several head epochs, one body epoch).
BUDGET_PAIRS = {"head": ("head_steps", "head_epochs"), "body": ("body_steps", "body_epochs")}
DEFAULT_EPOCHS = {"head": 3, "body": 1}
# torch.manual_seed takes an unsigned 64-bit integer; numpy's seeding takes any integer >= 0.
SEED_MAX = 2**64 - 1
# Sizes and counts end up in int64 numpy arrays and torch tensors; samples_per_worker is exempt
# (it only caps a dataset's share per worker, and more than exists means all of it).
INT_MAX = 2**63 - 1
# datetime.timedelta overflows around 10^9 days; a peer silent for a week is surely gone.
MAX_DIST_TIMEOUT_S = 7 * 24 * 3600.0
_MAX_DIGITS = 100  # longer integers are refused before int() (which fails past 4,300 digits)
_INT_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)


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


# Integer keys bounded by INT_MAX; the seed has its own range, samples_per_worker none (see INT_MAX).
_BOUNDED_INT_KEYS = tuple(
    k
    for k in KEYS
    if _base_type(_FIELD_TYPES[k])[0] is int and k not in ("seed", "samples_per_worker")
)


def suggest_key(key: str, also: Iterable[str] = ()) -> str:
    """The one-line error for an unknown key, with the closest valid key (of KEYS and `also`, the
    selected components' parameters) when there is one."""
    valid = [*KEYS, *also]
    close = closest_key(key, also)
    hint = f"; did you mean '{close}'?" if close else f"; valid keys: {', '.join(valid)}"
    return f"unknown config key {shown(key)}{hint}"


def closest_key(key: str, also: Iterable[str] = ()) -> str | None:
    """The key of KEYS and `also` closest to `key` (a misspelling of it), or None."""
    close = difflib.get_close_matches(key, [*KEYS, *also], n=1) if len(key) < 100 else []
    return close[0] if close else None


def coerce(key: str, value: Any) -> Any:
    """Turn a YAML value or a `--set` string into the field's type, or raise a one-line UsageError.
    A numpy scalar (an API caller's `np.int64(4)`, `np.float32(0.1)`, `np.str_`) counts as its
    Python value: np.bool_ as a bool, so it is no integer, as a Python bool is none."""
    if key not in KEYS:
        raise UsageError(suggest_key(key))
    scalar, optional = _base_type(_FIELD_TYPES[key])
    return coerce_as(key, value, scalar, optional)


def coerce_any(key: str, value: Any) -> Any:
    """`value` as key `key` takes it, for a core key or a built-in component's parameter (read
    back from a table that names either, whichever component is selected)."""
    if key in KEYS:
        return coerce(key, value)
    found = owners(key)
    if not found:
        raise UsageError(suggest_key(key, builtin_param_names()))
    param = next(p for p in params_of(*found[0]) if p.name == key)
    return coerce_as(key, value, param.kind)


def builtin_param_names() -> list[str]:
    """Every built-in component's parameter names."""
    return list(dict.fromkeys(p.name for _, _, params in builtin_params() for p in params))


def coerce_as(key: str, value: Any, scalar: type, optional: bool = False) -> Any:
    """`value` as `scalar` (bool, int, float or str), None where `optional` allows it: the
    coercion of every key, core or a component's parameter."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        check_printable(f"{key} value", value)
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
        if optional:
            return None
        what = "true or false" if scalar is bool else f"a {scalar.__name__}"
        raise UsageError(f"{key} needs {what}, got {shown(value)}")
    if scalar is str:
        return _text(key, value)
    if scalar is bool:
        return _boolean(key, value, optional)
    return _number(key, value, scalar is int)


def _text(key: str, value: Any) -> str:
    """A string field from a YAML scalar (a name, a path, or a number or date YAML typed), never
    from a list or mapping, whose str() would be meaningless or, for an alias bomb, gigabytes."""
    if isinstance(value, str):
        return value
    small_int = isinstance(value, int) and value.bit_length() <= 128
    if small_int or isinstance(value, (float, datetime.date)):
        return str(value)
    raise UsageError(f"{key} must be a string, got {shown(value)}")


def _boolean(key: str, value: Any, optional: bool = False) -> bool:
    """true/false (yes/no, on/off, 1/0) as YAML or `--set` gives them; nothing else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    choices = "true, false or none" if optional else "true or false"
    raise UsageError(f"{key} must be {choices}, got {shown(value)}")


def _number(key: str, value: Any, integer: bool) -> int | float:
    """An int or float field from a YAML number or a `--set` string. Strings must be ASCII: int()
    and float() also read other scripts' digits, and str.isdigit() is true for '²', which int()
    then refuses with a ValueError."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"{key} must be {kind}, got {shown(value)}")
    if isinstance(value, int):
        return value if integer else _finite(key, value)
    if isinstance(value, str):
        text = value.strip()
        if integer and _INT_TEXT.fullmatch(text):
            if len(text) > _MAX_DIGITS:
                raise UsageError(
                    f"{key} must be an integer of at most {_MAX_DIGITS} digits, got one of "
                    f"{len(text)} digits: {shown(text)}"
                )
            return int(text)  # exact, also for integers beyond float precision
        if not text.isascii():
            raise UsageError(f"{key} must be {kind} in ASCII digits, got {shown(value)}")
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{key} must be {kind}, got {shown(value)}") from None
    number = _finite(key, value)
    if not integer:
        return number
    if number != int(number):
        raise UsageError(f"{key} must be an integer, got {shown(value)}")
    return int(number)


def _finite(key: str, value: int | float) -> float:
    """A finite float: nan and inf are refused, and so is an int too large for a float."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise UsageError(f"{key} must be a finite number, got {shown(value)}")
    return number


def parse_assignments(pairs: Iterable[str]) -> dict[str, Any]:
    """`["a=1", "b=x"]` -> raw strings by key, later pairs winning. Values are coerced later."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, value = split_assignment(pair, "--set", "key=value")
        result[key] = value.strip()
    return result


def split_assignment(pair: str, option: str, form: str) -> tuple[str, str]:
    """(key, value) of one `key=value` given to `option`, refusing control characters, a missing
    `=` or key (the message shows `form`), and an unknown key."""
    check_printable(option, pair)
    key, sep, value = pair.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"{option} takes {form}, got {shown(pair)}")
    if not key.isidentifier():  # whether the selected components take it is decided later
        raise UsageError(suggest_key(key))
    return key, value


FOREIGN = ("refuse", "drop")  # what build_config does with another component's parameter


def build_config(
    base: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    algorithm: type[Algorithm] | None = None,
    foreign: str = "refuse",
    foreign_overrides: str | None = None,
    droppable: Collection[str] = (),
) -> Config:
    """Merge a config-file mapping with `--set` overrides, coerce, resolve derived keys, validate.

    `algorithm` is the class an API caller handed over, when the `algorithm` key cannot name it.
    A key that is not a core key must be a parameter of a selected component (its algorithm,
    dataset, model, partition or topology: repgossip.components); a parameter of another built-in
    component is refused, or with `foreign="drop"` left out (a saved config of an older release
    recorded every component's keys; a sweep's grid may cross components). `foreign_overrides`
    is the policy for `overrides` when it differs (a resumed run drops the saved config's, and
    refuses the user's); `droppable` are plug-ins' parameter names that another point of a sweep
    selects, dropped like a built-in's under "drop".
    """
    given: dict[str, Any] = {}
    pending: dict[str, Any] = {}  # keys of a component, coerced once it is known
    policy: dict[str, str] = {}  # the foreign-key policy of each pending key
    for source, rule in ((base or {}, foreign), (overrides or {}, foreign_overrides or foreign)):
        for key, value in source.items():
            if not isinstance(key, str):
                raise UsageError(f"config keys must be strings, got {shown(key)}")
            check_printable("config key", key)
            if key in KEYS:
                given[key] = coerce(key, value)
            else:
                pending[key], policy[key] = value, rule
    given = _resolve(given, algorithm)
    chosen = {kind: given.get(kind, getattr(Config, kind)) for kind in REGISTRIES}
    given["params"] = _component_params(
        chosen, {"algorithm": algorithm}, pending, policy, droppable
    )
    cfg = Config(**given)
    validate(cfg)
    return cfg


def _component_params(
    chosen: Mapping[str, Any],
    objects: Mapping[str, Any],
    pending: dict[str, Any],
    policy: Mapping[str, str],
    droppable: Collection[str] = (),
) -> tuple[tuple[str, Any], ...]:
    """The selected components' parameters, each the value given (coerced and checked) or its
    default; a given key that none of them is, refused in one line (see build_config)."""
    values: dict[str, Any] = {}
    for kind, name, params in selected(chosen, objects):
        for param in params:
            if param.name in values:
                raise UsageError(
                    f"{kind} {shown(name)} declares parameter '{param.name}', which another "
                    "selected component declares too; one of them must name it apart"
                )
            value = coerce_as(param.name, pending.pop(param.name, param.default), param.kind)
            param.check(value)
            values[param.name] = value
    for key, value in pending.items():
        found = owners(key)
        if not found and policy[key] == "drop" and key in droppable:
            continue  # a plug-in's parameter, for the sweep points that select that plug-in
        if not found:
            raise UsageError(suggest_key(key, values))
        if policy[key] == "refuse" and not _inert(found, key, value):
            kind = found[0][0]
            names = " or ".join(f"'{name}'" for k, name in found if k == kind)
            raise UsageError(
                f"{key} is a key of {kind} {names}, not of {shown(chosen[kind])} (got "
                f"{key}={shown(value)}); set {kind}={found[0][1]} or leave {key} out"
            )
    return tuple(values.items())


def inert(key: str, value: Any) -> bool:
    """Whether `value` for built-in component parameter `key` asks for nothing: none or its
    default (False for a core key or a key no built-in declares)."""
    found = [] if key in KEYS else owners(key)
    return bool(found) and _inert(found, key, value)


def _inert(found: list[tuple[str, str]], key: str, value: Any) -> bool:
    """Whether another component's parameter is given as none or as its default: what a
    config.yaml of an earlier release records for every component (`ditto_lambda: 0.1` in a
    deprl run, `alpha: 0.5` under shards), which asks for nothing and is left out. Any other
    value is a request this run would ignore."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
        return True
    kind, name = found[0]
    param = next(p for p in params_of(kind, name) if p.name == key)
    try:
        return bool(coerce_as(key, value, param.kind) == param.default)
    except UsageError:
        return False


def _resolve(given: dict[str, Any], algorithm: type[Algorithm] | None) -> dict[str, Any]:
    """Fill in choices that depend on other keys, so `config.yaml` states what really ran."""
    resolved = dict(given)
    default_model, default_lr = dataset_defaults(resolved.get("dataset", Config.dataset))
    if resolved.get("model") is None:
        resolved["model"] = default_model
    if resolved.get("lr") is None:
        resolved["lr"] = default_lr
    for key, value in split_defaults(resolved.get("dataset", Config.dataset)).items():
        resolved.setdefault(key, value)
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
    _resolve_optimizer(resolved, cls.default_momentum if cls else 0.0)
    if cls is not None and cls.exact_average:
        topology = resolved.get("topology", "complete")
        if topology != "complete":
            raise UsageError(
                f"{name} averages exactly over all workers, so topology must be "
                f"'complete', got {shown(topology)} (use deprl or dpsgd for a sparse graph)"
            )
        resolved["topology"] = "complete"
    return resolved


def _resolve_optimizer(resolved: dict[str, Any], default_momentum: float) -> None:
    """SGD's momentum (the algorithm's default) or Adam's coefficients (torch's defaults), and
    refuse a coefficient of the other optimizer: it would silently play no part."""
    optimizer = resolved.get("optimizer", Config.optimizer)
    _choice("optimizer", optimizer, OPTIMIZERS)
    if optimizer == "sgd":
        given = [k for k in ADAM_DEFAULTS if resolved.get(k) is not None]
        if given:
            raise UsageError(
                f"{given[0]} is a coefficient of adam and adamw, not of optimizer 'sgd' (got "
                f"{given[0]}={shown(resolved[given[0]])}); set optimizer=adam or adamw, or leave "
                f"{given[0]} unset"
            )
        if resolved.get("momentum") is None:
            resolved["momentum"] = default_momentum
        return
    momentum, nesterov = resolved.get("momentum"), resolved.get("nesterov", False)
    if momentum or nesterov:
        key, value = ("momentum", momentum) if momentum else ("nesterov", nesterov)
        raise UsageError(
            f"{key} is SGD's (optimizer=sgd), not {optimizer}'s (got {key}={shown(value)}); "
            f"{optimizer}'s first-moment coefficient is beta1"
        )
    resolved["momentum"] = None  # no momentum plays a part: config.yaml says so
    for key, default in ADAM_DEFAULTS.items():
        if resolved.get(key) is None:
            resolved[key] = default


def _choice(key: str, value: str, valid: Iterable[str]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise UsageError(f"unknown {key} {shown(value)}; valid: {', '.join(valid)}")


def _check_device(value: str) -> None:
    """auto, cpu, cuda, mps, or cuda:N with N a plain non-negative integer (whether that device
    exists is checked when a run starts, on the machine that runs it)."""
    index = value.partition("cuda:")[2] if value.startswith("cuda:") else None
    if index is not None and index.isascii() and index.isdigit() and len(index) < 6:
        return
    _choice("device", value, DEVICES)


def _at_least(cfg: Config, key: str, low: float, strict: bool = False) -> None:
    value = getattr(cfg, key)
    if value is None:
        return
    if value < low or (strict and value == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise UsageError(f"{key} must be {bound}, got {shown(value)}")


def _within(cfg: Config, key: str, low: float, high: float, *, high_open: bool = False) -> None:
    value = getattr(cfg, key)
    if value is None:
        return
    if not (low <= value <= high) or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise UsageError(f"{key} must be in [{low}, {high}{bracket}, got {shown(value)}")


def _at_most(cfg: Config, key: str, high: float, why: str = "") -> None:
    value = getattr(cfg, key)
    if value is not None and value > high:
        raise UsageError(f"{key} must be <= {high}{why}, got {shown(value)}")


def validate(cfg: Config) -> None:
    """Names against their choices, numbers against their ranges, keys against each other."""
    ALGORITHMS.check(cfg.algorithm)
    DATASETS.check(cfg.dataset)
    MODELS.check(cfg.model or "")
    PARTITIONS.check(cfg.partition)
    check_mixing_rule(cfg.mixing)
    _choice("engine", cfg.engine, ENGINES)
    _check_device(cfg.device)
    _choice("reread_data", cfg.reread_data, REREAD_CHOICES)
    _choice("last_batch", cfg.last_batch, LAST_BATCH)
    _choice("eval_model", cfg.eval_model, EVAL_MODELS)
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
        "samples_per_worker",
        "head_steps",
        "body_steps",
        "head_epochs",
        "body_epochs",
    ):
        _at_least(cfg, key, 1)
    for key in ("lr", "lr_head", "lr_body"):
        _at_least(cfg, key, 0, strict=True)
    _at_least(cfg, "weight_decay", 0)
    _at_least(cfg, "dist_timeout_s", 0, strict=True)
    _within(cfg, "momentum", 0.0, 1.0, high_open=True)
    _check_optimizer(cfg)
    _within(cfg, "link_failure_prob", 0.0, 1.0, high_open=True)
    _within(cfg, "worker_dropout_prob", 0.0, 1.0, high_open=True)
    _within(cfg, "lr_decay", 0.0, 1.0)
    _at_least(cfg, "lr_decay", 0, strict=True)
    _check_limits(cfg)
    for key in SIGNATURES:
        _check_plugin(key, getattr(cfg, key))
    if cfg.dataset in DATASETS:
        DATASETS.get(cfg.dataset).check(dict(cfg.params))
    footprint.check_config(cfg)  # last: it needs every size checked


def _check_optimizer(cfg: Config) -> None:
    """The optimizer's coefficients in torch.optim's ranges; Nesterov needs momentum (as torch
    says: without it, Nesterov's step is plain SGD's)."""
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _within(cfg, "beta1", 0.0, 1.0, high_open=True)
    _within(cfg, "beta2", 0.0, 1.0, high_open=True)
    _at_least(cfg, "eps", 0)
    _at_least(cfg, "clip_norm", 0, strict=True)
    if cfg.nesterov and not cfg.momentum:
        raise UsageError(
            f"nesterov needs momentum > 0, got momentum={shown(cfg.momentum)}; set momentum "
            "(e.g. 0.9) or nesterov=false"
        )


def _check_plugin(key: str, ref: str | None) -> None:
    """A loss or metric is none (the task's own), an object handed to repgossip.run(), or a
    plug-in reference, imported now so that a typo shows before the run starts."""
    if ref is None or ref.startswith(API_PREFIX):
        return
    if not is_plugin_ref(ref):
        raise UsageError(
            f"{key} must be package.module:function, a function {SIGNATURES[key]}, or none "
            f"(the task's own), got {shown(ref)}"
        )
    resolve(key, ref)


def _check_limits(cfg: Config) -> None:
    """Upper bounds that the libraries downstream impose: int64 sizes, torch's 64-bit seed,
    datetime.timedelta's range for the distributed timeout."""
    for key in _BOUNDED_INT_KEYS:
        _at_most(cfg, key, INT_MAX, " (a 64-bit integer)")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise UsageError(
            f"seed must be an integer in [0, {SEED_MAX}] (an unsigned 64-bit integer, as "
            f"torch.manual_seed takes), got {shown(cfg.seed)}"
        )
    _at_most(cfg, "dist_timeout_s", MAX_DIST_TIMEOUT_S, " seconds (7 days)")


# Keys that may differ between a checkpointed run and its resumption without changing its numbers.
RESUMABLE_KEYS = (
    "rounds", "eval_every", "checkpoint_every", "data_dir", "engine", "dist_timeout_s",
    "tensorboard",
)  # fmt: skip


def changed_keys(old: Config, new: Config) -> list[str]:
    """Keys whose change would make a resumed run differ from an uninterrupted one: those outside
    RESUMABLE_KEYS, and `rounds` too for an algorithm whose schedule reads it (DisPFL anneals its
    pruning over the run's rounds, so more rounds change every round's rate)."""
    before, after = old.to_dict(), new.to_dict()
    changed = [
        k for k in {**before, **after} if k not in RESUMABLE_KEYS and before.get(k) != after.get(k)
    ]
    if old.rounds != new.rounds and _schedule_reads_rounds(new):
        changed.append("rounds")
    return changed


def _schedule_reads_rounds(cfg: Config) -> bool:
    """Whether `cfg`'s algorithm declares that its schedule depends on the number of rounds (an
    object handed to repgossip.run is not looked up: it cannot be from its name)."""
    if cfg.algorithm.startswith(API_PREFIX):
        return False
    return bool(algorithm_class(cfg.algorithm).schedule_reads_rounds)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def as_it_ran(saved: Mapping[str, Any], given: Iterable[str]) -> dict[str, Any]:
    """The values resuming a saved run must set so that it continues as it ran: each key of
    LEGACY_VALUES that the saved config mapping lacks (an older release wrote it) and the caller
    did not give (`given`: the keys a sweep's base and grid, or an API call, state)."""
    stated = set(given)
    return {k: v for k, v in LEGACY_VALUES.items() if k not in saved and k not in stated}


def with_legacy_values(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved run's config mapping with every key it lacks whose default has changed since set
    as its release ran it (`LEGACY_VALUES`)."""
    return {**LEGACY_VALUES, **saved}


def saved_config(
    text: str,
    name: str,
    algorithm: type[Algorithm] | None = None,
    current: Config | None = None,
) -> Config:
    """A config that a run recorded (its `config.yaml`, the copy in its checkpoint, or rank 0's),
    read through the same resolution as a fresh config: a key that the release which wrote it did
    not have yet gets its default, as it would in a new run. Every comparison of a saved config
    with the current one reads it here and compares with `changed_keys`, so a folder written by an
    earlier release resumes after a key is added, and an edited value that matters is still
    refused. A key whose new default changes numbers reads, where the text lacks it, as that
    release ran (`LEGACY_VALUES`).

    `name` says what the text is ("checkpoint '...'"), for the one-line errors; `algorithm` is the
    class an API caller handed over, as for `build_config`. With `current` (the config the saved
    one is compared with), a plug-in the text names that `current` does not is refused before
    resolving would import it: comparing with another run runs none of its code."""
    given = with_legacy_values(parse_mapping(text, name))
    if current is not None:
        for key in PLUGIN_REGISTRIES:
            value, now = given.get(key), getattr(current, key)
            if isinstance(value, str) and is_plugin_ref(value) and value != now:
                raise UsageError(
                    f"{name} was written with {key}={value!r}, not {now!r}; it belongs to "
                    "another run"
                )
    try:
        return build_config(given, algorithm=algorithm, foreign="drop")
    except UsageError as err:
        raise UsageError(f"{name} holds a config this version cannot use: {err}") from None


def load_resolved(
    path: str | Path, algorithm: type[Algorithm] | None = None, current: Config | None = None
) -> Config:
    """A `config.yaml` written by a run, read back as a Config (see `saved_config`)."""
    path = Path(path)
    text = read_config_text(path)
    return saved_config(text, f"config file {quoted_path(path)}", algorithm, current)
