"""The same bits whatever the threads: every built-in model under 1 and 2 OpenMP threads, sweeps
under --jobs 1 and 2, the distributed engine on 2 ranks against one process, and a run resumed
under another thread count.

Each case runs the command line in subprocesses, because the thread count that used to leak into
the numbers is the process default (OMP_NUM_THREADS) that new threads start from. Before the fix
an mlp's per-worker losses and every run's consensus distance differed between 1 and 2 threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cifar import write_cifar
from test_har import _installed as hapt_installed

from launch import torchrun

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
ALGORITHMS = "deprl,dpsgd,local,dfedavgm,fedper,fedrep,fedavg,ditto,fedrod,dispfl"
TINY_FMNIST = ["dataset=fmnist", "workers=5", "samples_per_worker=12", "rounds=2", "batch_size=4"]
UNSTABLE = ("wall_s", "wire_bytes")  # time, and bytes that crossed between processes


def repgossip(threads: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-m", "repgossip", *args, "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def numbers(folder: Path) -> dict:
    """Every number a run folder holds (summary.json and every metrics.jsonl record), bit for bit
    as written, but time."""
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    for item in (summary, *records):
        for key in UNSTABLE:
            item.pop(key, None)
    return {"summary": summary, "metrics": records}


def sweep_numbers(folder: Path) -> dict[str, dict]:
    return {p.name: numbers(p) for p in sorted(folder.iterdir()) if (p / "summary.json").is_file()}


def sweep_on(tmp_path: Path, name: str, threads: int, jobs: int, *args: str) -> dict[str, dict]:
    out = tmp_path / name
    repgossip(threads, "sweep", *args, "--jobs", str(jobs), "--out", str(out))
    found = sweep_numbers(out)
    assert found, f"no finished point in {out}"
    return found


@needs_fmnist
def test_every_algorithm_gives_the_same_bits_on_1_and_2_threads_and_jobs(tmp_path):
    """The mlp of the issue, every algorithm: 1 thread, 2 threads, and --jobs 2."""
    args = ["--grid", f"algorithm={ALGORITHMS}", "--set", *TINY_FMNIST, "model=mlp"]
    one = sweep_on(tmp_path, "t1", 1, 1, *args)
    assert len(one) == len(ALGORITHMS.split(","))
    assert sweep_on(tmp_path, "t2", 2, 1, *args) == one
    assert sweep_on(tmp_path, "j2", 2, 2, *args) == one


@pytest.mark.parametrize(
    ("dataset", "models", "algorithms", "extra"),
    [
        pytest.param("fmnist", "cnn", "deprl,fedrod", TINY_FMNIST[1:], marks=needs_fmnist,
                     id="fmnist"),
        ("synthetic", "linear", "deprl,dpsgd", ["workers=6", "samples_per_worker=30", "rounds=3"]),
        pytest.param(
            "hapt", "mlp", "deprl,fedrod", ["rounds=1", "batch_size=64"], id="hapt",
            marks=pytest.mark.skipif(not hapt_installed(), reason="HAPT package not installed"),
        ),
        pytest.param(
            "cifar10", "alexnet,vgg11,resnet18", "deprl",
            ["workers=3", "partition=iid", "samples_per_worker=8", "rounds=1", "batch_size=4"],
            marks=pytest.mark.slow, id="cifar10",
        ),
    ],
)  # fmt: skip
def test_every_builtin_model_gives_the_same_bits_on_1_and_2_threads(
    tmp_path, dataset, models, algorithms, extra
):
    sets = [f"dataset={dataset}", *extra]
    if dataset == "cifar10":
        write_cifar(tmp_path / "data", "cifar10", binary=True)
        sets.append(f"data_dir={tmp_path / 'data'}")
    args = ["--grid", f"model={models}", "--grid", f"algorithm={algorithms}", "--set", *sets]
    one = sweep_on(tmp_path, "t1", 1, 1, *args)
    assert len(one) == len(models.split(",")) * len(algorithms.split(","))
    assert sweep_on(tmp_path, "t2", 2, 1, *args) == one


@needs_fmnist
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_two_ranks_on_two_threads_give_the_bits_of_one_process_on_one(tmp_path, model):
    sets = [*TINY_FMNIST, f"model={model}", "algorithm=fedrod"]
    repgossip(1, "run", "--set", *sets, "--out", str(tmp_path / "sim"))
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    done = torchrun(2, tmp_path / "dist", *sets, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert numbers(tmp_path / "dist") == numbers(tmp_path / "sim")


@needs_fmnist
def test_a_run_resumed_on_another_thread_count_gives_the_uninterrupted_bits(tmp_path):
    sets = [*TINY_FMNIST[:-2], "rounds=4", "checkpoint_every=1", "model=mlp"]
    repgossip(1, "run", "--set", *sets, "--out", str(tmp_path / "whole"))
    half = [*sets[:-3], "rounds=2", "checkpoint_every=1", "model=mlp"]
    repgossip(1, "run", "--set", *half, "--out", str(tmp_path / "resumed"))
    repgossip(2, "run", "--resume", "--set", "rounds=4", "--out", str(tmp_path / "resumed"))
    assert numbers(tmp_path / "resumed") == numbers(tmp_path / "whole")
