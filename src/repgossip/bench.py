"""`repgossip bench`: what a training round costs, against what its arithmetic costs on this machine.

- `s_per_round`: the median over measured rounds of `train_round` (local phases and gossip), after
  one warm-up round; no set-up, no evaluation.
- `bound_s`: the compute bound of the same round: one model of the same architecture pushed with
  big batches through the same samples. One forward and backward pass over the samples of every
  phase that trains the body (or everything), one forward pass over every worker's samples for a
  head phase (the body is frozen there, so its features need computing once). Every candidate
  batch size, with one intra-op thread and with all of them, is timed at every measured round; the
  bound is the fastest candidate's median, so it is as tight as we can make it.
- `ratio` = s_per_round / bound_s: 1.0 means a round costs exactly its arithmetic.

Rounds, bound passes and reference rounds are measured interleaved, so that load from other
processes on a shared machine falls on all of them alike; medians drop the disturbed samples.
"""

from __future__ import annotations

import copy
import functools
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from repgossip.algorithms import Phase
from repgossip.errors import UsageError
from repgossip.experiment import Experiment, build_experiment
from repgossip.models import SplitModel
from repgossip.rounds import train_round
from repgossip.schema import Config
from repgossip.threads import single_threaded
from repgossip.training import step_rule

BOUND_BATCHES = (128, 512)  # "big": 8x and 32x the usual local batch


@dataclass(frozen=True)
class BoundSetting:
    batch: int
    threads: int
    # images stored channels last (NHWC): on the Xeon this project is measured on, the cnn's
    # batch-128 steps take 0.45 s instead of 0.62 (benchmarks/kernels.py --channels-last), while
    # vgg11's are slower; a bound that did not try it was not the tightest
    channels_last: bool = False


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of `fn()`, GPU work included."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- work of a round


def phase_samples(exp: Experiment, which: str) -> int:
    """Samples all workers push through local SGD in a phase whose budget keys are `which`."""
    epochs, steps = getattr(exp.cfg, f"{which}_epochs"), getattr(exp.cfg, f"{which}_steps")
    if epochs is not None:
        return epochs * sum(len(y) for y in exp.federation.train_y)
    return (steps or 0) * exp.cfg.batch_size * exp.cfg.workers


def samples_per_round(exp: Experiment) -> int:
    return sum(phase_samples(exp, p.budget) for p in exp.algorithm.phases)


class Bound:
    """One model of the experiment's architecture and all its training samples, in big batches."""

    def __init__(self, exp: Experiment) -> None:
        pop = exp.population
        self.exp = exp
        x, self.y = torch.cat(pop.train_x), torch.cat(pop.train_y)
        self.images = x.dim() == 4
        self.models = {False: copy.deepcopy(pop.model)}
        self.inputs = {False: x}
        if self.images:
            last = torch.channels_last
            # Module.to takes memory_format (torch docs) though its type stubs do not say so
            self.models[True] = copy.deepcopy(pop.model).to(memory_format=last)  # type: ignore[call-overload]
            self.inputs[True] = x.contiguous(memory_format=last)
        self.loss = nn.MSELoss() if pop.regression else nn.CrossEntropyLoss()
        self.lr = step_rule(exp.cfg, "body", 0).lr

    def round(self, setting: BoundSetting) -> None:
        with intra_op_threads(setting.threads):
            for phase in self.exp.algorithm.phases:
                self.phase(phase, setting)

    def phase(self, phase: Phase, setting: BoundSetting) -> None:
        """One phase's part of the bound: a head phase, the frozen body's forward pass over
        all samples; any other, forward, backward and update over its samples."""
        model, x = self.models[setting.channels_last], self.inputs[setting.channels_last]
        if phase.part == "head":
            self.forward_features(model, x, setting.batch)
        else:
            self.train(model, x, phase_samples(self.exp, phase.budget), setting.batch)

    @torch.no_grad()
    def forward_features(self, model: SplitModel, x: torch.Tensor, batch: int) -> None:
        """The frozen body's features; a user's model, whose head cannot be run alone, whole."""
        stage = "body" if model.separable else "full"
        for chunk in x.split(batch):
            model(chunk, stage=stage)

    def train(self, model: nn.Module, x: torch.Tensor, samples: int, batch: int) -> None:
        """Forward, backward and an SGD update over `samples` samples (cycling through the data)."""
        params: list[torch.Tensor] = list(model.parameters())
        for start in range(0, samples, batch):
            idx = torch.arange(start, min(start + batch, samples), device=self.y.device)
            idx %= len(self.y)
            grads = torch.autograd.grad(self.loss(model(x[idx]), self.y[idx]), params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-self.lr)

    def settings(self) -> list[BoundSetting]:
        """Candidate batch sizes, each with one intra-op thread and with all of them, and for
        images each in both memory layouts."""
        threads = sorted({1, torch.get_num_threads()})
        layouts = (False, True) if self.images else (False,)
        return [
            BoundSetting(b, t, last) for last in layouts for t in threads for b in BOUND_BATCHES
        ]


# ---------------------------------------------------------------- the measurement


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(
    cfg: Config, rounds_measured: int = 5, reference: bool = False, threads: int | None = None
) -> dict[str, Any]:
    """Build `cfg`'s experiment and time its rounds, its compute bound and (optionally) the
    straightforward reference, interleaved; see the module docstring for the keys. `threads` sets
    torch's intra-op threads for the whole measurement (default: torch's own choice)."""
    if rounds_measured < 1:
        raise UsageError(f"--rounds-measured must be >= 1, got {rounds_measured}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if threads is not None:
        torch.set_num_threads(threads)
    if cfg.engine == "dist":
        return measure_distributed(cfg, rounds_measured)
    exp = build_experiment(cfg)
    run_round(exp, 0)  # warm-up: first-call allocations, kernel selection
    rss = peak_rss_mb()
    rounds, bounds, refs = _interleaved(exp, rounds_measured, reference)
    best = min(bounds, key=lambda s: statistics.median(bounds[s]))
    return report(exp, rounds, bounds[best], refs, best, rss)


def measure_distributed(cfg: Config, rounds_measured: int) -> dict[str, Any]:
    """Seconds per round of `engine=dist` on this rank's group, and the share of each round that
    ranks spend waiting for gossip messages (which includes waiting for a slower rank), averaged
    over ranks. Rounds start and end at a barrier, so every rank times the same round."""
    from repgossip.experiment import build_engine

    engine = build_engine(cfg)
    try:
        exp = build_experiment(cfg, engine)
        run_round(exp, 0)  # warm-up
        rounds, shares = [], []
        for r in range(1, rounds_measured + 1):
            engine.all_sum(torch.zeros(1))  # barrier
            comm_before = engine.comm_s
            seconds = timed(functools.partial(_round_and_barrier, exp, engine, r))
            share = torch.tensor([(engine.comm_s - comm_before) / seconds])
            rounds.append(seconds)
            shares.append(float(engine.all_sum(share)) / engine.world)
        return {
            "engine": "dist",
            "ranks": engine.world,
            "s_per_round": statistics.median(rounds),
            "comm_share": statistics.median(shares),
            "samples_per_s": samples_per_round(exp) / statistics.median(rounds),
            "rounds_measured": rounds_measured,
            "round_s": [round(t, 4) for t in rounds],
            "threads": torch.get_num_threads(),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "config": cfg.to_dict(),
        }
    finally:
        engine.close()


def run_round(exp: Experiment, round_index: int) -> None:
    """One training round as a run trains it: every kernel single-threaded, the workers side by
    side on the pool's threads (the count torch had when the experiment was built)."""
    with single_threaded():
        train_round(exp, round_index)


def _round_and_barrier(exp: Experiment, engine: Any, round_index: int) -> None:
    run_round(exp, round_index)
    engine.all_sum(torch.zeros(1))  # every rank ends the round together


def _interleaved(
    exp: Experiment, rounds_measured: int, reference: bool
) -> tuple[list[float], dict[BoundSetting, list[float]], list[float]]:
    """Seconds of each measured round, of each bound candidate and of each reference round, taken
    in turn so that a disturbance from outside hits them all alike."""
    bound = Bound(exp)
    bounds: dict[BoundSetting, list[float]] = {s: [] for s in bound.settings()}
    for setting in bounds:
        bound.round(setting)  # warm-up
    ref = _reference(exp) if reference else None
    rounds: list[float] = []
    refs: list[float] = []
    for r in range(1, rounds_measured + 1):
        rounds.append(timed(functools.partial(run_round, exp, r)))
        for setting, seconds in bounds.items():
            seconds.append(timed(functools.partial(bound.round, setting)))
        if ref is not None:
            refs.append(timed(functools.partial(ref.train_round, r)))
    return rounds, bounds, refs


def _reference(exp: Experiment):
    """The straightforward simulator on the same experiment, after its own warm-up round."""
    from repgossip.reference import ReferenceSimulation

    ref = ReferenceSimulation(exp)
    ref.train_round(0)
    return ref


def data_bytes(exp: Experiment) -> int:
    """Bytes of this process's workers' train and test tensors."""
    pop = exp.population
    tensors = (t for ts in (pop.train_x, pop.train_y, pop.test_x, pop.test_y) for t in ts)
    return sum(t.numel() * t.element_size() for t in tensors)


def report(
    exp: Experiment,
    rounds: list[float],
    bounds: list[float],
    refs: list[float],
    setting: BoundSetting,
    rss: float,
) -> dict[str, Any]:
    s_per_round, bound_s = statistics.median(rounds), statistics.median(bounds)
    result: dict[str, Any] = {
        "s_per_round": s_per_round,
        "bound_s": bound_s,
        "ratio": s_per_round / bound_s,
        "samples_per_s": samples_per_round(exp) / s_per_round,
        "peak_rss_mb": round(rss, 1),
        "model_params": exp.population.layout.size,
        "train_samples": sum(len(y) for y in exp.population.train_y),
        "data_mb": round(data_bytes(exp) / 2**20, 4),
        "rounds_measured": len(rounds),
        "round_s": [round(t, 4) for t in rounds],
        "bound_round_s": [round(t, 4) for t in bounds],
        "bound_batch": setting.batch,
        "bound_threads": setting.threads,
        "bound_layout": "channels_last" if setting.channels_last else "contiguous",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(exp.population.device),
    }
    if refs:
        result["reference_s_per_round"] = statistics.median(refs)
        result["speedup"] = result["reference_s_per_round"] / s_per_round
        result["reference_round_s"] = [round(t, 4) for t in refs]
    result["config"] = exp.cfg.to_dict()
    return result
