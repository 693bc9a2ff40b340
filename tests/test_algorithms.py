"""DePRL's invariants and the fast population path against a plain per-worker reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repgossip.algorithms import ALGORITHMS
from repgossip.architectures import build_model
from repgossip.config import build_config
from repgossip.experiment import build_experiment
from repgossip.metrics import bytes_per_round
from repgossip.population import Population
from repgossip.rounds import train_round
from repgossip.streams import worker_generator
from repgossip.training import Budget, StepRule, batch_schedule, budget, step_rule, train_phase

SYNTHETIC = dict(dataset="synthetic", workers=6, samples_per_worker=24, batch_size=8, rounds=3)


def experiment(**overrides):
    return build_experiment(build_config({**SYNTHETIC, **overrides}))


def blocks(exp):
    pop = exp.population
    return (
        pop.params[:, pop.layout.part("body")].clone(),
        pop.params[:, pop.layout.part("head")].clone(),
    )


def test_head_phase_leaves_bodies_and_body_phase_leaves_heads_bitwise():
    exp = experiment()
    pop, cfg = exp.population, exp.cfg
    body0, head0 = blocks(exp)
    train_phase(pop, "head", budget(cfg, "head"), step_rule(cfg, "head", 0), 0, 0)
    body1, head1 = blocks(exp)
    assert torch.equal(body1, body0) and not torch.equal(head1, head0)
    train_phase(pop, "body", budget(cfg, "body"), step_rule(cfg, "body", 0), 0, 1)
    body2, head2 = blocks(exp)
    assert torch.equal(head2, head1) and not torch.equal(body2, body1)


@pytest.mark.parametrize("topology", ["ring", "erdos_renyi", "star"])
def test_gossip_moves_bodies_only_and_heads_never_count_as_bytes(topology):
    exp = experiment(topology=topology)
    pop = exp.population
    train_phase(pop, "all", Budget(epochs=1), StepRule(lr=0.01), 0, 0)  # make workers differ
    body0, head0 = blocks(exp)
    sent = exp.engine.gossip(pop, "body", exp.schedule.round_plan(0))
    body1, head1 = blocks(exp)
    assert torch.equal(head1, head0)
    assert not torch.equal(body1, body0)
    plan = exp.schedule.round_plan(0)
    adj, w = plan.graph.adjacency(), plan.mixing.dense()
    assert (
        sent
        == int(adj.sum()) * pop.layout.body_size * 4
        == bytes_per_round(plan.graph.num_edges, pop.layout.body_size)
    )
    expected = torch.as_tensor(w, dtype=torch.float64) @ body0.double()
    torch.testing.assert_close(body1.double(), expected, rtol=1e-5, atol=1e-6)


def test_a_deprl_round_changes_heads_only_locally():
    """Heads after a whole round equal heads after the local phases: gossip never touches them."""
    exp = experiment()
    pop, cfg = exp.population, exp.cfg
    twin = experiment()
    for phase_index, phase in enumerate(exp.algorithm.phases):
        train_phase(twin.population, phase.part, budget(cfg, phase.budget), step_rule(cfg, phase.part, 0), 0,
                              phase_index)  # fmt: skip
    train_round(exp, 0)
    assert torch.equal(blocks(exp)[1], blocks(twin)[1])
    assert not torch.equal(blocks(exp)[0], blocks(twin)[0])
    assert pop.params.shape == twin.population.params.shape


def test_complete_graph_makes_all_bodies_equal():
    exp = experiment(topology="complete")
    train_round(exp, 0)
    body, head = blocks(exp)
    torch.testing.assert_close(body, body.mean(0, keepdim=True).expand_as(body), rtol=0, atol=1e-6)
    assert not torch.allclose(head, head.mean(0, keepdim=True).expand_as(head))


def test_fedrep_is_deprl_with_exact_averaging():
    fedrep = experiment(algorithm="fedrep")
    deprl = experiment(algorithm="deprl", topology="complete")
    for r in range(2):
        assert train_round(fedrep, r) == train_round(deprl, r)
    assert torch.equal(fedrep.population.params, deprl.population.params)


def test_local_never_communicates_and_dpsgd_shares_everything():
    local, dpsgd = experiment(algorithm="local"), experiment(algorithm="dpsgd")
    assert train_round(local, 0) == 0
    sent = train_round(dpsgd, 0)
    adj = dpsgd.schedule.round_plan(0).graph.adjacency()
    assert sent == int(adj.sum()) * dpsgd.population.layout.size * 4


@pytest.mark.parametrize("dataset", ["synthetic", "fmnist"])
def test_every_algorithm_runs_a_round(dataset):
    for name in ALGORITHMS:
        if name == "fedrod" and dataset == "synthetic":
            continue  # a classification method (tests/test_baselines.py checks the refusal)
        exp = experiment(algorithm=name, dataset=dataset, samples_per_worker=20, head_epochs=1)
        train_round(exp, 0)
        assert torch.isfinite(exp.population.params).all()


def test_link_failures_keep_gossip_doubly_stochastic_and_vary_by_round():
    exp = experiment(link_failure_prob=0.3, workers=12, topology="erdos_renyi", edge_prob=0.6)
    plans = [exp.schedule.round_plan(r) for r in range(5)]
    for plan in plans:
        weights = plan.mixing.dense()
        np.testing.assert_allclose(weights.sum(0), 1, atol=1e-12)
        np.testing.assert_allclose(weights, weights.T, atol=0)
    assert len({p.graph.edges.tobytes() for p in plans}) > 1


# ------------------------------------------------------------------ fast path == plain reference


def _population(workers=3, samples=24, batch_size=8, seed=5):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(samples, 1, 28, 28, generator=gen) for _ in range(workers)]
    ys = [torch.randint(0, 10, (samples,), generator=gen) for _ in range(workers)]
    torch.manual_seed(1)
    model = build_model("cnn", (1, 28, 28), 10)
    pop = Population(
        model, range(workers), (xs, ys), (xs, ys), False, batch_size, seed, torch.device("cpu")
    )
    return pop, model, xs, ys


def _reference_worker(model, pop, w, xs, ys, rounds, rules):
    """The authors' structure: one nn.Module and one torch.optim.SGD per part, per worker."""
    ref = copy.deepcopy(model)
    optimizers = {
        part: torch.optim.SGD(getattr(ref, part).parameters(), lr=rule.lr, momentum=rule.momentum,
                              weight_decay=rule.weight_decay)
        for part, rule in rules.items()
    }  # fmt: skip
    for r in range(rounds):
        for phase, (part, budget_) in enumerate(
            [("head", Budget(epochs=2)), ("body", Budget(steps=3))]
        ):
            gen = worker_generator(pop.seed, w, r, phase)
            for idx in batch_schedule(len(ys[w]), pop.batch_size, budget_, gen).batches():
                optimizers[part].zero_grad()
                F.cross_entropy(ref(xs[w][idx]), ys[w][idx]).backward()
                optimizers[part].step()
    return torch.cat([p.detach().reshape(-1) for p in ref.parameters()])


def test_population_matches_a_plain_per_worker_reference():
    pop, model, xs, ys = _population()
    rules = {"head": StepRule(lr=0.05, momentum=0.9, weight_decay=1e-3),
             "body": StepRule(lr=0.03, momentum=0.9, weight_decay=1e-3)}  # fmt: skip
    rounds = 2  # the second round checks that momentum persists across rounds
    for r in range(rounds):
        train_phase(pop, "head", Budget(epochs=2), rules["head"], r, 0)
        train_phase(pop, "body", Budget(steps=3), rules["body"], r, 1)
    for w in range(len(pop)):
        expected = _reference_worker(model, pop, w, xs, ys, rounds, rules)
        torch.testing.assert_close(pop.params[w], expected, rtol=1e-4, atol=1e-5)


def test_the_run_loops_consensus_is_the_metrics_definition():
    from repgossip.metrics import consensus_distance
    from repgossip.rounds import consensus

    exp = experiment()
    train_round(exp, 0)
    body = exp.population.params[:, exp.population.layout.part("body")]
    assert consensus(exp, "body") == pytest.approx(consensus_distance(body), rel=1e-12)
    assert consensus(exp, "body") > 0
