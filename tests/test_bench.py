"""`repgossip bench` and the fast local-training paths it measures.

No timing assertions: these machines are shared and noisy, so ratios are reported, not tested. What
is tested is that the fast paths compute the plain per-worker math, and that a worker's numbers do
not depend on the thread count or on which other workers a process holds (the distributed engine
relies on that for its bitwise equality with the one-process engine).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from repgossip.architectures import build_model
from repgossip.bench import intra_op_threads
from repgossip.cli import main
from repgossip.config import build_config
from repgossip.evaluation import evaluate
from repgossip.experiment import build_experiment
from repgossip.layout import MAIN_MODEL
from repgossip.population import Population
from repgossip.reference import ReferenceSimulation
from repgossip.rounds import train_round
from repgossip.training import Budget, StepRule, train_phase

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TINY = ["dataset=synthetic", "workers=4", "samples_per_worker=16", "batch_size=8"]
KEYS = {"s_per_round", "bound_s", "ratio", "samples_per_s", "peak_rss_mb", "config",
        "reference_s_per_round", "speedup", "model_params", "data_mb", "train_samples",
        "bound_layout"}  # fmt: skip
RULE = StepRule(lr=0.05, momentum=0.9, weight_decay=1e-3)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_bench_prints_one_json_object_with_the_keys():
    code, out, _ = run_cli("bench", "--set", *TINY, "--rounds-measured", "2", "--reference")
    assert code == 0
    (line,) = out.strip().splitlines()
    result = json.loads(line)
    assert set(result) >= KEYS
    assert result["ratio"] == pytest.approx(result["s_per_round"] / result["bound_s"])
    assert result["config"]["workers"] == 4 and result["rounds_measured"] == 2
    assert result["model_params"] == 20 * 2 + 2  # the linear model: body d x k, head k
    # 4 workers x (16 train + 16 test samples) x (20 features + 1 label) in float32
    assert result["data_mb"] == pytest.approx(4 * (16 + 16) * (20 + 1) * 4 / 2**20, abs=1e-4)
    assert all(result[k] > 0 for k in ("s_per_round", "bound_s", "samples_per_s", "speedup"))
    assert result["train_samples"] == 4 * 16 and result["bound_layout"] == "contiguous"


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed (make data)")
def test_the_bound_tries_both_memory_layouts_on_images_and_computes_the_same():
    from repgossip.bench import Bound

    cfg = build_config({}, {"dataset": "fmnist", "workers": "2", "samples_per_worker": "8"})
    bound = Bound(build_experiment(cfg))
    assert {s.channels_last for s in bound.settings()} == {False, True}
    with torch.no_grad():
        plain = bound.models[False](bound.inputs[False])
        last = bound.models[True](bound.inputs[True])
    torch.testing.assert_close(last, plain, rtol=1e-4, atol=1e-5)  # the same model, other kernels


@pytest.mark.parametrize(
    "argv",
    [["--rounds-measured", "0"], ["--threads", "0"], ["--set", "bogus=1"], ["--set", "workers=x"]],
)
def test_bench_bad_input_is_one_line_and_exit_2(argv):
    code, out, err = run_cli("bench", "--set", *TINY, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "error" in err


# ------------------------------------------------------------------ the fast paths


def population(sizes=(24, 24, 16, 24, 16), ids=None, seed=5):
    """A cnn population on random images; workers may hold different numbers of samples."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 1, 28, 28, generator=gen) for n in sizes]
    ys = [torch.randint(0, 10, (n,), generator=gen) for n in sizes]
    ids = list(range(len(sizes))) if ids is None else ids
    torch.manual_seed(1)
    model = build_model("cnn", (1, 28, 28), 10)
    data = ([xs[i] for i in ids], [ys[i] for i in ids])
    return Population(model, ids, data, data, False, 8, seed, torch.device("cpu"))


def a_round(pop: Population, r: int = 0) -> None:
    train_phase(pop, "head", Budget(epochs=2), RULE, r, 0)
    train_phase(pop, "body", Budget(steps=3), RULE, r, 1)


def test_batched_head_phase_equals_the_worker_by_worker_loop():
    fast, plain = population(), population()
    plain.stack_head = False  # forces the per-worker loop
    for r in range(2):  # the second round checks the momentum written back
        for pop in (fast, plain):
            a_round(pop, r)
    torch.testing.assert_close(fast.params, plain.params, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.momentum, plain.momentum, rtol=1e-5, atol=1e-6)


def test_a_workers_numbers_do_not_depend_on_threads_or_on_the_other_workers():
    with intra_op_threads(1):
        alone = population()
        a_round(alone)
    with intra_op_threads(2):
        shared = population()
        a_round(shared)
        part = population(ids=[1, 2, 4])
        a_round(part)
    assert torch.equal(shared.params, alone.params)
    assert torch.equal(part.params, alone.params[[1, 2, 4]])


def test_inactive_workers_keep_their_parameters_in_the_batched_head_phase():
    pop = population()
    before = pop.params.clone()
    train_phase(pop, "head", Budget(epochs=1), RULE, 0, 0, active={0, 3})
    changed = (pop.params != before).any(1).tolist()
    assert changed == [True, False, False, True, False]


def test_evaluate_matches_the_functional_forward():
    pop = population()
    a_round(pop)
    stats = evaluate(pop, MAIN_MODEL)
    for w in range(len(pop)):
        out = functional_call(pop.model, pop.layout.views(pop.params[w]), (pop.test_x[w],))
        assert stats["test_loss"][w] == pytest.approx(pop.loss(out, pop.test_y[w]).item(), 1e-5)
        assert stats["correct"][w] == int((out.argmax(1) == pop.test_y[w]).sum())


@pytest.mark.parametrize("algorithm", ["deprl", "dpsgd"])
def test_the_reference_simulator_does_the_same_math(algorithm):
    """The bench's speed-up is measured on identical work: same parameters after two rounds."""
    cfg = build_config(
        dict(s.split("=", 1) for s in TINY),
        {"algorithm": algorithm, "momentum": "0.5", "weight_decay": "0.001", "topology": "ring"},
    )
    exp = build_experiment(cfg)
    reference = ReferenceSimulation(exp)
    for r in range(2):
        train_round(exp, r)
        reference.train_round(r)
    torch.testing.assert_close(reference.flat_params(), exp.population.params, rtol=1e-4, atol=1e-6)
