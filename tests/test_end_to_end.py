"""Whole runs through the library: DePRL learns the true representation on the synthetic task, gains
from more workers, and beats a single shared model on heterogeneous Fashion-MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from repgossip.config import build_config
from repgossip.runner import run_experiment

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def synthetic(tmp_path, name, **overrides):
    cfg = build_config({"dataset": "synthetic", "dim": 10, "rank": 2, "head_steps": 5,
                        "lr": 0.1, "topology": "exponential", **overrides})  # fmt: skip
    return run_experiment(cfg, tmp_path / name, progress=False).summary


def test_deprl_recovers_the_true_subspace_in_seconds(tmp_path):
    summary = synthetic(tmp_path, "small", workers=8, samples_per_worker=50, batch_size=25,
                        noise=0.1, rounds=25, body_steps=2)  # fmt: skip
    assert summary["subspace_dist"] < 0.2


def test_more_workers_learn_a_better_representation(tmp_path):
    """Each worker has fewer samples than dimensions and noisy labels: only pooling through the shared
    body identifies B*, so 32 workers end far closer to it than 4 (measured: about 0.2 against 0.7)."""
    common = dict(samples_per_worker=10, batch_size=10, noise=1.0, rounds=60, body_steps=1)
    few = synthetic(tmp_path, "few", workers=4, **common)
    many = synthetic(tmp_path, "many", workers=32, **common)
    assert many["subspace_dist"] < few["subspace_dist"] - 0.2
    assert many["subspace_dist"] < 0.35


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed (make data)")
def test_deprl_beats_a_single_shared_model_on_fmnist_shards(tmp_path):
    base = dict(
        workers=8, samples_per_worker=100, rounds=5, partition="shards", classes_per_worker=2
    )
    deprl = run_experiment(
        build_config({**base, "algorithm": "deprl"}), tmp_path / "deprl", progress=False
    ).summary
    dpsgd = run_experiment(
        build_config({**base, "algorithm": "dpsgd"}), tmp_path / "dpsgd", progress=False
    ).summary
    assert deprl["test_acc_mean"] > dpsgd["test_acc_mean"] + 0.05
    assert deprl["test_acc_mean"] > 0.9
    assert len(deprl["per_worker_acc"]) == 8


def test_thousands_of_workers_in_one_process(tmp_path):
    """3,000 synthetic workers through the whole run loop: sparse graph, stacked training."""
    workers, rounds = 3000, 2
    cfg = build_config({}, {"dataset": "synthetic", "workers": str(workers), "rounds": str(rounds)})
    summary = run_experiment(cfg, tmp_path / "run", progress=False).summary
    assert summary["rounds"] == rounds
    assert summary["spectral_gap"] == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / workers)))
    body = cfg.param("dim") * cfg.param("rank")
    assert summary["bytes_sent"] == rounds * 2 * workers * body * 4  # a ring: two neighbours each
    assert len(summary["per_worker_test_loss"]) == workers
