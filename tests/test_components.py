"""Components of every kind that takes plug-ins (algorithm, dataset, model, topology), each
declaring a parameter of its own, added from a temporary package and run through the CLI: the
route CONTRIBUTING describes, end to end. Also the built-in components' own keys."""

from __future__ import annotations

import json

import pytest
import yaml

from repgossip.cli import main

TOYKIT = '''
"""Toy components of every kind that takes plug-ins, each with a parameter of its own."""
import numpy as np
import torch
from torch import nn

import repgossip
from repgossip import Param, with_params


class Scaled(repgossip.Algorithm):
    name = "scaled"
    params = (Param("gain", 1.0, "factor on every body gradient", low=0, low_open=True),)

    def adjust_gradient(self, phase, grad, weights, rows):
        if phase.part == "body":
            grad.mul_(self.param("gain"))


def blobs(seed, spread):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 4, generator=gen) * 3

    def draw(n):
        y = torch.randint(0, 3, (n,), generator=gen)
        return centers[y] + spread * torch.randn(n, 4, generator=gen), y

    return draw(600), draw(300)


with_params(blobs, Param("spread", 1.0, "noise around each class centre", low=0))


def narrow(input_shape, num_classes, width):
    body = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.ReLU())
    return repgossip.SplitModel(body, nn.Linear(width, num_classes))


with_params(narrow, Param("width", 8, "hidden units", low=1))


def chain(workers, hops):
    adjacency = np.zeros((workers, workers))
    for i in range(workers):
        for h in range(1, hops + 1):
            j = (i + h) % workers
            if j != i:
                adjacency[i, j] = adjacency[j, i] = 1
    return adjacency


with_params(chain, Param("hops", 1, "neighbours on each side", low=1))


def named(workers, name):
    return np.ones((workers, workers))


with_params(named, Param("name", 1, "a parameter named as a builder's argument"))


def given(workers):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(20, 4, generator=gen) for _ in range(workers)]
    ys = [torch.randint(0, 2, (20,), generator=gen) for _ in range(workers)]
    return xs, ys, xs, ys
'''
TOYS = ("algorithm=toykit:Scaled", "dataset=toykit:blobs", "model=toykit:narrow",
        "topology=toykit:chain", "workers=6", "rounds=2")  # fmt: skip


@pytest.fixture
def toykit(tmp_path, monkeypatch):
    """A project folder holding the package `toykit`, as a user's would."""
    package = tmp_path / "project" / "toykit"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(TOYKIT)
    monkeypatch.chdir(package.parent)
    return package.parent


def _run(folder, *sets: str) -> tuple[int, dict, dict]:
    code = main(["run", "--quiet", "--set", *sets, "--out", str(folder)])
    if code != 0:
        return code, {}, {}
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    return code, saved, json.loads((folder / "summary.json").read_text())


def test_a_toy_component_of_each_kind_takes_its_own_key_through_the_cli(toykit):
    own = {"gain": 0.5, "spread": 0.25, "width": 5, "hops": 2}
    code, saved, summary = _run(toykit / "a", *TOYS, *(f"{k}={v}" for k, v in own.items()))
    assert code == 0
    assert {k: saved[k] for k in own} == own  # recorded, typed, in config.yaml
    # the model's width: body 4*5+5, head 5*3+3, all of it on each worker
    assert summary["params_shared"] + summary["params_private"] == 4 * 5 + 5 + 5 * 3 + 3
    provenance = json.loads((toykit / "a" / "provenance.json").read_text())
    plugins = provenance["sessions"][-1]["plugins"]
    assert set(plugins) == {"algorithm", "dataset", "model", "topology"}


def test_each_toy_key_changes_what_runs(toykit):
    _, _, base = _run(toykit / "base", *TOYS)
    for change in ("gain=0.5", "spread=3", "width=3", "hops=2"):
        _, _, changed = _run(toykit / change.replace("=", "-"), *TOYS, change)
        assert changed["test_loss_mean"] != base["test_loss_mean"], change


def test_the_toy_topologys_key_reaches_its_graph(toykit, capsys):
    assert main(["topology", "toykit:chain", "--workers", "6", "--set", "hops=2"]) == 0
    assert json.loads(capsys.readouterr().out)["edges"] == 12


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ("hops=0", ("hops must be >= 1", "0")),
        ("width=wide", ("width", "wide")),
        ("edge_prob=0.5", ("edge_prob", "erdos_renyi", "toykit:chain")),
        ("gian=2", ("gian", "gain")),
    ],
)
def test_a_bad_toy_key_is_one_line_and_exit_2(toykit, capsys, change, needles):
    assert main(["run", "--quiet", "--set", *TOYS, change, "--out", str(toykit / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    assert not (toykit / "x").exists()


def test_keys_lists_a_toy_components_own_keys(toykit, capsys):
    assert main(["keys", "toykit:narrow", "--kind", "model"]) == 0
    out = capsys.readouterr().out
    assert "model toykit:narrow:" in out and "width = 8  (>= 1)  hidden units" in out


def test_keys_lists_each_builtin_components_own_keys(capsys):
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    expected = [("partition dirichlet:", "alpha = 0.5"), ("dataset synthetic:", "dim = 20"),
                ("partition shards:", "classes_per_worker = 2"), ("algorithm ditto:", "ditto"),
                ("topology erdos_renyi:", "edge_prob = 0.3")]  # fmt: skip
    for header, key in expected:
        section = out.split(header, 1)[1].split(":\n", 1)[0]
        assert key in section, header


def test_the_linear_models_rank_without_a_config_is_the_synthetic_datasets_default():
    from repgossip.architectures import build_model
    from repgossip.data.datasets import SYNTHETIC_PARAMS

    rank = next(p.default for p in SYNTHETIC_PARAMS if p.name == "rank")
    assert build_model("linear", (20,), 0).body.out_features == rank


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (("topology=toykit:named",), ("parameter 'name'", "argument components are called with")),
        (("directed=true",), ("directed=true", "undirected graph")),
        (("hops=" + "9" * 30,), ("hops must be <= 9223372036854775807", "64-bit")),
    ],
    ids=["param-named-like-an-argument", "directed-undirected-plugin", "huge-integer"],
)
def test_what_a_hostile_review_found_is_one_line_and_exit_2(toykit, capsys, sets, needles):
    argv = ["run", "--quiet", "--set", *TOYS, *sets, "--out", str(toykit / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err


def test_resuming_checks_the_keys_given_now(toykit, capsys):
    """A saved config's keys of components not selected are left out on resume; a key the user
    gives now is checked as in a fresh run."""
    assert _run(toykit / "r", *TOYS)[0] == 0
    resumed = ["run", "--quiet", "--resume", "--out", str(toykit / "r"), "--set", "rounds=3"]
    assert main([*resumed, "alpha=banana"]) == 2
    assert "alpha is a key of partition" in capsys.readouterr().err
    assert main(resumed) == 0


def test_data_given_per_worker_records_no_split_key_and_reruns_from_its_config(toykit):
    code, saved, _ = _run(toykit / "g", "dataset=toykit:given", "workers=4", "rounds=1",
                          "partition=dirichlet", "alpha=0.1")  # fmt: skip
    assert code == 0 and saved["partition"] == "natural" and "alpha" not in saved
    again = ["run", "--quiet", "--config", str(toykit / "g" / "config.yaml")]
    assert main([*again, "--out", str(toykit / "g2")]) == 0


def test_a_sweep_crosses_a_plugin_and_a_builtin_with_the_plugins_key(toykit):
    sets = ["--set", "workers=4", "samples_per_worker=20", "rounds=1", "gain=2"]
    argv = ["sweep", "--quiet", *sets, "--grid", "algorithm=deprl,toykit:Scaled"]
    assert main([*argv, "--out", str(toykit / "s")]) == 0
    saved = {p.name: yaml.safe_load((p / "config.yaml").read_text()) for p in (toykit / "s").iterdir()
             if p.is_dir()}  # fmt: skip
    assert sorted(str(c.get("gain")) for c in saved.values()) == ["2.0", "None"]


@pytest.mark.parametrize("argv", [["keys", "nosuch"], ["keys", "dirichlet", "--kind", "topology"]])
def test_keys_refuses_a_name_that_is_no_component(capsys, argv):
    assert main(argv) == 2
    assert "valid:" in capsys.readouterr().err


def test_keys_looks_up_one_key_core_or_a_components(capsys):
    assert main(["keys", "eval_model"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("key of every run:\n  eval_model = own  which model")
    assert main(["keys", "alpha"]) == 0
    out = capsys.readouterr().out
    assert "partition dirichlet:\n  alpha = 0.5" in out and "partition dirichlet_classwise:" in out
