"""`eval_model`: each worker measured on its own model, or on its model with the gossiped part
averaged over all workers. The average is what is measured, training is untouched, and
algorithms with nothing gossiped in their evaluated copy are refused."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import repgossip
from repgossip.cli import main

from launch import assert_same_numbers, summary, torchrun

SMALL = dict(
    dataset="synthetic", workers=6, samples_per_worker=20, rounds=3, batch_size=10,
    head_steps=2, body_steps=1, topology="ring",
)  # fmt: skip


def run(**keys):
    return repgossip.run({**SMALL, **keys})


def states(result, workers: int = 6) -> list[dict[str, torch.Tensor]]:
    return [result.worker_state(w) for w in range(workers)]


IMAGES = dict(dataset="fmnist", model="mlp", samples_per_worker=30, partition="iid")


# fedrod gossips a part of two blocks (body+head.generic), on a classification task
@pytest.mark.parametrize(("algorithm", "task"), [("deprl", {}), ("dpsgd", {}), ("fedrod", IMAGES)])
def test_training_is_the_same_under_either_evaluation(algorithm, task):
    own = run(algorithm=algorithm, **task)
    average = run(algorithm=algorithm, eval_model="average", **task)
    for a, b in zip(states(own), states(average), strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the consensus distance is measured on the parameters as they are, not the averaged ones
    assert [r["consensus_dist"] for r in own.history] == [
        r["consensus_dist"] for r in average.history
    ]
    assert own.summary["test_loss_mean"] != average.summary["test_loss_mean"]


def test_average_measures_each_head_on_the_average_body():
    result = run(algorithm="deprl", eval_model="average")
    exp = result.experiment
    pop = exp.population
    bodies = torch.stack([result.worker_state(w)["body.weight"] for w in range(6)])
    assert not torch.equal(bodies[0], bodies[1])  # a ring: the bodies have not agreed
    mean_body = bodies.double().mean(0).float()
    losses = []
    for w in range(6):
        model = result.worker_model(w)
        model.body.weight.data.copy_(mean_body)
        with torch.no_grad():
            losses.append(float(pop.loss(model(pop.test_x[w]), pop.test_y[w])))
    assert np.isclose(result.summary["test_loss_mean"], np.mean(losses), rtol=1e-5)


class BatchNormNet(torch.nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(input_shape[0], 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def test_shared_batchnorm_statistics_are_averaged_with_the_body():
    gen = torch.Generator().manual_seed(0)
    data = [[torch.randn(24, 5, generator=gen) + w for w in range(4)],
            [torch.randint(0, 3, (24,), generator=gen) for _ in range(4)]] * 2  # fmt: skip
    result = repgossip.run(
        {"rounds": 2, "lr": 0.05, "batch_size": 8, "share_bn_stats": True,
         "eval_model": "average"},
        model=BatchNormNet, data=tuple(data), graph=nx.cycle_graph(4),
    )  # fmt: skip
    states = [result.worker_state(w) for w in range(4)]
    shared = [k for k in states[0] if k.startswith("body.") and "num_batches" not in k]
    assert any("running_mean" in k for k in shared)
    losses = []
    for w, state in enumerate(states):
        averaged = {k: torch.stack([s[k].double() for s in states]).mean(0).float() for k in shared}
        model = BatchNormNet((5,), 3).eval()
        model.load_state_dict({**state, **averaged})
        with torch.no_grad():
            losses.append(float(torch.nn.functional.cross_entropy(model(data[2][w]), data[3][w])))
    assert np.isclose(result.summary["test_loss_mean"], np.mean(losses), rtol=1e-5)


def test_on_exact_averaging_both_evaluations_agree():
    # a complete graph with Metropolis weights averages exactly after training: D-PSGD's models
    # are already the average, so measuring the average changes nothing (up to rounding)
    keys = dict(algorithm="dpsgd", topology="complete", mixing="metropolis")
    own, average = run(**keys), run(**keys, eval_model="average")
    assert np.isclose(own.summary["test_loss_mean"], average.summary["test_loss_mean"], rtol=1e-6)


@pytest.mark.parametrize(
    ("algorithm", "why"),
    [
        ("local", "gossips nothing"),
        ("ditto", "evaluates its model copy 'personal'"),
        (
            "dispfl",
            "communicates through its own communicate()",
        ),  # masked: the plain mean is no model of it
    ],
)
def test_an_algorithm_without_a_gossiped_evaluated_copy_is_refused(
    algorithm, why, tmp_path, capsys
):
    code = main(["run", "--set", f"algorithm={algorithm}", "eval_model=average", "dataset=synthetic",
                 "rounds=1", "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"algorithm '{algorithm}' {why}" in err and "use own" in err


def test_a_directed_graph_is_refused(tmp_path, capsys):
    code = main(["run", "--set", "eval_model=average", "dataset=synthetic", "rounds=1",
                 "topology=directed_ring", "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "directed graph" in err
    assert not (tmp_path / "r").exists()


def test_an_unknown_value_names_the_choices(tmp_path, capsys):
    code = main(["run", "--set", "eval_model=mean", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown eval_model 'mean'; valid: own, average" in err


def test_two_ranks_measure_the_numbers_of_one_process(tmp_path):
    sets = [f"{k}={v}" for k, v in SMALL.items()] + ["algorithm=deprl", "eval_model=average"]
    done = torchrun(2, tmp_path / "dist", *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(["run", "--quiet", "--set", *sets, "--out", str(tmp_path / "sim")]) == 0
    assert_same_numbers(summary(tmp_path / "dist"), summary(tmp_path / "sim"))
