"""Tests for repgossip.config: coercion, merging, derived keys, validation, resumability, YAML."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repgossip.algorithms import ALGORITHMS
from repgossip.config import (
    KEYS,
    Config,
    build_config,
    changed_keys,
    coerce,
    dump_yaml,
    parse_assignments,
    validate,
)
from repgossip.configfile import read_yaml
from repgossip.errors import UsageError

INT_KEYS = ("workers", "rounds", "batch_size", "seed", "eval_every")
FLOAT_KEYS = ("lr", "weight_decay", "momentum", "lr_decay")


def _from_set(*pairs: str, base: dict | None = None) -> Config:
    """What `--set pair ...` (on top of an optional config-file mapping) resolves to."""
    return build_config(base, parse_assignments(pairs))


# ---------------------------------------------------------------- defaults and coercion


def test_defaults_build_and_validate():
    cfg = build_config()
    validate(cfg)  # must not raise
    assert cfg.algorithm == "deprl"
    assert cfg.dataset == "fmnist"
    assert cfg.model == "cnn"
    assert cfg.lr == pytest.approx(0.05)
    assert cfg.momentum == 0.0
    assert (cfg.head_epochs, cfg.body_epochs) == (3, 1)
    assert (cfg.head_steps, cfg.body_steps) == (None, None)
    assert set(cfg.to_dict()) == {*KEYS, "classes_per_worker"}  # the shards partition's


@pytest.mark.parametrize(
    ("pair", "key", "expected", "kind"),
    [
        ("workers=8", "workers", 8, int),
        ("lr=0.1", "lr", 0.1, float),
        ("lr=1e-3", "lr", 1e-3, float),
        (("partition=dirichlet", "alpha=2"), "alpha", 2.0, float),
        (("dataset=synthetic", "dim=7"), "dim", 7, int),
        ("samples_per_worker=none", "samples_per_worker", None, type(None)),
        ("samples_per_worker=None", "samples_per_worker", None, type(None)),
        ("samples_per_worker=~", "samples_per_worker", None, type(None)),
        ("topology=star", "topology", "star", str),
        (" seed = 7 ", "seed", 7, int),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_set_strings_are_coerced(pair, key, expected, kind):
    cfg = _from_set(*(pair if isinstance(pair, tuple) else (pair,)))
    value = cfg.to_dict()[key]
    assert type(value) is kind
    assert value == expected


def test_yaml_values_are_coerced():
    cfg = build_config({"workers": 8.0, "lr": 1, "samples_per_worker": None, "seed": "3"})
    assert (cfg.workers, type(cfg.workers)) == (8, int)
    assert (cfg.lr, type(cfg.lr)) == (1.0, float)
    assert cfg.samples_per_worker is None
    assert cfg.seed == 3


@pytest.mark.parametrize(
    ("key", "value"),
    [("workers", "abc"), ("workers", 8.5), ("workers", True), ("lr", "fast"), ("rounds", "none")],
)
def test_bad_types_raise_usage_error_naming_the_key(key, value):
    with pytest.raises(UsageError, match=key) as info:
        coerce(key, value)
    assert "\n" not in str(info.value)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UsageError, match="did you mean 'workers'"):  # once the algorithm is known
        build_config(None, parse_assignments(["wokers=4"]))
    with pytest.raises(UsageError, match="wokers"):
        build_config({"wokers": 4})


def test_set_without_equals_is_refused():
    with pytest.raises(UsageError, match="key=value"):
        parse_assignments(["workers"])


def test_later_pairs_and_overrides_win():
    assert _from_set("workers=4", "workers=6").workers == 6
    cfg = _from_set("workers=8", base={"workers": 4, "lr": 0.2, "seed": 3})
    assert cfg.workers == 8  # --set beats the config file
    assert cfg.lr == pytest.approx(0.2)  # the file's other keys stay
    assert cfg.seed == 3


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(INT_KEYS), value=st.integers(min_value=-(10**12), max_value=10**12))
def test_coerce_int_round_trips(key, value):
    result = coerce(key, str(value))
    assert type(result) is int
    assert result == value
    assert coerce(key, value) == value


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(FLOAT_KEYS),
    value=st.floats(allow_nan=False, allow_infinity=False, width=64),
)
def test_coerce_float_round_trips(key, value):
    result = coerce(key, str(value))
    assert type(result) is float
    assert result == value
    assert math.copysign(1.0, result) == math.copysign(1.0, value)


# ---------------------------------------------------------------- derived keys


@pytest.mark.parametrize(
    ("dataset", "model", "lr"), [("fmnist", "cnn", 0.05), ("synthetic", "linear", 0.01)]
)
def test_model_and_lr_default_per_dataset(dataset, model, lr):
    cfg = _from_set(f"dataset={dataset}")
    assert cfg.model == model
    assert cfg.lr == pytest.approx(lr)


def test_explicit_model_and_lr_are_kept():
    cfg = _from_set("dataset=fmnist", "model=mlp", "lr=0.3")
    assert (cfg.model, cfg.lr) == ("mlp", 0.3)


@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_momentum_default_per_algorithm(algorithm):
    cfg = _from_set(f"algorithm={algorithm}")
    assert cfg.momentum == (0.9 if algorithm == "dfedavgm" else 0.0)


def test_explicit_momentum_is_kept():
    assert _from_set("algorithm=dfedavgm", "momentum=0.5").momentum == 0.5
    assert _from_set("algorithm=dpsgd", "momentum=0.5").momentum == 0.5


def test_epoch_defaults_fill_only_a_pair_left_empty():
    cfg = _from_set("head_steps=5")
    assert (cfg.head_steps, cfg.head_epochs) == (5, None)
    assert (cfg.body_steps, cfg.body_epochs) == (None, 1)
    cfg = _from_set("body_epochs=3")
    assert (cfg.head_steps, cfg.head_epochs) == (None, 3)
    assert (cfg.body_steps, cfg.body_epochs) == (None, 3)


@pytest.mark.parametrize("part", ["head", "body"])
def test_steps_and_epochs_together_is_an_error(part):
    with pytest.raises(UsageError, match=f"{part}_steps or {part}_epochs"):
        _from_set(f"{part}_steps=3", f"{part}_epochs=1")


@pytest.mark.parametrize("algorithm", ["fedavg", "fedrep"])
def test_centralized_algorithms_force_complete_topology(algorithm):
    assert _from_set(f"algorithm={algorithm}").topology == "complete"
    assert _from_set(f"algorithm={algorithm}", "topology=complete").topology == "complete"
    with pytest.raises(UsageError, match="'complete'.*'ring'") as info:
        _from_set(f"algorithm={algorithm}", "topology=ring")
    assert algorithm in str(info.value)


def test_decentralized_algorithms_keep_their_topology():
    assert _from_set("algorithm=deprl").topology == "ring"
    assert _from_set("algorithm=dpsgd", "topology=torus").topology == "torus"


@pytest.mark.parametrize(
    "pairs",
    [
        (),
        ("dataset=synthetic",),
        ("algorithm=fedavg", "dataset=synthetic", "head_steps=3"),
        ("algorithm=dfedavgm", "samples_per_worker=none", "body_steps=2"),
        ("algorithm=fedrep", "model=mlp", "lr_head=0.2"),
    ],
    ids=["defaults", "synthetic", "fedavg-steps", "dfedavgm", "fedrep-mlp"],
)
def test_resolved_config_reloads_to_itself(pairs, tmp_path):
    """config.yaml is the resolved config; reading it back must give the same Config."""
    cfg = _from_set(*pairs)
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert build_config(read_yaml(path)) == cfg
    # field order is the file's order, the selected components' parameters last
    assert list(read_yaml(path)) == [*KEYS, *dict(cfg.params)]


# ---------------------------------------------------------------- validation messages


@pytest.mark.parametrize(
    ("pair", "needles"),
    [
        ("algorithm=nosuch", ("nosuch", "deprl")),
        ("dataset=nosuch", ("nosuch", "synthetic")),
        ("model=nosuch", ("nosuch", "cnn")),
        ("partition=nosuch", ("nosuch", "dirichlet")),
        ("mixing=nosuch", ("nosuch", "metropolis")),
        ("engine=nosuch", ("nosuch", "sim")),
        ("device=nosuch", ("nosuch", "cpu")),
        ("workers=0", ("workers", "0")),
        ("rounds=-1", ("rounds", "-1")),
        ("lr=0", ("lr", "0")),
        (("partition=dirichlet", "alpha=-0.5"), ("alpha", "-0.5")),
        (("topology=erdos_renyi", "edge_prob=1.5"), ("edge_prob", "1.5")),
        (("partition=shards", "alpha=0.1"), ("alpha", "dirichlet", "shards")),
        (("dataset=synthetic", "rank=5", "dim=4"), ("rank", "5", "dim", "4")),
        ("link_failure_prob=1", ("link_failure_prob", "1")),
        ("momentum=1.0", ("momentum", "1.0")),
        ("lr_decay=0", ("lr_decay", "0")),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_validation_names_the_bad_value(pair, needles):
    with pytest.raises(UsageError) as info:
        _from_set(*(pair if isinstance(pair, tuple) else (pair,)))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_model_must_fit_dataset():
    with pytest.raises(UsageError, match="'cnn'.*'synthetic'.*linear"):
        _from_set("dataset=synthetic", "model=cnn")


def test_rank_above_dim_is_refused():
    with pytest.raises(UsageError, match="rank=5 dim=4"):
        _from_set("dataset=synthetic", "dim=4", "rank=5")


@pytest.mark.parametrize("pair", ["lr=nan", "lr=inf", "weight_decay=nan"])
def test_non_finite_numbers_are_refused(pair):
    with pytest.raises(UsageError):
        _from_set(pair)


# ---------------------------------------------------------------- resumability


def test_changed_keys_reports_lr_but_not_rounds():
    old = _from_set("dataset=synthetic", "rounds=3")
    assert changed_keys(old, old) == []
    assert changed_keys(old, dataclasses.replace(old, rounds=10)) == []
    assert changed_keys(old, dataclasses.replace(old, lr=0.5)) == ["lr"]
    assert changed_keys(old, dataclasses.replace(old, lr=0.5, rounds=10, seed=4)) == [
        "lr",
        "seed",
    ]


# ---------------------------------------------------------------- YAML files


def test_read_yaml_reads_a_mapping(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text("workers: 4\nlr: 0.1\ndataset: synthetic\n")
    assert read_yaml(path) == {"workers": 4, "lr": 0.1, "dataset": "synthetic"}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("broken.yaml", "workers: [1, 2\nlr: 0.1\n"),
        ("tabs.yaml", "workers: 4\n\tlr: 0.1\n"),
        ("list.yaml", "- workers\n- lr\n"),
        ("scalar.yaml", "just a string\n"),
    ],
)
def test_read_yaml_bad_files_name_the_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=name) as info:
        read_yaml(path)
    assert "\n" not in str(info.value)


def test_read_yaml_missing_file_names_the_file(tmp_path):
    with pytest.raises(UsageError, match="not found") as info:
        read_yaml(tmp_path / "nowhere.yaml")
    assert "nowhere.yaml" in str(info.value)


def test_read_yaml_unsafe_tags_are_refused(tmp_path):
    path = tmp_path / "unsafe.yaml"
    path.write_text("workers: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(UsageError, match="unsafe.yaml"):
        read_yaml(path)


def test_another_algorithms_key_is_left_out_at_its_default_and_refused_otherwise():
    """A config.yaml of an earlier release records every algorithm's keys (ditto_lambda: 0.1,
    fedrod_schedule: null in a deprl run): used as a fresh config it still runs; a value that asks
    for something the run would ignore is refused."""
    old = {"dataset": "synthetic", "ditto_lambda": 0.1, "density": "0.5", "fedrod_schedule": None}
    assert not {"ditto_lambda", "density", "fedrod_schedule"} & set(dict(build_config(old).params))
    with pytest.raises(UsageError, match="ditto_lambda is a key of algorithm 'ditto'"):
        build_config({"dataset": "synthetic", "ditto_lambda": 0.5})
