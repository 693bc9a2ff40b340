"""The Python API: `repgossip.run` with the user's own model, tensors, graph, algorithm and
callbacks; real networks (BatchNorm, Dropout) behave as a PyTorch user expects."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import repgossip
from repgossip import Callback, Phase, StateSpec
from repgossip.evaluation import evaluate
from repgossip.layout import MAIN_MODEL

WORKERS, FEATURES, CLASSES = 6, 5, 3


def bn_model(input_shape, num_classes):
    model = nn.Module()
    model.body = nn.Sequential(nn.Linear(input_shape[0], 8), nn.BatchNorm1d(8), nn.ReLU(),
                               nn.Dropout(0.25))  # fmt: skip
    model.head = nn.Linear(8, num_classes)
    return model


def tensors(seed: int = 0, n: int = 24):
    gen = torch.Generator().manual_seed(seed)
    out = [[], [], [], []]
    for worker in range(WORKERS):
        shift = torch.randn(FEATURES, generator=gen) * (1 + worker)  # unlike inputs per worker
        for split in (0, 2):
            y = torch.randint(0, CLASSES, (n,), generator=gen)
            out[split].append(torch.randn(n, FEATURES, generator=gen) + shift + y[:, None])
            out[split + 1].append(y)
    return tuple(out)


def run(**kwargs):
    settings = {"rounds": 2, "lr": 0.05, "head_epochs": 1, "body_epochs": 1, "model": bn_model,
                "data": tensors(), "graph": nx.cycle_graph(WORKERS), **kwargs}  # fmt: skip
    return repgossip.run(**settings)


def test_history_summary_and_worker_state_without_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run()
    assert [r["round"] for r in result.history] == [0, 1, 2]
    assert result.summary["rounds"] == 2 and len(result.summary["per_worker_acc"]) == WORKERS
    state = result.worker_state(3)
    assert set(state) == set(bn_model((FEATURES,), CLASSES).state_dict())
    assert int(state["body.1.num_batches_tracked"]) > 0  # trained in train() mode
    assert not list(tmp_path.iterdir())  # out=None writes nothing
    with pytest.raises(repgossip.UsageError, match="worker 9 is not among"):
        result.worker_state(9)


def test_batchnorm_statistics_are_private_unless_shared():
    private = run(graph=nx.complete_graph(WORKERS))
    means = [private.worker_state(w)["body.1.running_mean"] for w in range(WORKERS)]
    assert len({tuple(m.tolist()) for m in means}) == WORKERS
    bodies = [private.worker_state(w)["body.0.weight"] for w in range(WORKERS)]
    assert all(torch.equal(bodies[0], b) for b in bodies)  # complete graph: one body
    shared = run(graph=nx.complete_graph(WORKERS), share_bn_stats=True)
    means = [shared.worker_state(w)["body.1.running_mean"] for w in range(WORKERS)]
    assert all(torch.equal(means[0], m) for m in means)
    assert shared.summary["bytes_sent"] > private.summary["bytes_sent"]  # statistics travel


def test_evaluation_runs_in_eval_mode_so_it_is_repeatable():
    result = run(rounds=1)
    exp = result.experiment
    first, again = evaluate(exp.population, MAIN_MODEL), evaluate(exp.population, MAIN_MODEL)
    assert all((first[k] == again[k]).all() for k in first)  # no dropout, no moving statistics
    assert torch.equal(
        result.worker_state(0)["body.1.running_mean"],
        run(rounds=1).worker_state(0)["body.1.running_mean"],
    )


def test_the_run_folder_records_references_and_resumes_with_the_same_objects(tmp_path):
    whole = run(rounds=3, out=tmp_path / "whole")
    saved = yaml.safe_load((tmp_path / "whole" / "config.yaml").read_text())
    assert saved["model"] == "test_api:bn_model" and saved["dataset"] == "python:tuple"
    assert saved["topology"] == "python:Graph" and saved["workers"] == WORKERS
    assert (tmp_path / "whole" / "provenance.json").is_file()
    run(rounds=1, out=tmp_path / "part")
    resumed = run(rounds=3, out=tmp_path / "part", resume=True)
    for w in range(WORKERS):
        a, b = whole.worker_state(w), resumed.worker_state(w)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["round"] for r in resumed.history] == [0, 1, 2, 3]


def test_callbacks_receive_every_evaluation_and_round():
    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_evaluation(self, record):
            self.events.append(("eval", record["round"]))

        def on_round_end(self, round_done):
            self.events.append(("round", round_done))

        def on_run_end(self, summary):
            self.events.append(("end", summary["rounds"]))

    recorder = Recorder()
    run(callbacks=[recorder])
    assert recorder.events == [("eval", 0), ("eval", 1), ("round", 1), ("eval", 2), ("round", 2),
                               ("end", 2)]  # fmt: skip


class Anchored(repgossip.Algorithm):
    """A proximal DePRL defined inside a test, handed over as a class."""

    phases = (Phase("head", "head"), Phase("body", "body"))
    shared = "body"

    def extra_state(self):
        return {"anchor": StateSpec()}

    def init_state(self, population):
        population.rows["anchor"].copy_(population.params)

    def adjust_gradient(self, phase, grad, weights, rows):
        if phase.part == "body":
            grad.add_(weights - rows("anchor"), alpha=10.0)


def test_an_algorithm_class_handed_over_runs_and_acts():
    plain, anchored = run(), run(algorithm=Anchored)
    assert plain.summary["per_worker_test_loss"] != anchored.summary["per_worker_test_loss"]
    start = anchored.experiment.population.rows["anchor"]
    moved = (anchored.experiment.population.params - start).abs().sum()
    assert moved > 0


def test_centralized_datasets_are_partitioned():
    x = torch.randn(600, FEATURES)
    y = torch.randint(0, CLASSES, (600,))
    result = repgossip.run(
        {"workers": 4, "rounds": 1, "partition": "shards", "classes_per_worker": 2},
        data=(TensorDataset(x, y), (x[:120], y[:120])),
    )
    assert result.experiment.cfg.model == "mlp"
    labels = [set(t.tolist()) for t in result.experiment.population.train_y]
    assert all(len(s) == 2 for s in labels)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"wokers": 3}, "did you mean 'workers'"),
        ({"graph": nx.path_graph(4)}, "6 entries but workers=4"),
        ({"topology": "ring"}, "give topology or graph, not both"),
        ({"graph": nx.Graph([(0, 1), (2, 3)]), "workers": 4}, "disconnected"),
        (
            {"data": ([torch.zeros(2, 3)],) * 4, "workers": 1, "graph": nx.empty_graph(1)},
            "labels of shape (2, 3)",
        ),
        ({"algorithm": object}, "subclass of repgossip.Algorithm"),
        ({"model": lambda: nn.Linear(2, 2)}, "'body' and 'head' submodules"),
        ({"out": 5}, "out must be a folder path (a str or os.PathLike) or None, got 5"),
        ({"out": b"runs/x"}, "got b'runs/x'"),
    ],
)
def test_bad_api_input_is_a_one_line_usage_error(kwargs, needle):
    settings = {"model": bn_model, "data": tensors(), "graph": nx.cycle_graph(WORKERS), "rounds": 1}
    with pytest.raises(repgossip.UsageError) as info:
        repgossip.run(**{**settings, **kwargs})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_numpy_scalars_count_as_their_python_values(tmp_path):
    """`workers=np.int64(4)` as a keyword or in the config mapping, as numpy code hands them
    over, builds the config of the plain values and writes a config.yaml that reads back."""
    plain = {"dataset": "synthetic", "workers": 4, "rounds": 1, "samples_per_worker": 20,
             "lr": 0.5, "seed": 3, "tensorboard": False, "algorithm": "deprl"}  # fmt: skip
    numpy = {"workers": np.int64(4), "lr": np.float32(0.5), "seed": np.uint8(3),
             "tensorboard": np.bool_(False), "dataset": np.str_("synthetic")}  # fmt: skip
    as_keys = repgossip.run(plain, **numpy, out=tmp_path / "a")
    in_mapping = repgossip.run({**plain, **numpy}, out=tmp_path / "b")
    expected = repgossip.build_config(plain)
    assert as_keys.experiment.cfg == in_mapping.experiment.cfg == expected
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text()) == expected.to_dict()
    with pytest.raises(repgossip.UsageError, match="workers must be an integer, got True"):
        repgossip.run(plain, workers=np.bool_(True))  # a bool is no integer, numpy's neither


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e300], ids=["nan", "inf", "1e300"])
def test_non_finite_regression_targets_are_bad_input_naming_the_sample(bad):
    """NaN, inf, or a float64 that becomes inf in float32: refused (exit 2) before training, not
    trained on into a "divergence" (exit 3) that no learning rate cures."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, FEATURES, generator=gen) for _ in range(2)]
    ys = [torch.randn(8, generator=gen, dtype=torch.float64) for _ in range(2)]
    ys[1][5] = bad
    data = (xs, ys, xs, [y.clone().fill_(0.5) for y in ys])
    with pytest.raises(repgossip.UsageError) as info:
        repgossip.run({"workers": 2, "rounds": 1, "topology": "complete"}, model=bn_model,
                      data=data)  # fmt: skip
    message = str(info.value)
    assert "train split of worker 1" in message, message
    assert "NaN or infinite label at sample 5" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("worker", ["1", 1.0, True, None])
def test_worker_state_of_a_value_that_is_no_index_names_it_and_the_range(worker):
    result = run(rounds=1)
    with pytest.raises(repgossip.UsageError) as info:
        result.worker_state(worker)
    message = str(info.value)
    assert f"got {worker!r}" in message and f"0..{WORKERS - 1}" in message, message
    assert "integer" in message and "\n" not in message
    assert torch.equal(result.worker_state(np.int64(2))["head.weight"],
                       result.worker_state(2)["head.weight"])  # fmt: skip


API_SCRIPT = """
import sys
import networkx as nx
import repgossip
from test_api import bn_model, tensors, WORKERS
import torch
result = repgossip.run({"rounds": 2, "engine": sys.argv[2], "head_epochs": 1},
                       model=bn_model, data=tensors(), graph=nx.cycle_graph(WORKERS),
                       out=sys.argv[1])
if result.history:  # rank 0, which gathered every worker's state
    torch.save([result.worker_state(w) for w in range(WORKERS)], sys.argv[1] + "/states.pt")
"""


@pytest.mark.slow
def test_the_same_api_call_under_torchrun_gives_the_same_numbers(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from launch import ENV, assert_same_numbers, summary

    script = tmp_path / "script.py"
    script.write_text(API_SCRIPT)
    env = {
        **ENV,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), *ENV.get("PYTHONPATH", "").split(os.pathsep)]
        ),
    }
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(script), str(tmp_path / "dist"), "dist"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    sim = subprocess.run([sys.executable, str(script), str(tmp_path / "sim"), "sim"],
                         capture_output=True, text=True, timeout=240, env=env)  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-2000:]
    assert_same_numbers(summary(tmp_path / "dist"), summary(tmp_path / "sim"))
    import torch

    dist_states, sim_states = (torch.load(tmp_path / run / "states.pt", weights_only=True)
                               for run in ("dist", "sim"))  # fmt: skip
    assert len(dist_states) == WORKERS  # rank 0 answers for rank 1's workers too
    for got, want in zip(dist_states, sim_states, strict=True):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_repgossip_imports_where_fcntl_does_not_exist():
    """Windows has no fcntl: the folder lock imports it only when it locks."""
    import subprocess
    import sys

    script = "import sys; sys.modules['fcntl'] = None; import repgossip; print(repgossip.run)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]


def test_a_mixing_matrix_can_be_an_array():
    """W handed over as an array is checked as a W file is, and used: the same numbers as the
    same W from a file."""
    import numpy as np

    from repgossip.topology import build_graph, mixing_matrix

    graph = build_graph("ring", WORKERS)
    w = mixing_matrix(graph, "max_degree").dense()
    common = {"model": bn_model, "data": tensors(), "graph": nx.cycle_graph(WORKERS), "rounds": 1}
    from_array = repgossip.run(mixing=w, **common).summary
    from_rule = repgossip.run(mixing="max_degree", **common).summary
    from_array.pop("wall_s"), from_rule.pop("wall_s")
    assert from_array == from_rule
    bad = w.copy()
    bad[0, 1] += 0.1
    with pytest.raises(repgossip.UsageError, match="mixing array") as info:
        repgossip.run(mixing=bad, **common)
    assert "\n" not in str(info.value)
    assert np.allclose(w.sum(1), 1)
