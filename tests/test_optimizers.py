"""The optimizers (sgd with Nesterov, adam, adamw), gradient clipping and the momentum policy.

Each must do torch.optim's arithmetic (a worker's run is what the user's own training loop with
torch.optim.Adam or clip_grad_norm_ would give), the same bits on the stacked path as worker by
worker, and keep its state (Adam's moments and step counts) across checkpoints and processes.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_cli import assert_one_line_error
from torch import nn

import repgossip
from repgossip.cli import main
from repgossip.layout import OPTIMIZER_STEPS, SECOND_MOMENT
from repgossip.models import SplitModel
from repgossip.population import Population
from repgossip.streams import worker_generator
from repgossip.training import (
    Budget,
    PhaseWork,
    StepRule,
    _apply,
    _keep,
    _slots,
    batch_schedule,
    clip_rows_,
    train_phase,
)

from launch import assert_same_numbers, summary, torchrun

SAMPLES, BATCH, SEED = 13, 4, 7
# "body" before "all": the body's tensors have taken more steps than the head's when both train
PHASES = (("all", Budget(epochs=2)), ("body", Budget(steps=3)), ("all", Budget(epochs=1)))
RULES = {
    "sgd-nesterov": StepRule(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": StepRule(lr=0.01, optimizer="adam", weight_decay=1e-3, betas=(0.8, 0.99)),
    "adamw": StepRule(lr=0.01, optimizer="adamw", weight_decay=0.1, eps=1e-6),
    "sgd-clip": StepRule(lr=0.05, momentum=0.9, clip_norm=0.5),
    "adam-clip": StepRule(lr=0.01, optimizer="adam", clip_norm=0.3),
}
SYNTHETIC = ["dataset=synthetic", "workers=6", "samples_per_worker=30", "head_steps=3"]


def small_mlp() -> SplitModel:
    body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6))
    return SplitModel(nn.Sequential(body, nn.ReLU()), nn.Linear(6, 3))


def one_worker(rule: StepRule) -> tuple[Population, SplitModel, torch.Tensor, torch.Tensor]:
    """A population of one worker of a small mlp, trained worker by worker, and its model."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    model = small_mlp()
    x, y = torch.randn(SAMPLES, 3, 4, generator=gen), torch.randint(0, 3, (SAMPLES,), generator=gen)
    pop = Population(model, [0], ([x], [y]), ([x], [y]), False, BATCH, SEED, torch.device("cpu"),
                     optimizer=rule.optimizer)  # fmt: skip
    pop.stack_model = pop.stack_head = False
    return pop, model, x, y


def torch_optimizer(rule: StepRule, params) -> torch.optim.Optimizer:
    """What a user would write for `rule`."""
    if rule.optimizer == "sgd":
        return torch.optim.SGD(params, lr=rule.lr, momentum=rule.momentum,
                               nesterov=rule.nesterov, weight_decay=rule.weight_decay)  # fmt: skip
    cls = torch.optim.Adam if rule.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=rule.lr, betas=rule.betas, eps=rule.eps, weight_decay=rule.weight_decay)


def torch_round(model, optimizer, x, y, rule: StepRule, round_index: int) -> None:
    """The phases of one round as a user's loop: one optimizer over every parameter (frozen ones
    get no gradient and keep their state), clip_grad_norm_ before each step when asked."""
    for phase, (part, budget) in enumerate(PHASES):
        for name, param in model.named_parameters():
            param.requires_grad_(part == "all" or name.startswith(part + "."))
        gen = worker_generator(SEED, 0, round_index, phase)
        for idx in batch_schedule(SAMPLES, BATCH, budget, gen).batches():
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            if rule.clip_norm is not None:
                trained = [p for p in model.parameters() if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(trained, rule.clip_norm)
            optimizer.step()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", list(RULES))
def test_each_optimizer_gives_torch_optims_bits_on_one_worker(name):
    rule = RULES[name]
    pop, model, x, y = one_worker(rule)
    reference = copy.deepcopy(model)
    optimizer = torch_optimizer(rule, reference.parameters())
    for r in range(2):
        for phase, (part, budget) in enumerate(PHASES):
            train_phase(pop, part, budget, rule, r, phase)
        torch_round(reference, optimizer, x, y, rule, r)
        assert torch.equal(pop.params[0], flat(reference)), f"round {r}"
    if rule.adam:  # the state too: first moment in the momentum row, the step count per tensor
        states = [optimizer.state[p] for p in reference.parameters()]
        assert torch.equal(pop.momentum[0], torch.cat([s["exp_avg"].reshape(-1) for s in states]))
        steps = [int(s["step"]) for s in states]
        assert pop.rows[OPTIMIZER_STEPS][0].tolist() == steps
        assert steps[0] > steps[-1]  # the body took the extra steps of the body phase


def test_reset_momentum_equals_a_fresh_adam_each_round():
    rule = RULES["adam"]
    pop, model, x, y = one_worker(rule)
    reference = copy.deepcopy(model)
    for r in range(2):
        pop.reset_momentum()
        for phase, (part, budget) in enumerate(PHASES):
            train_phase(pop, part, budget, rule, r, phase)
        torch_round(reference, torch_optimizer(rule, reference.parameters()), x, y, rule, r)
    assert torch.equal(pop.params[0], flat(reference))


def random_population(rule: StepRule, workers: int = 5) -> Population:
    """Workers of a small mlp with random parameters and optimizer state, Adam's step counts
    differing between workers and between the tensors of one worker."""
    gen = torch.Generator().manual_seed(3)
    data = ([torch.randn(8, 3, 4)] * workers, [torch.zeros(8, dtype=torch.int64)] * workers)
    pop = Population(small_mlp(), list(range(workers)), data, data, False, 4, 0,
                     torch.device("cpu"), optimizer=rule.optimizer)  # fmt: skip
    for name, rows in pop.rows.items():
        if name == OPTIMIZER_STEPS:
            rows.copy_(torch.randint(0, 5, rows.shape, generator=gen))
        elif rows.is_floating_point():
            rows.copy_(torch.randn(rows.shape, generator=gen))
    if SECOND_MOMENT in pop.rows:
        pop.rows[SECOND_MOMENT].abs_()
    return pop


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("part", ["all", "body", "head"])
def test_the_update_rule_gives_the_same_bits_stacked_and_worker_by_worker(name, part):
    rule, steps = RULES[name], 3
    work = PhaseWork(part, "params", rule, None)
    one_by_one, stacked = random_population(rule), random_population(rule)
    cols = one_by_one.layout.part(part)
    grads = torch.randn(steps, len(stacked), cols.stop - cols.start) * 3  # some rows get clipped
    for local in range(len(one_by_one)):
        slots = _slots(one_by_one, work, local, cols, steps)
        segment = one_by_one.params[local, cols]
        for step in range(steps):
            _apply(segment.view(1, -1), grads[step, local : local + 1].clone(), slots, rule, step)
        _keep(one_by_one, work, local, cols, slots)
    rows = torch.arange(len(stacked))
    slots = _slots(stacked, work, rows, cols, steps)
    segment = stacked.params[rows, cols]
    for step in range(steps):
        _apply(segment, grads[step].clone(), slots, rule, step)
    stacked.params[rows, cols] = segment
    _keep(stacked, work, rows, cols, slots)
    for key in one_by_one.rows:
        assert torch.equal(one_by_one.rows[key], stacked.rows[key]), key


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd-nesterov", "adam-clip"])
def test_stacked_training_matches_the_worker_loop_with_each_optimizer(name):
    """Whole phases on both paths (stacked forward and backward round the gradient differently,
    so to float rounding), and the state written back: Adam's step counts exactly."""
    rule = RULES[name]
    fast, plain = random_population(rule, 6), random_population(rule, 6)
    gen = torch.Generator().manual_seed(5)
    for pop in (fast, plain):
        pop.train_x = [torch.randn(8, 3, 4, generator=gen) for _ in range(6)]
        pop.train_y = [torch.randint(0, 3, (8,), generator=gen) for _ in range(6)]
        gen.manual_seed(5)
    plain.stack_model = plain.stack_head = False
    assert fast.stack_model
    for pop in (fast, plain):
        for phase, (part, budget) in enumerate(PHASES):
            train_phase(pop, part, budget, rule, 0, phase, active={0, 2, 3, 5})
    for key, rows in fast.rows.items():
        torch.testing.assert_close(rows, plain.rows[key], rtol=1e-4, atol=1e-5, msg=key)
    if rule.adam:
        assert torch.equal(fast.rows[OPTIMIZER_STEPS], plain.rows[OPTIMIZER_STEPS])


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e4])
def test_clipping_gives_clip_grad_norm_s_bits_for_each_worker(max_norm):
    model = small_mlp()
    gen = torch.Generator().manual_seed(2)
    grads = torch.randn(4, sum(p.numel() for p in model.parameters()), generator=gen)
    spans, start = [], 0
    for p in model.parameters():
        spans.append((start, start + p.numel()))
        start += p.numel()
    clipped = grads.clone()
    clip_rows_(clipped, tuple(spans), max_norm)
    for w in range(len(grads)):
        for p, (a, b) in zip(model.parameters(), spans, strict=True):
            p.grad = grads[w, a:b].view(p.shape).clone()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        assert torch.equal(clipped[w], torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.equal(clipped, grads) == (max_norm == 1e4)  # only a norm above max_norm scales


def test_adam_state_is_checkpointed_and_a_resumed_run_gives_the_uninterrupted_numbers(tmp_path):
    # momentum kept across rounds: the state a checkpoint must carry
    sets = [*SYNTHETIC, "optimizer=adam", "lr=0.01", "clip_norm=5", "checkpoint_every=1",
            "reset_momentum=false"]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["run", "--quiet", "--set", *sets, "rounds=3", "--out", str(whole)]) == 0
    assert main(["run", "--quiet", "--set", *sets, "rounds=1", "--out", str(part)]) == 0
    saved = torch.load(part / "checkpoint.pt", weights_only=True)["rows"]
    assert {SECOND_MOMENT, OPTIMIZER_STEPS} <= set(saved)
    assert main(["run", "--quiet", "--set", "rounds=3", "--out", str(part), "--resume"]) == 0
    assert summary(part) == summary(whole)
    lost = tmp_path / "lost"  # the same, but Adam's state lost at the checkpoint: other numbers
    assert main(["run", "--quiet", "--set", *sets, "rounds=1", "--out", str(lost)]) == 0
    state = torch.load(lost / "checkpoint.pt", weights_only=True)
    state["rows"][OPTIMIZER_STEPS].zero_()
    from repgossip.runfolder import checkpoint_bytes

    (lost / "checkpoint.pt").write_bytes(checkpoint_bytes(state))
    assert main(["run", "--quiet", "--set", "rounds=3", "--out", str(lost), "--resume"]) == 0
    assert summary(lost) != summary(whole)


def test_the_optimizer_keys_reach_the_update():
    base = {"dataset": "synthetic", "workers": 4, "samples_per_worker": 20, "rounds": 2}
    results = {}
    for name, extra in {
        "sgd": {}, "nesterov": {"momentum": 0.9, "nesterov": True},
        "momentum": {"momentum": 0.9}, "adam": {"optimizer": "adam"},
        "adamw": {"optimizer": "adamw", "weight_decay": 0.5}, "clip": {"clip_norm": 0.01},
        "adam-beta": {"optimizer": "adam", "beta1": 0.5},
    }.items():  # fmt: skip
        results[name] = json.dumps(repgossip.run(base | extra).summary["per_worker_test_loss"])
    assert len(set(results.values())) == len(results)


def test_reset_momentum_resets_adam_state_each_round():
    base = {"dataset": "synthetic", "workers": 4, "samples_per_worker": 20, "rounds": 2,
            "optimizer": "adam"}  # fmt: skip
    kept = repgossip.run(base | {"reset_momentum": False}).experiment.population
    reset = repgossip.run(base).experiment.population  # the default: reset each round
    assert not torch.equal(kept.params, reset.params)
    per_round = reset.rows[OPTIMIZER_STEPS]  # one round's steps: counted from zero again
    assert (kept.rows[OPTIMIZER_STEPS] == 2 * per_round).all() and per_round.min() > 0


@pytest.mark.slow
def test_adam_state_moves_between_one_process_and_two_ranks_exactly(tmp_path):
    """A checkpoint of one process resumed on two ranks (each gets its workers' Adam rows), and
    theirs resumed in one process again, give the uninterrupted numbers."""
    sets = [*SYNTHETIC, "optimizer=adamw", "weight_decay=0.01", "checkpoint_every=1"]
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert main(["run", "--quiet", "--set", *sets, "rounds=3", "--out", str(whole)]) == 0
    assert main(["run", "--quiet", "--set", *sets, "rounds=1", "--out", str(out)]) == 0
    done = torchrun(2, out, "rounds=2", resume=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(["run", "--quiet", "--set", "rounds=3", "--out", str(out), "--resume"]) == 0
    assert_same_numbers(summary(out), summary(whole))


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (["optimizer=rmsprop"], ["optimizer", "'rmsprop'", "sgd, adam, adamw"]),
        (["nesterov=maybe"], ["nesterov", "'maybe'", "true or false"]),
        (["nesterov=true"], ["nesterov needs momentum > 0", "momentum=0.0"]),
        (["momentum=0.9", "optimizer=adam"], ["momentum", "0.9", "optimizer=sgd", "beta1"]),
        (["nesterov=true", "optimizer=adamw"], ["nesterov", "optimizer=sgd"]),
        (["beta1=0.9"], ["beta1", "0.9", "optimizer 'sgd'", "adam or adamw"]),
        (["eps=1e-8"], ["eps", "optimizer 'sgd'"]),
        (["optimizer=adam", "beta1=1"], ["beta1", "[0.0, 1.0)", "1"]),
        (["optimizer=adam", "beta2=-0.1"], ["beta2", "[0.0, 1.0)", "-0.1"]),
        (["optimizer=adam", "beta2=abc"], ["beta2", "'abc'", "a number"]),
        (["optimizer=adam", "eps=-1"], ["eps", ">= 0", "-1"]),
        (["clip_norm=0"], ["clip_norm", "> 0", "0"]),
        (["clip_norm=nan"], ["clip_norm", "finite", "nan"]),
        (["clip_norm=-3"], ["clip_norm", "> 0", "-3"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) and "=" in v[0] else None,
)
def test_a_bad_optimizer_key_is_one_line_and_exit_2(sets, needles, capsys, tmp_path):
    code = main(
        ["run", "--quiet", "--set", "dataset=synthetic", *sets, "--out", str(tmp_path / "o")]
    )
    assert_one_line_error(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "o").exists()


def test_optimizer_keys_resolve_to_what_runs():
    """config.yaml states what ran: SGD's momentum, or Adam's coefficients (torch's defaults)."""
    from repgossip.config import build_config

    sgd = build_config({"algorithm": "dfedavgm"})
    assert (sgd.optimizer, sgd.momentum, sgd.beta1, sgd.beta2, sgd.eps) == (
        "sgd",
        0.9,
        None,
        None,
        None,
    )
    adam = build_config({"algorithm": "dfedavgm", "optimizer": "adam", "beta2": "0.99"})
    assert (adam.momentum, adam.beta1, adam.beta2, adam.eps) == (None, 0.9, 0.99, 1e-8)
    assert build_config({"optimizer": "adam", "momentum": 0}).momentum is None


def test_a_checkpoint_written_before_the_optimizer_keys_existed_resumes_exactly(tmp_path):
    """A run folder of the previous version has no optimizer, loss or metric keys in its
    config.yaml or checkpoint: each counts as its default (what that version ran), so it resumes."""
    from repgossip.runfolder import checkpoint_bytes

    new = ("optimizer", "nesterov", "beta1", "beta2", "eps", "clip_norm", "loss", "metric")
    sets = [*SYNTHETIC, "checkpoint_every=1"]
    whole, old = tmp_path / "whole", tmp_path / "old"
    assert main(["run", "--quiet", "--set", *sets, "rounds=2", "--out", str(whole)]) == 0
    assert main(["run", "--quiet", "--set", *sets, "rounds=1", "--out", str(old)]) == 0
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    lines = state["config"].splitlines(keepends=True)
    state["config"] = "".join(line for line in lines if line.split(":")[0] not in new)
    (old / "checkpoint.pt").write_bytes(checkpoint_bytes(state))
    (old / "config.yaml").write_text(state["config"])
    assert main(["run", "--quiet", "--set", "rounds=2", "--out", str(old), "--resume"]) == 0
    assert summary(old) == summary(whole)
