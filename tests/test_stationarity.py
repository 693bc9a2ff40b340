"""`stationarity=true`: the gradient norms DePRL's theorem bounds, checked against plain autograd
on each worker's model, and the same bits under any process layout."""

from __future__ import annotations

import copy

import pytest
import torch

import repgossip
from repgossip import Callback, RunInfo

SMALL = {"workers": 4, "samples_per_worker": 30, "rounds": 3, "stationarity": True}


class Expected(Callback):
    """At each evaluation, the two terms computed directly: every worker's model with its body
    set to the workers' average body, one full-batch backward each."""

    def __init__(self) -> None:
        self.records: list[tuple[dict, float, float]] = []

    def on_run_start(self, info: RunInfo) -> None:
        self.info = info

    def on_evaluation(self, record) -> None:
        pop = self.info.experiment.population
        models = [self.info.worker_model(w) for w in self.info.worker_ids]
        bodies = [torch.nn.utils.parameters_to_vector(m.body.parameters()).double() for m in models]
        mean_body = torch.stack(bodies).mean(dim=0)
        body_grads, head_terms = [], []
        for w, model in enumerate(models):
            model = copy.deepcopy(model).eval()
            torch.nn.utils.vector_to_parameters(mean_body.float(), model.body.parameters())
            loss = pop.loss(model(pop.train_x[w]), pop.train_y[w])
            body_grad = torch.autograd.grad(loss, list(model.body.parameters()), retain_graph=True)
            head_grad = torch.autograd.grad(loss, list(model.head.parameters()))
            body_grads.append(torch.cat([g.flatten() for g in body_grad]).double())
            head_terms.append(float(sum(g.double().square().sum() for g in head_grad)))
        body = float(torch.stack(body_grads).mean(dim=0).square().sum())
        self.records.append((dict(record), body, sum(head_terms) / len(head_terms)))


@pytest.mark.parametrize(
    "keys",
    [{"dataset": "synthetic"}, {"dataset": "fmnist", "model": "mlp"}],
    ids=["synthetic-linear", "fmnist-mlp"],
)
def test_stationarity_is_the_theorems_gradient_norms(keys):
    expected = Expected()
    repgossip.run(SMALL | keys, callbacks=[expected])
    assert len(expected.records) == SMALL["rounds"] + 1
    for record, body, head in expected.records:
        assert record["stationarity_body"] == pytest.approx(body, rel=1e-4, abs=1e-9)
        assert record["stationarity_head"] == pytest.approx(head, rel=1e-4, abs=1e-9)
    assert expected.records[0][1] > 0  # a measure that moves, not a constant


def test_stationarity_off_reports_nothing_and_changes_no_number():
    on = repgossip.run(SMALL | {"dataset": "synthetic"})
    off = repgossip.run(SMALL | {"dataset": "synthetic", "stationarity": False})
    assert "stationarity_body" in on.summary and "stationarity_body" not in off.summary
    strip = {"stationarity_body", "stationarity_head", "wall_s"}
    assert {k: v for k, v in on.summary.items() if k not in strip} == {
        k: v for k, v in off.summary.items() if k not in strip
    }
