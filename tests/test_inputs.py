"""Hostile and malformed input ends in one line on stderr and exit code 2, never a traceback, a
MemoryError or the operating system killing the process: YAML alias bombs and deep nesting,
unicode digits, seeds and timeouts out of range, configs too big for this machine, corrupt IDX
headers, over-long path names, a data_dir missing a file, and control characters in --set."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import repgossip
from repgossip.architectures import build_model
from repgossip.cli import main
from repgossip.config import build_config, parse_assignments
from repgossip.data import sources
from repgossip.data.sources import FMNIST_FILES, load_fmnist, make_synthetic
from repgossip.errors import UsageError
from repgossip.experiment import build_experiment
from repgossip.footprint import model_parameters, values_per_worker
from repgossip.topology import build_graph

TINY = ["dataset=synthetic", "workers=4", "rounds=1", "samples_per_worker=20"]
LONG_NAME = "x" * 300  # one path component over the 255 bytes Linux allows


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def run_set(tmp_path: Path, capsys: pytest.CaptureFixture[str], *pairs: str) -> tuple[int, str]:
    """`repgossip run --set *pairs` in-process, into a fresh folder under tmp_path."""
    return run_cli(["run", "--quiet", "--set", *pairs, "--out", str(tmp_path / "r")], capsys)


def one_line(code: int, err: str, *needles: str) -> str:
    """The single stderr line of a refused input, checked to contain every needle."""
    assert code == 2, f"exit code {code}, stderr: {err[-2000:]!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines[:5]!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def billion_laughs(levels: int, key: str = "data_dir") -> str:
    """A few hundred bytes of YAML whose value under `key` stands for 9**levels strings."""
    items = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return f"{key}: [{', '.join(items)}]\n"


# ---------------------------------------------------------------- 1. YAML


def test_yaml_alias_bomb_is_refused_quickly_in_bounded_memory(tmp_path, capsys):
    """9^7 'lol's behind aliases: before the fix, the error message rendered the whole value."""
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs(7))
    assert path.stat().st_size < 500
    tracemalloc.start()
    start = time.perf_counter()
    try:
        code, err = run_cli(["run", "--quiet", "--config", str(path)], capsys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_line(code, err, "bomb.yaml", "alias")
    assert time.perf_counter() - start < 5
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_anchors_without_aliases_are_refused_too(tmp_path, capsys):
    path = tmp_path / "anchor.yaml"
    path.write_text("workers: &n 4\n")
    one_line(*run_cli(["run", "--quiet", "--config", str(path)], capsys), "anchor", "line 1")


_LIMITED_SCRIPT = """
import contextlib, io, json, resource, sys
from repgossip.cli import main
# 1 GiB of address space beyond what the imports mapped (a CUDA build of torch maps gigabytes)
mapped = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
limit = mapped * 1024 + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_hostile_config_files_fit_in_one_gib(tmp_path):
    """The full billion laughs (9^9 strings, gigabytes if walked) and /dev/zero as a config, with
    1 GiB of address space to spare: a regression ends in a MemoryError, not in the OOM killer."""
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(billion_laughs(9))
    argvs = [["run", "--quiet", "--config", str(p), "--out", str(tmp_path / "r")]
             for p in (bomb, Path("/dev/zero"))]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED_SCRIPT, json.dumps(argvs)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (bomb_code, bomb_err), (zero_code, zero_err) = json.loads(proc.stdout)
    one_line(bomb_code, bomb_err, "laughs.yaml", "alias")
    one_line(zero_code, zero_err, "/dev/zero", "1 MiB")


def test_deeply_nested_yaml_is_one_line(tmp_path, capsys):
    path = tmp_path / "nested.yaml"
    path.write_text("workers: " + "[" * 20_000 + "]" * 20_000 + "\n")
    one_line(*run_cli(["run", "--quiet", "--config", str(path)], capsys), "nested.yaml", "deeper")


def test_config_file_over_one_mib_is_refused(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("workers: 4\n" + "# padding\n" * (2**20 // 10 + 1))
    code, err = run_cli(["run", "--quiet", "--config", str(path), "--set", "algorithm=x"], capsys)
    one_line(code, err, "big.yaml", "1 MiB")


def test_yaml_value_that_yaml_cannot_build_is_one_line(tmp_path, capsys):
    """Constructors raise ValueError, not YAMLError, for some scalars: a year 0 date."""
    path = tmp_path / "year0.yaml"
    path.write_text("data_dir: 0000-01-01\n")
    one_line(*run_cli(["run", "--quiet", "--config", str(path)], capsys), "year0.yaml")


# ---------------------------------------------------------------- 2. numbers out of range


def test_unicode_superscript_digit_is_one_line(tmp_path, capsys):
    """'²'.isdigit() is True but int('²') raises ValueError."""
    one_line(*run_set(tmp_path, capsys, "workers=²"), "workers", "'²'")


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1", "1e30"])
def test_seed_out_of_range_names_the_range(tmp_path, capsys, seed):
    one_line(*run_set(tmp_path, capsys, *TINY, f"seed={seed}"), "seed", "18446744073709551615")


def test_seed_at_the_top_of_the_range_runs(tmp_path, capsys):
    """2^64 - 1 is the largest seed torch.manual_seed takes; numpy and streams.py take it too."""
    code, err = run_set(tmp_path, capsys, *TINY, "seed=18446744073709551615")
    assert code == 0, err


def test_dist_timeout_is_capped_at_seven_days(tmp_path, capsys):
    """datetime.timedelta(seconds=1e300) raised OverflowError inside the distributed engine."""
    code, err = run_set(tmp_path, capsys, *TINY, "engine=dist", "dist_timeout_s=1e300")
    one_line(code, err, "dist_timeout_s", "604800", "1e+300")


# ---------------------------------------------------------------- 3. memory


@pytest.mark.parametrize(
    ("pairs", "needles"),
    [
        (("workers=1e12",), ("'ring'", "1000000000000", "GiB", "fewer workers")),
        (("dataset=synthetic", "dim=1e10"), ("synthetic", "data", "GiB")),
        (("dataset=synthetic", "samples_per_worker=1e30"), ("synthetic", "data", "GiB")),
        (("workers=10000000",), ("10000000", "model rows", "GiB")),
    ],
    ids=["ring-1e12", "dim-1e10", "samples-1e30", "model-rows-1e7"],
)
def test_configs_too_big_for_this_machine_are_refused_before_allocating(
    tmp_path, capsys, pairs, needles
):
    tracemalloc.start()
    try:
        code, err = run_set(tmp_path, capsys, *pairs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_line(code, err, "this machine's", *needles)
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_memory_check_uses_this_machines_memory(monkeypatch):
    from repgossip import memory

    pairs = parse_assignments(["dataset=synthetic", "workers=100", "samples_per_worker=1000"])
    build_config(None, pairs)  # ~17 MB of data
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 10_000_000)
    with pytest.raises(UsageError, match="more than this machine's") as info:
        build_config(None, pairs)
    assert "\n" not in str(info.value)


def test_fmnist_samples_per_worker_beyond_the_data_is_capped_not_refused():
    from repgossip import footprint

    cfg = build_config(None, parse_assignments(["samples_per_worker=1e30"]))
    assert cfg.samples_per_worker == int(1e30)
    assert footprint.estimate(cfg)["data"] < 2**30  # capped by what the dataset holds


def test_make_synthetic_refuses_before_allocating():
    with pytest.raises(UsageError, match="synthetic task.*this machine's"):
        make_synthetic(workers=2, dim=10**10, rank=2, samples_per_worker=10, noise=0.1)


def test_a_ring_too_big_for_memory_is_refused_by_its_node_arrays():
    with pytest.raises(UsageError, match="links; planning gossip over them needs") as info:
        build_graph("ring", 10**12)
    assert "fewer workers" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- 4. IDX headers


def _fake_fmnist(directory: Path) -> None:
    """Four tiny valid IDX files (3 images of 28x28, 3 labels, and the same for test)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in FMNIST_FILES:
        shape = (3, 28, 28) if "images" in name else (3,)
        header = bytes([0, 0, 8, len(shape)]) + np.array(shape, dtype=">u4").tobytes()
        (directory / name).write_bytes(header + bytes(int(np.prod(shape))))


@pytest.mark.parametrize(
    ("dims", "needle"),
    [
        ((1,) * 200, "200 dims"),  # numpy reshape allows at most 64: a ValueError traceback
        ((1,) * 5, "5 dims"),
        ((0xFFFFFFFF,) * 4, "truncated or corrupt"),  # a product no file could hold
    ],
    ids=["ndim-200", "ndim-5", "huge-product"],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_headers_out_of_bounds_are_one_line(tmp_path, monkeypatch, dims, needle, gz):
    monkeypatch.setattr(sources, "FMNIST_DIRS", (str(tmp_path / "nowhere"),))
    _fake_fmnist(tmp_path)
    path = tmp_path / FMNIST_FILES[0]
    data = bytes([0, 0, 8, len(dims)]) + np.array(dims, dtype=">u4").tobytes() + b"\x00"
    path.unlink()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
        needle = "this machine's" if needle == "truncated or corrupt" else needle
    else:
        path.write_bytes(data)
    with pytest.raises(UsageError, match=needle) as info:
        load_fmnist(str(tmp_path))
    assert path.name in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- 5. over-long path names


@pytest.mark.parametrize(
    ("key", "suffix", "needles"),
    [
        ("topology", ".txt", ("topology", "File name too long", "255")),
        ("mixing", ".npy", ("mixing", "File name too long")),
        ("data_dir", "", ("File name too long", "255")),
    ],
)
def test_path_component_over_255_bytes_is_one_line(tmp_path, capsys, key, suffix, needles):
    value = f"{tmp_path}/{LONG_NAME}{suffix}"
    extra = TINY if key != "data_dir" else ["workers=2", "rounds=1"]
    one_line(*run_set(tmp_path, capsys, *extra, f"{key}={value}"), *needles)


def test_config_path_over_255_bytes_is_one_line(tmp_path, capsys):
    path = f"{tmp_path}/{LONG_NAME}.yaml"
    one_line(*run_cli(["run", "--quiet", "--config", path], capsys), "File name too long")


# ---------------------------------------------------------------- 6. data_dir


def test_data_dir_missing_a_file_does_not_fall_back_to_the_system_copy(
    tmp_path, capsys, monkeypatch
):
    system = tmp_path / "system"
    _fake_fmnist(system)
    monkeypatch.setattr(sources, "FMNIST_DIRS", (str(system),))
    mine = tmp_path / "mine"
    _fake_fmnist(mine)
    (mine / FMNIST_FILES[3]).unlink()
    code, err = run_set(tmp_path, capsys, "workers=2", "rounds=1", f"data_dir={mine}")
    one_line(code, err, FMNIST_FILES[3], str(mine), "data_dir")


# ---------------------------------------------------------------- 7. control characters


@pytest.mark.parametrize(
    "pair",
    [
        "workers=4\n5",
        "work\ners=4",
        "data_dir=/tmp/a\nb",
        "algorithm=deprl\r",
        "topology=ring\x1b[31m",
        "lr=0.1\u2028",
        "mixing=\x00",
    ],
    ids=["value-newline", "key-newline", "path-newline", "trailing-cr", "escape", "u2028", "nul"],
)
def test_control_characters_in_set_are_one_line(tmp_path, capsys, pair):
    line = one_line(*run_set(tmp_path, capsys, *TINY, pair), "control character")
    assert line.isprintable()


@pytest.mark.parametrize(
    "text",
    ['"work\\ners": 4\n', 'data_dir: "a\\nb"\n', 'algorithm: "deprl\\u0085"\n'],
    ids=["key", "value", "nel"],
)
def test_line_breaks_in_yaml_keys_and_values_are_one_line(tmp_path, capsys, text):
    path = tmp_path / "breaks.yaml"
    path.write_text(text)
    line = one_line(*run_cli(["run", "--quiet", "--config", str(path)], capsys))
    assert line.isprintable()


@pytest.mark.parametrize(
    ("dataset", "model", "shape", "classes"),
    [("fmnist", "cnn", (1, 28, 28), 10), ("fmnist", "alexnet", (1, 28, 28), 10),
     ("cifar10", "vgg11", (3, 32, 32), 10), ("cifar100", "resnet18", (3, 32, 32), 100),
     ("hapt", "mlp", (6, 128), 6), ("synthetic", "linear", (20,), 0)],
)  # fmt: skip
def test_memory_counts_each_built_in_models_parameters_exactly(
    dataset: str, model: str, shape: tuple[int, ...], classes: int
) -> None:
    cfg = build_config({"dataset": dataset, "model": model})
    built = build_model(model, shape, classes, cfg)
    assert model_parameters(cfg) == sum(p.numel() for p in built.parameters()) > 0


@pytest.mark.parametrize(
    ("algorithm", "rows"),
    [("deprl", 2), ("dpsgd", 2), ("ditto", 4), ("dispfl", 3)],
)
def test_memory_counts_each_algorithms_rows_per_parameter(algorithm: str, rows: int) -> None:
    # a parameter and a momentum row per model copy (ditto keeps two), plus dispfl's mask row;
    # the count must match what a population really allocates
    cfg = build_config({"algorithm": algorithm, "dataset": "synthetic", "workers": 3})
    pop = build_experiment(cfg).population
    assert values_per_worker(cfg, pop.layout.size) == rows * pop.layout.size
    wide = [t for t in pop.rows.values() if t.shape[1] == pop.layout.size]
    assert len(wide) == rows


def test_a_plug_in_model_too_big_for_memory_is_refused_in_one_line_once_built() -> None:
    # the config alone cannot size a plug-in model; the check runs once it is built
    def wide_model() -> torch.nn.Module:
        body = torch.nn.Linear(20, 40_000)  # 0.88 M parameters: 141 GB of rows
        return torch.nn.ModuleDict({"body": body, "head": torch.nn.Linear(40_000, 1)})

    with pytest.raises(
        UsageError, match=r"^holding the model rows of this config \(workers=20000, "
    ):
        repgossip.run(
            {"dataset": "synthetic", "workers": 20_000, "samples_per_worker": 2, "rounds": 1},
            model=wide_model,
        )
