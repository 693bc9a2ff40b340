"""The personalized baselines on the algorithm interface: Ditto's limits, FedRoD's two heads, and
for both: the gossiped part, exact resume, and the numbers of one process on two ranks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import repgossip
from repgossip.algorithms.fedrod import LOG_PRIOR
from repgossip.cli import main
from repgossip.evaluation import evaluate
from repgossip.metrics import consensus_distance
from repgossip.training import train_phase

from launch import assert_same_numbers, summary, torchrun

FMNIST = {"workers": 6, "samples_per_worker": 40, "rounds": 2, "head_epochs": 1, "lr": 0.05}


def run(**keys):
    return repgossip.run({**FMNIST, **keys})


def test_ditto_with_lambda_0_is_local_training_bit_for_bit():
    ditto = run(algorithm="ditto", ditto_lambda=0.0)
    local = run(algorithm="local")
    assert ditto.summary["per_worker_test_loss"] == local.summary["per_worker_test_loss"]
    assert ditto.summary["per_worker_acc"] == local.summary["per_worker_acc"]
    assert ditto.summary["bytes_sent"] > 0  # the global model still travels


def test_ditto_with_a_large_lambda_ties_the_personal_model_to_the_global_one():
    """At lambda = 1/lr each personal step lands one plain SGD step from the global model, so the
    personal model's loss tracks the global (D-PSGD) model's; at lambda = 0 it does not."""

    def gaps(strength: float) -> tuple[float, float]:
        pop = run(algorithm="ditto", ditto_lambda=strength, lr=0.01, rounds=3).experiment.population
        distance = float(((pop.rows["personal"] - pop.params) ** 2).sum(1).mean())
        personal, shared = evaluate(pop, "personal"), evaluate(pop, "params")
        return distance, float(abs(personal["test_loss"] - shared["test_loss"]).mean())

    (far, loss_far), (near, loss_near) = gaps(0.0), gaps(100.0)
    assert near < far / 5 and loss_near < loss_far / 3


def test_fedrod_gossips_the_body_and_generic_head_and_keeps_personal_heads():
    result = run(algorithm="fedrod", topology="complete")
    exp = result.experiment
    layout, params = exp.population.layout, exp.population.params
    shared, personal = layout.part("body+head.generic"), layout.part("head.personal")
    assert shared.stop == personal.start and personal.stop == layout.size
    assert consensus_distance(params[:, shared]) < 1e-12  # complete graph: one generic model
    assert consensus_distance(params[:, personal]) > 0
    assert result.summary["params_shared"] == shared.stop
    per_round = 2 * exp.schedule.base_graph.num_edges * shared.stop * 4
    assert result.summary["bytes_sent"] == 2 * per_round


def test_fedrod_starts_from_the_generic_prediction_and_knows_each_workers_classes():
    from repgossip.config import build_config
    from repgossip.experiment import build_experiment

    pop = build_experiment(build_config({**FMNIST, "algorithm": "fedrod"})).population
    assert bool((pop.params[:, pop.layout.part("head.personal")] == 0).all())
    for local, labels in enumerate(pop.train_y):
        seen = torch.bincount(labels, minlength=10) > 0
        prior = pop.rows[LOG_PRIOR][local]
        frequency = torch.bincount(labels, minlength=10)[seen] / len(labels)
        torch.testing.assert_close(prior[seen], frequency.float().log())
        assert bool((prior[~seen] < prior[seen].min() - 10).all())


def test_fedrod_refuses_a_regression_task():
    with pytest.raises(repgossip.UsageError, match="classification"):
        repgossip.run({"algorithm": "fedrod", "dataset": "synthetic", "workers": 4, "rounds": 1})


@pytest.mark.parametrize("algorithm", ["ditto", "fedrod"])
def test_resumes_exactly(tmp_path, algorithm):
    sets = ["dataset=fmnist", f"algorithm={algorithm}", "workers=4", "samples_per_worker=30",
            "head_epochs=1", "checkpoint_every=1"]  # fmt: skip
    assert main(["run", "--quiet", "--set", *sets, "rounds=3", "--out", str(tmp_path / "a")]) == 0
    assert main(["run", "--quiet", "--set", *sets, "rounds=1", "--out", str(tmp_path / "b")]) == 0
    assert (
        main(["run", "--quiet", "--set", "rounds=3", "--out", str(tmp_path / "b"), "--resume"]) == 0
    )
    assert summary(tmp_path / "a") == summary(tmp_path / "b")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ditto", "fedrod"])
def test_two_ranks_give_the_numbers_of_one_process(tmp_path, algorithm):
    sets = [f"algorithm={algorithm}", "workers=5", "samples_per_worker=30", "rounds=2",
            "head_epochs=1"]  # fmt: skip
    assert main(["run", "--quiet", "--set", *sets, "--out", str(tmp_path / "sim")]) == 0
    done = torchrun(2, tmp_path / "dist", *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_numbers(summary(tmp_path / "dist"), summary(tmp_path / "sim"))


def masked_counts(pop):
    from repgossip.algorithms.dispfl import MASK, _masked_entries

    mask = pop.rows[MASK]
    return torch.stack([mask[:, e.start : e.stop].sum(1) for e in _masked_entries(pop)], 1)


def test_dispfl_masks_keep_their_density_evolve_and_pruned_weights_stay_zero():
    from repgossip.config import build_config
    from repgossip.experiment import build_experiment
    from repgossip.rounds import train_round

    exp = build_experiment(build_config({**FMNIST, "algorithm": "dispfl", "rounds": 3}))
    pop = exp.population
    before, counts = pop.rows["mask"].clone(), masked_counts(pop)
    sizes = torch.tensor([e.stop - e.start for e in pop.layout.entries if len(e.shape) > 1])
    assert torch.equal(counts, (0.5 * sizes.float()).round().expand_as(counts))
    assert not torch.equal(before[0], before[1])  # personal masks
    sent = train_round(exp, 0)
    assert torch.equal(masked_counts(pop), counts)  # prune and regrow the same number
    assert not torch.equal(pop.rows["mask"], before)  # ...of other weights
    assert bool((pop.params[pop.rows["mask"] == 0] == 0).all())
    dense = 2 * exp.schedule.base_graph.num_edges * pop.layout.size * 4
    expected = (4 * before.sum(1).double() + math.ceil(pop.layout.size / 8)) @ torch.from_numpy(
        exp.schedule.base_graph.degrees
    ).double()
    assert sent == int(expected) < dense  # what round 0 sent: masks before evolution


def test_dispfl_resumes_exactly(tmp_path, monkeypatch):
    """Stopped at round 2 of 3 (its schedule is made for 3 rounds from the start), then resumed."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # for stoppers:at_round_2
    sets = ["dataset=fmnist", "algorithm=dispfl", "workers=4", "samples_per_worker=30",
            "head_epochs=1", "checkpoint_every=1", "rounds=3"]  # fmt: skip
    assert main(["run", "--quiet", "--set", *sets, "--out", str(tmp_path / "a")]) == 0
    stopped = ["--callback", "stoppers:at_round_2", "--out", str(tmp_path / "b")]
    assert main(["run", "--quiet", "--set", *sets, *stopped]) == 0
    assert main(["run", "--quiet", "--out", str(tmp_path / "b"), "--resume"]) == 0
    assert summary(tmp_path / "a") == summary(tmp_path / "b")


@pytest.mark.slow
def test_dispfl_gives_the_numbers_of_one_process_on_two_ranks(tmp_path):
    test_two_ranks_give_the_numbers_of_one_process(tmp_path, "dispfl")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fedrod_interleaved_is_a_generic_step_then_a_personal_head_step_on_each_batch(momentum):
    """Against the peers' loop (PFLlib's clientrod): two torch.optim.SGD, and on every batch one
    step of the generic model on the balanced softmax, then one of the personal head on the same
    forward's detached features and generic logits."""
    import copy

    import torch.nn.functional as F

    from repgossip.config import build_config
    from repgossip.experiment import build_experiment
    from repgossip.rounds import _loss_hook
    from repgossip.streams import worker_generator
    from repgossip.training import batch_schedule, budget, step_rule

    cfg = build_config({**FMNIST, "algorithm": "fedrod", "samples_per_worker": 37,
                        "momentum": momentum})  # fmt: skip
    assert cfg.param("fedrod_schedule") == "interleaved"
    exp = build_experiment(cfg)
    pop, algorithm = exp.population, exp.algorithm
    model = copy.deepcopy(pop.model)  # every worker starts from it
    x, y, prior = pop.train_x[0], pop.train_y[0], pop.rows[LOG_PRIOR][0]
    generic = [p for n, p in model.named_parameters() if not n.startswith("head.personal")]
    rule = step_rule(cfg, "all", 0)
    sgd = {"momentum": rule.momentum, "lr": rule.lr}
    optimizers = (torch.optim.SGD(generic, **sgd),
                  torch.optim.SGD(model.head.personal.parameters(), **sgd))  # fmt: skip
    for index, phase in enumerate(algorithm.phases):
        train_phase(pop, phase.part, budget(cfg, phase.budget), rule, 0, index,
                  loss=_loss_hook(algorithm, phase, pop))  # fmt: skip
        gen = worker_generator(cfg.seed, 0, 0, index)
        for idx in batch_schedule(len(y), cfg.batch_size, budget(cfg, phase.budget), gen).batches():
            features = model.body(x[idx])
            out_g = model.head.generic(features)
            optimizers[0].zero_grad()
            F.cross_entropy(out_g + prior, y[idx]).backward()
            optimizers[0].step()
            out_p = model.head.personal(features.detach())
            optimizers[1].zero_grad()
            F.cross_entropy(out_g.detach() + out_p, y[idx]).backward()
            optimizers[1].step()
    expected = pop.layout.flatten(model.parameters())
    torch.testing.assert_close(pop.params[0], expected, rtol=1e-5, atol=1e-6)


def test_fedrod_sequential_trains_the_personal_head_after_the_generic_model():
    from repgossip.config import build_config
    from repgossip.experiment import build_experiment

    cfg = build_config({**FMNIST, "algorithm": "fedrod", "fedrod_schedule": "sequential"})
    phases = build_experiment(cfg).algorithm.phases
    assert [p.part for p in phases] == ["body+head.generic"] * 2 + ["head.personal"]
    with pytest.raises(repgossip.UsageError, match="a key of algorithm 'fedrod', not of 'deprl'"):
        build_config({**FMNIST, "fedrod_schedule": "sequential"})  # no part in deprl: refused
    with pytest.raises(repgossip.UsageError, match="valid: interleaved, sequential"):
        build_config({**FMNIST, "algorithm": "fedrod", "fedrod_schedule": "joint"})
    both = {
        s: run(algorithm="fedrod", fedrod_schedule=s).summary["per_worker_test_loss"]
        for s in ("interleaved", "sequential")
    }
    assert both["interleaved"] != both["sequential"]


def test_a_fedrod_subclass_keeps_the_phases_it_declares_and_a_bad_schedule_is_refused():
    """Before: the schedule overwrote a subclass's own phases, and any word passed for a
    non-FedRoD algorithm was recorded as none."""
    from repgossip.algorithms.base import Phase
    from repgossip.algorithms.fedrod import GENERIC_MODEL, FedRoD
    from repgossip.config import build_config

    class GenericOnly(FedRoD):
        phases = (Phase(GENERIC_MODEL, "head"), Phase(GENERIC_MODEL, "body"))

    pop = repgossip.run({**FMNIST, "rounds": 1}, algorithm=GenericOnly).experiment.population
    assert bool((pop.params[:, pop.layout.part("head.personal")] == 0).all())
    with pytest.raises(repgossip.UsageError, match="unknown fedrod_schedule 'bogus'"):
        build_config({"algorithm": "fedrod", "fedrod_schedule": "bogus"})


def test_dispfl_is_not_resumed_to_more_rounds_its_schedule_was_not_made_for(tmp_path, capsys):
    """Before: `--resume --set rounds=3` on a 2-round DisPFL run went on with a prune rate annealed
    over 3 rounds from round 2 on, numbers no uninterrupted run gives."""
    sets = ["dataset=fmnist", "algorithm=dispfl", "workers=4", "samples_per_worker=30",
            "head_epochs=1", "checkpoint_every=1"]  # fmt: skip
    out = tmp_path / "a"
    assert main(["run", "--quiet", "--set", *sets, "rounds=2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", "--quiet", "--set", "rounds=3", "--out", str(out), "--resume"]) == 2
    assert "'rounds' (2 -> 3)" in capsys.readouterr().err
