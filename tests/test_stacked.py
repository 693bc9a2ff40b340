"""Stacked training: many workers' copies of a small network run as one (repgossip.stacked).

The stacked path must compute each worker's own math (checked against the worker-by-worker loop)
and a worker's numbers must not depend on which workers share its stack or on the thread count:
the distributed engine's bitwise equality with the one-process engine relies on that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import repgossip.scratch as scratch_module
from repgossip import stacked
from repgossip.architectures import build_model
from repgossip.bench import intra_op_threads
from repgossip.evaluation import evaluate
from repgossip.layout import MAIN_MODEL
from repgossip.models import SplitModel
from repgossip.population import Population
from repgossip.stacked import stacks_well
from repgossip.training import Budget, StepRule, train_phase

RULE = StepRule(lr=0.05, momentum=0.9, weight_decay=1e-3)


def small_mlp() -> SplitModel:
    body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Identity(), nn.Linear(8, 6))
    return SplitModel(nn.Sequential(body, nn.ReLU()), nn.Linear(6, 3))


class Tempered(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits / 3.0, dim=-1)


def population(model_name: str, sizes=(12, 12, 9, 12, 9, 12), ids=None) -> Population:
    """Workers with unequal sample counts (two stacking groups) of a small model."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    if model_name == "linear":
        model, shape = build_model("linear", (5,), 1), (5,)
        ys = [torch.randn(n, generator=gen) for n in sizes]
    else:
        model, shape = small_mlp(), (3, 4)
        ys = [torch.randint(0, 3, (n,), generator=gen) for n in sizes]
    if model_name == "tempered":  # a user's parameter-free work after the head (traced_split)
        model.after_head = Tempered()
    xs = [torch.randn(n, *shape, generator=gen) for n in sizes]
    ids = list(range(len(sizes))) if ids is None else ids
    data = ([xs[i] for i in ids], [ys[i] for i in ids])
    regression = model_name == "linear"
    return Population(model, ids, data, data, regression, 4, 7, torch.device("cpu"))


def a_round(pop: Population, r: int) -> None:
    train_phase(pop, "head", Budget(epochs=2), RULE, r, 0)
    train_phase(pop, "body", Budget(steps=3), RULE, r, 1)
    train_phase(pop, "all", Budget(epochs=1), RULE, r, 2)


# ---------------------------------------------------------------- the layers


@settings(max_examples=25, deadline=None)
@given(workers=st.integers(1, 5), batch=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_stacked_forward_is_each_workers_own_forward(workers, batch, seed):
    torch.manual_seed(seed)
    model = small_mlp()
    rows = [{k: torch.randn_like(v) for k, v in model.named_parameters()} for _ in range(workers)]
    params = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    x = torch.randn(workers, batch, 3, 4)
    for stage in ("full", "body"):
        out = stacked.model_forward(model, params, x, stage)
        for w in range(workers):
            expected = functional_call(model, rows[w], (x[w],), {"stage": stage})
            torch.testing.assert_close(out[w], expected, rtol=1e-5, atol=1e-5)
    features = torch.randn(workers, batch, 6)
    heads = stacked.model_forward(model, params, features, "head")
    for w in range(workers):
        torch.testing.assert_close(heads[w], functional_call(model.head, {
            "weight": rows[w]["head.weight"], "bias": rows[w]["head.bias"]}, (features[w],)))  # fmt: skip


def test_flatten_keeps_the_worker_dimension():
    x = torch.randn(2, 3, 4, 5, 6)  # (workers, batch, ...)
    for module in (nn.Flatten(), nn.Flatten(2), nn.Flatten(1, 2), nn.Flatten(1, -2)):
        out = stacked.forward(module, {}, x)
        assert torch.equal(out[1], module(x[1]))


def test_what_stacks():
    assert stacked.can_stack(small_mlp()) and stacks_well(small_mlp())
    assert stacked.can_stack(build_model("linear", (20,), 1))
    cnn = build_model("cnn", (1, 28, 28), 10)
    assert not stacked.can_stack(cnn) and stacked.can_stack(cnn.head)
    assert stacks_well(cnn.head) and not stacks_well(cnn)
    mlp = build_model("mlp", (1, 28, 28), 10)
    assert stacked.can_stack(mlp) and not stacks_well(mlp)  # too big to gain from stacking
    assert not stacked.can_stack(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))


# ---------------------------------------------------------------- training stacked


@pytest.mark.parametrize("model_name", ["linear", "mlp", "tempered"])
def test_stacked_training_equals_the_worker_by_worker_loop(model_name):
    fast, plain = population(model_name), population(model_name)
    assert fast.stack_model and fast.stack_head
    plain.stack_model = plain.stack_head = False  # forces the per-worker loop
    for r in range(2):  # the second round checks the momentum written back
        for pop in (fast, plain):
            a_round(pop, r)
    torch.testing.assert_close(fast.params, plain.params, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.momentum, plain.momentum, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast.params, population(model_name).params)


@pytest.mark.parametrize("model_name", ["linear", "mlp"])
def test_a_stacked_workers_numbers_do_not_depend_on_its_stack(model_name, monkeypatch):
    with intra_op_threads(1):
        alone = population(model_name)
        a_round(alone, 0)
    monkeypatch.setattr(scratch_module, "STACK_CHUNK", 2)  # several stacks per group
    with intra_op_threads(2):
        split = population(model_name)
        a_round(split, 0)
        part = population(model_name, ids=[1, 2, 5])
        a_round(part, 0)
    assert torch.equal(split.params, alone.params)
    assert torch.equal(part.params, alone.params[[1, 2, 5]])


def test_inactive_workers_keep_their_parameters_when_stacked():
    pop = population("linear")
    before = pop.params.clone()
    train_phase(pop, "all", Budget(epochs=1), RULE, 0, 0, active={0, 3})
    changed = (pop.params != before).any(1).tolist()
    assert changed == [True, False, False, True, False, False]


def test_layout_views_keep_leading_dimensions():
    pop = population("mlp")
    block = pop.params[:, pop.layout.part("head")]
    views = pop.layout.views(block, "head")
    assert views["head.weight"].shape == (len(pop), 3, 6)
    assert torch.equal(views["head.bias"][2], pop.layout.views(pop.params[2])["head.bias"])


@pytest.mark.parametrize("model_name", ["linear", "mlp", "tempered"])
def test_stacked_evaluation_equals_the_worker_by_worker_loop(model_name):
    fast = population(model_name)
    a_round(fast, 0)
    stats = evaluate(fast, MAIN_MODEL)
    fast.stack_model = False
    plain = evaluate(fast, MAIN_MODEL)
    assert stats.keys() == plain.keys()
    for key in stats:
        np.testing.assert_allclose(stats[key], plain[key], rtol=1e-5, atol=1e-7)
    assert stats["count"].tolist() == [12, 12, 9, 12, 9, 12]
