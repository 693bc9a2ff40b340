"""Property tests of the config layer against arbitrary input: `--set` pairs, YAML documents and
Python values either build a Config or raise UsageError with a one-line message, never any other
exception; small inputs parse in bounded memory; and the nastiest inputs, through `main`, end in
exit code 2 with exactly one line on stderr."""

from __future__ import annotations

import string
import tracemalloc
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from repgossip.algorithms import ALGORITHMS
from repgossip.cli import main
from repgossip.config import KEYS, Config, build_config, parse_assignments
from repgossip.configfile import read_yaml
from repgossip.data.partition import PARTITIONS
from repgossip.errors import UsageError
from repgossip.registry import is_plugin_ref
from repgossip.topology import MIXING_RULES, TOPOLOGIES

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NASTY_VALUES = [
    "", " ", "-0", "+0", "0", "1", "-1", "4", "nan", "-nan", "inf", "-inf", "1e309", "-1e309",
    "1e300", "1e-400", "1e12", "1e30", "18446744073709551615", "18446744073709551616",
    "9" * 5000, "1" * 101, "²", "٣", "1_000", "0x10", "none", "null", "~", "true", "yes", "\n",
    "a\nb", "\x00", "\t", "\u2028", "\x85", "\u200b", "&a", "*a", "[[[[", "{", "ring", "complete",
    "synthetic", "fmnist", "dist", "~/x.npy", "~nosuchuser/x.npy", "/" + "x" * 300,
    "x" * 300 + ".npy", "python:x", "a:b",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(NASTY_VALUES),
    st.text(max_size=30),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
)
KEY_NAMES = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), st.text(max_size=12))


def no_imports(value: str) -> str:
    """A value that reads `package.module:name` would import that module (a plug-in): point it at
    a module that cannot exist, so the fuzzer never imports something real."""
    return f"zz_fuzz_nosuch_{value.strip()}" if is_plugin_ref(value.strip()) else value


def assert_config_or_one_line(build: Any) -> None:
    """`build()` returns a Config or raises UsageError with one non-empty line; nothing else."""
    try:
        cfg = build()
    except UsageError as err:
        message = str(err)
        assert message.strip() and len(message.splitlines()) == 1, repr(message)
        event(f"refused: {' '.join(message.split()[:2])[:30]}")
    else:
        assert isinstance(cfg, Config)
        event("built a Config")


# ---------------------------------------------------------------- (a) --set pairs


@FUZZ
@given(pairs=st.lists(st.tuples(KEY_NAMES, VALUES), max_size=6))
def test_set_pairs_build_a_config_or_one_line(pairs):
    argv = [f"{key}={no_imports(value)}" for key, value in pairs]
    assert_config_or_one_line(lambda: build_config(None, parse_assignments(argv)))


NAMES = {
    "algorithm": ALGORITHMS.names(),
    "dataset": ("synthetic", "fmnist"),
    "model": ("linear", "mlp", "cnn"),
    "partition": PARTITIONS.names(),
    "topology": TOPOLOGIES.names(),
    "mixing": MIXING_RULES.names(),
    "engine": ("sim", "dist"),
    "device": ("auto", "cpu"),
}
HUGE = st.sampled_from(["1e12", "1e10", "1e30", "1e300", "2e6", "604801", "18446744073709551616"])


def typed_value(key: str) -> st.SearchStrategy[str]:
    """Mostly valid values of `key`'s type, sizes up to 10^25, and now and then a nasty one."""
    hint = typing.get_type_hints(Config)[key]
    if key in NAMES:
        typed = st.sampled_from(NAMES[key])
    elif int in (hint, *typing.get_args(hint)):
        typed = st.one_of(st.integers(1, 64), st.integers(1, 10**25), HUGE).map(str)
    elif float in (hint, *typing.get_args(hint)):
        typed = st.one_of(st.floats(0.001, 0.999), st.floats(0, 1e30), HUGE).map(str)
    elif hint is bool:
        typed = st.sampled_from(["true", "false"])
    else:
        typed = st.text(max_size=20)
    return st.one_of(typed, typed, typed, st.sampled_from(NASTY_VALUES)).map(no_imports)


TYPED_PAIRS = st.sampled_from(KEYS).flatmap(lambda key: st.tuples(st.just(key), typed_value(key)))


@FUZZ
@given(pairs=st.lists(TYPED_PAIRS, max_size=6), synthetic=st.booleans())
def test_plausible_values_build_a_config_or_one_line(pairs, synthetic):
    """Known keys with values of their type, so most examples reach validation and the memory
    check (sizes up to 10^25, which must be refused there, never allocated)."""
    argv = (["dataset=synthetic", "model=linear"] if synthetic else []) + [
        f"{key}={value}" for key, value in pairs
    ]
    assert_config_or_one_line(lambda: build_config(None, parse_assignments(argv)))


# ---------------------------------------------------------------- (b) YAML documents

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.floats(),
    st.text(max_size=20).map(no_imports),
    st.sampled_from(NASTY_VALUES).map(no_imports),
)
NESTED = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(KEY_NAMES, NESTED, max_size=6)
RAW_YAML = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=string.printable + "&*[]{}:!|>-", max_size=200),
    st.sampled_from(
        [
            "a: &x [1, 2]\nb: *x\n",
            "workers: &n 4\nrounds: *n\n",
            "<<: {workers: 4}\n",
            "? [1, 2]\n: 3\n",
            "workers: !!python/object/apply:os.getcwd []\n",
            "seed: 0000-01-01\n",
            "data_dir: !!binary aGVsbG8=\n",
            "seed: " + ":".join(["1"] + ["59"] * 300) + "\n",
            "--- 1\n--- 2\n",
            "workers: [" * 50 + "]" * 50 + "\n",
        ]
    ),
)


@pytest.fixture(scope="module")
def yaml_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "config.yaml"


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(document=DOCUMENTS)
def test_yaml_documents_build_a_config_or_one_line(yaml_path, document):
    _write(yaml_path, yaml.safe_dump(document, allow_unicode=True))
    assert_config_or_one_line(lambda: build_config(read_yaml(yaml_path)))


@FUZZ
@given(text=RAW_YAML)
def test_raw_yaml_text_builds_a_config_or_one_line(yaml_path, text):
    _write(yaml_path, text)
    assert_config_or_one_line(lambda: build_config(read_yaml(yaml_path)))


@FUZZ
@given(document=DOCUMENTS)
def test_python_mappings_build_a_config_or_one_line(document):
    """What the Python API hands build_config: any values, ints beyond 4,300 digits included."""
    assert_config_or_one_line(lambda: build_config(document))


# ---------------------------------------------------------------- (c) bounded memory


def _alias_bomb(levels: int) -> str:
    """Billion-laughs YAML: 9^levels strings under data_dir, in a few hundred bytes."""
    items = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return f"data_dir: [{', '.join(items)}]\n"


# 9^8 = 43 million strings: hundreds of MB if anything walks the value, so that a regression fails
# the memory bound in seconds instead of hanging on the full bomb (test_inputs.py runs that one
# in a memory-capped subprocess)
ONE_KIB_BOMB = _alias_bomb(8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.just(ONE_KIB_BOMB), st.text(min_size=900, max_size=1024), RAW_YAML))
def test_small_inputs_parse_in_bounded_memory(yaml_path, text):
    _write(yaml_path, text)
    tracemalloc.start()
    try:
        assert_config_or_one_line(lambda: build_config(read_yaml(yaml_path)))
        assert_config_or_one_line(
            lambda: build_config(None, parse_assignments([f"data_dir={text}"]))
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB"


# ---------------------------------------------------------------- end to end through main()

NASTIEST = {
    "alias-bomb": (["--config", "{dir}/bomb.yaml"], ONE_KIB_BOMB),
    "nested-brackets": (["--config", "{dir}/nested.yaml"], "a: " + "[" * 20_000),
    "superscript-digit": (["--set", "workers=²"], None),
    "huge-seed": (["--set", "seed=" + "9" * 40], None),
    "newline-value": (["--set", "workers=4\nrounds=2"], None),
}


@pytest.mark.parametrize("name", NASTIEST)
def test_nastiest_inputs_end_in_exit_2_and_one_line(tmp_path, capsys, name):
    args, text = NASTIEST[name]
    if text is not None:
        (tmp_path / args[1].split("/")[-1]).write_text(text)
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    code = main(["run", "--quiet", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
