"""configs/paper/: the DePRL authors' recipe, one file per dataset and model of theirs. Each must be
a valid config with the recipe's keys, and the one whose data is installed must pass every check a
run makes before it trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from repgossip.config import build_config
from repgossip.configfile import read_yaml
from repgossip.experiment import preflight

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"
FILES = sorted(PAPER.glob("*.yaml"))
FMNIST = Path("/usr/share/datasets/fashion-mnist")
RECIPE = {"batch_size": 16, "lr": 0.01, "lr_decay": 0.96, "momentum": 0.9, "reset_momentum": True,
          "weight_decay": 1e-5, "clip_norm": 10.0, "head_epochs": 3, "body_epochs": 1,
          "mixing": "uniform_row", "gossip_first": True, "topology": "erdos_renyi",
          "edge_prob": 0.25, "rounds": 200}  # fmt: skip


def test_there_is_one_file_per_experiment_of_the_authors():
    assert [f.stem for f in FILES] == [
        "cifar10-vgg11", "cifar100-resnet18", "fmnist-alexnet", "hapt-mlp"
    ]  # fmt: skip


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_paper_config_is_the_authors_recipe(path):
    recorded = build_config(read_yaml(path)).to_dict()
    assert {k: recorded[k] for k in RECIPE} == RECIPE
    # Hsu's class-wise split where labels are split, never the equal-size dirichlet
    assert recorded["partition"] in ("dirichlet_classwise", "natural")
    # their private head: the whole classifier MLP where the model has one
    assert recorded.get("head_layers", 3) == 3


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed (make data)")
def test_the_fmnist_paper_config_passes_the_checks_before_training():
    preflight(build_config(read_yaml(PAPER / "fmnist-alexnet.yaml")))
