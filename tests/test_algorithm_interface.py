"""The algorithm interface: a plain subclass is DePRL, phases are validated, and an algorithm with
messages of its own (examples/sparsegossip.py) keeps its masks, counts its bytes exactly, resumes
exactly and gives the same numbers on two ranks."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

import repgossip
from repgossip.cli import main
from repgossip.config import build_config
from repgossip.experiment import Supplied, build_experiment
from repgossip.rounds import train_round
from repgossip.runner import run_experiment

from launch import assert_same_numbers, summary, torchrun

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SETS = {"dataset": "synthetic", "workers": 6, "samples_per_worker": 30, "rounds": 3}


@pytest.fixture
def sparse(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("sparsegossip", None)
    from sparsegossip import SparseGossip

    return SparseGossip


def test_a_subclass_that_overrides_nothing_is_deprl(tmp_path):
    class Plain(repgossip.Algorithm):
        pass

    plain = repgossip.run(SETS, algorithm=Plain)
    deprl = repgossip.run({**SETS, "algorithm": "deprl"})
    assert plain.summary == {**deprl.summary, "wall_s": plain.summary["wall_s"]}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"part": "", "budget": "head"}, "part"), ({"part": "all", "budget": "all"}, "budget")],
)
def test_phases_are_checked(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        repgossip.Phase(**kwargs)


@pytest.mark.parametrize(
    ("part", "needle"), [("neck", "names no parameter"), ("body.1+head", "apart")]
)
def test_a_part_must_name_one_block_of_the_model(part, needle):
    class Odd(repgossip.Algorithm):
        name = "odd"
        phases = (repgossip.Phase(part, "head"),)

    with pytest.raises(repgossip.UsageError, match=needle):
        repgossip.run({**SETS, "model": "mlp", "dataset": "fmnist"}, algorithm=Odd)


def test_masks_hold_and_bytes_are_exactly_the_masked_entries(sparse):
    cfg = build_config({**SETS, "rounds": 2}, algorithm=sparse)
    exp = build_experiment(cfg, supplied=Supplied(algorithm=sparse))
    pop = exp.population
    mask = pop.rows["mask"].clone()
    assert abs(mask.mean().item() - sparse.density) < 0.15
    sent = sum(train_round(exp, r) for r in range(2))
    assert torch.equal(pop.rows["mask"], mask)  # fixed masks
    assert bool((pop.params[mask == 0] == 0).all())  # pruned weights never move
    assert bool((pop.params[mask == 1] != 0).any())
    degrees = exp.schedule.base_graph.degrees
    per_worker = 4 * mask.sum(1) + math.ceil(pop.layout.size / 8)
    assert sent == 2 * int((per_worker.numpy() * degrees).sum())
    assert sent < 2 * 2 * exp.schedule.base_graph.num_edges * pop.layout.size * 4  # < dense


def test_an_algorithm_with_its_own_messages_resumes_exactly(sparse, tmp_path):
    cfg = build_config(SETS, algorithm=sparse)
    supplied = Supplied(algorithm=sparse)
    whole = run_experiment(cfg, tmp_path / "whole", supplied=supplied, progress=False)
    part_cfg = build_config({**SETS, "rounds": 1}, algorithm=sparse)
    run_experiment(part_cfg, tmp_path / "part", supplied=supplied, progress=False)
    resumed = run_experiment(cfg, tmp_path / "part", resume=True, supplied=supplied, progress=False)
    assert summary(tmp_path / "part") == summary(tmp_path / "whole")
    assert torch.equal(resumed.experiment.population.rows["mask"],
                       whole.experiment.population.rows["mask"])  # fmt: skip


@pytest.mark.slow
def test_an_algorithm_with_its_own_messages_gives_the_same_numbers_on_two_ranks(
    tmp_path, monkeypatch
):
    shutil.copy(EXAMPLES / "sparsegossip.py", tmp_path / "sparsegossip.py")
    sets = ["algorithm=sparsegossip:SparseGossip", *(f"{k}={v}" for k, v in SETS.items())]
    done = torchrun(2, tmp_path / "dist", *sets, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet", "--set", *sets, "--out", str(tmp_path / "sim")]) == 0
    assert_same_numbers(summary(tmp_path / "dist"), summary(tmp_path / "sim"))
