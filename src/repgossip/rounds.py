"""One round of an experiment (`train_round`: the algorithm's phases, its communication, its
end-of-round hook) and what an evaluation measures on every rank (`evaluate`: losses, accuracy,
consensus distance, the task's own metrics), with the divergence checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from repgossip import evaluation
from repgossip.algorithms import Algorithm, RoundContext
from repgossip.errors import DivergenceError, UsageError
from repgossip.experiment import Experiment
from repgossip.layout import row_key
from repgossip.metrics import accuracy_summary, squared_deviations
from repgossip.objectives import check_finite_metric
from repgossip.population import Population
from repgossip.training import budget, step_rule, train_phase


def train_round(exp: Experiment, round_index: int) -> int:
    """One round of the algorithm on this process's workers; returns the bytes sent by all."""
    pop, cfg, algorithm = exp.population, exp.cfg, exp.algorithm
    plan = exp.schedule.round_plan(round_index)
    active = None if plan.active.all() else set(np.flatnonzero(plan.active).tolist())
    ctx = RoundContext(pop, exp.engine, plan, round_index, cfg)
    first = algorithm.communicate_first if cfg.gossip_first is None else cfg.gossip_first
    if cfg.reset_momentum:
        pop.reset_momentum()
    sent = algorithm.communicate(ctx) if first else 0
    for phase_index, phase in enumerate(algorithm.phases):
        train_phase(
            pop,
            phase.part,
            budget(cfg, phase.budget),
            step_rule(cfg, phase.part, round_index),
            round_index,
            phase_index,
            active,
            model=phase.model,
            hook=_gradient_hook(algorithm, phase),
            loss=_loss_hook(algorithm, phase, pop),
        )
    if not first:
        sent = algorithm.communicate(ctx)
    algorithm.end_round(ctx)
    if isinstance(sent, bool) or not isinstance(sent, (int, np.integer)) or sent < 0:
        raise UsageError(
            f"algorithm '{cfg.algorithm}': communicate() must return the bytes sent as an int "
            f">= 0, got {sent!r}"
        )
    return int(sent)


def _gradient_hook(algorithm: Algorithm, phase: Any) -> Callable[..., None] | None:
    """The algorithm's gradient hook for `phase`, or None where it keeps the base class's no-op
    (so the plain SGD step pays for no extra call)."""
    if type(algorithm).adjust_gradient is Algorithm.adjust_gradient:
        return None
    return lambda grad, weights, rows: algorithm.adjust_gradient(phase, grad, weights, rows)


def _loss_hook(algorithm: Algorithm, phase: Any, pop: Population) -> Callable[..., Any] | None:
    """The algorithm's loss for `phase`, or None where it keeps the task's loss."""
    if type(algorithm).loss is Algorithm.loss:
        return None
    return lambda outputs, targets, rows: algorithm.loss(phase, outputs, targets, pop.loss, rows)


def check_finite(exp: Experiment, round_index: int) -> None:
    """Stop every process if any worker's parameters (of any model copy) became NaN or infinite."""
    pop = exp.population
    finite = torch.stack(
        [torch.isfinite(pop.rows[row_key(m, "params")]).all(dim=1) for m in pop.models]
    ).all(dim=0)
    bad = pop.worker_ids[int((~finite).nonzero()[0])] if not bool(finite.all()) else exp.cfg.workers
    worker = exp.engine.all_min(bad)
    if worker < exp.cfg.workers:
        raise DivergenceError(
            f"training diverged in round {round_index + 1}: worker {worker} has NaN or inf "
            "parameters; lower lr"
        )


def shared_mean(exp: Experiment, part: str) -> torch.Tensor:
    """The average over all workers of the `part` block, in float64, added in worker order."""
    return block_mean(exp, exp.population.params[:, exp.population.layout.part(part)])


def block_mean(exp: Experiment, block: torch.Tensor) -> torch.Tensor:
    """The average over all workers of a column block of this process's rows, in float64, added
    in worker order (so no process layout changes a bit)."""
    return exp.engine.ordered_sum(block) / exp.cfg.workers


def consensus(exp: Experiment, part: str, mean: torch.Tensor | None = None) -> float:
    """Mean over all workers of ||x_i - x_bar||^2 of the `part` block (`mean`, if the caller has
    it, is the average of every column, `block_mean(exp, params)`): each worker's term on its
    own, all of them summed exactly (math.fsum), so no process layout changes a bit."""
    columns = exp.population.layout.part(part)
    rows = exp.population.params[:, columns]
    average = shared_mean(exp, part) if mean is None else mean[columns]
    deviations = exp.engine.assemble(squared_deviations(rows, average).cpu())
    return math.fsum(deviations.tolist()) / exp.cfg.workers


def evaluate(exp: Experiment, round_done: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(the metrics.jsonl record's metric keys, per-worker lists for summary.json), on every rank.
    Accuracy is that of the algorithm's evaluated model copy (Ditto: the personal model)."""
    algorithm = exp.algorithm
    predict = (
        None if type(algorithm).predictions is Algorithm.predictions else algorithm.predictions
    )
    gossiped = algorithm.shared or "all"
    # every column's average, summed once: a part's average is its slice, bit for bit (the sum
    # runs column by column), so consensus, the average body and eval_model share one collective
    mean = block_mean(exp, exp.population.params)
    local = _evaluate_workers(exp, predict, mean)
    keys = ("test_loss", "train_loss", "correct", "count", "metric")
    names = [k for k in keys if len(local[k])]
    table = exp.engine.assemble(torch.from_numpy(np.stack([local[k] for k in names], axis=1)))
    stats = {k: table[:, i].numpy() for i, k in enumerate(names)}
    record = {
        "train_loss": float(stats["train_loss"].mean()),
        "test_loss_mean": float(stats["test_loss"].mean()),
        "consensus_dist": consensus(exp, gossiped, mean),
    }
    per_worker = {"per_worker_test_loss": stats["test_loss"].tolist()}
    if exp.federation.body_metrics is not None or exp.cfg.stationarity:
        mean_body = mean[exp.population.layout.part("body")]
    if exp.federation.body_metrics is not None:  # the task's own (synthetic: subspace_dist)
        record.update(exp.federation.body_metrics(mean_body, exp.population.model.body))
    if exp.cfg.stationarity:
        record.update(stationarity(exp, mean_body))
    if not exp.federation.regression:
        record.update(accuracy_summary(stats["correct"], stats["count"]))
        per_worker["per_worker_acc"] = (stats["correct"] / stats["count"]).tolist()
    _check_metrics(record, stats, round_done)
    if "metric" in stats:  # checked apart: a metric plug-in's NaN is no divergence
        check_finite_metric(str(exp.cfg.metric), stats["metric"].tolist())
        record["test_metric_mean"] = float(stats["metric"].mean())
        per_worker["per_worker_metric"] = stats["metric"].tolist()
    return record, per_worker


def _evaluate_workers(
    exp: Experiment, predict: evaluation.Predict | None, mean: torch.Tensor
) -> dict[str, np.ndarray]:
    """evaluation.evaluate of the algorithm's evaluated copy; under eval_model=average with every
    block its gossip mixes set to the plain average over all workers for the measurement (the
    shared part's parameters, sliced from `mean`, every column's average, and its BatchNorm
    statistics when `share_bn_stats` shares them), then put back bit for bit, so training goes
    on from where it was."""
    pop, model = exp.population, exp.algorithm.evaluated_model
    if exp.cfg.eval_model == "own":
        return evaluation.evaluate(pop, model, predict)
    shared = str(exp.algorithm.shared)  # checked at build: the default gossip of the main copy
    columns = pop.layout.part(shared)
    averaged = [(pop.params[:, columns], mean[columns])]
    averaged += [(block, block_mean(exp, block)) for block in pop.shared_buffer_blocks(shared)]
    own = [block.clone() for block, _ in averaged]
    try:
        for block, average in averaged:
            block.copy_(average.to(block.dtype).expand_as(block))
        return evaluation.evaluate(pop, model, predict)
    finally:
        for (block, _), kept in zip(averaged, own, strict=True):
            block.copy_(kept)


def stationarity(exp: Experiment, mean_body: torch.Tensor) -> dict[str, float]:
    """The quantity DePRL's theorem bounds, at the current parameters: `stationarity_body`, the
    squared norm of the average over workers of each worker's full-batch body gradient at the
    workers' average body, and `stationarity_head`, the mean over workers of each one's squared
    head gradient there. Sums run in worker order in float64, so no process layout or thread
    count changes a bit. `mean_body` is `shared_mean(exp, "body")`."""
    body_grads, head_norms = evaluation.gradients_at_mean_body(exp.population, mean_body)
    average = exp.engine.ordered_sum(body_grads) / exp.cfg.workers
    heads = exp.engine.assemble(head_norms.unsqueeze(1)).squeeze(1)
    return {
        "stationarity_body": float(average.square().sum()),
        "stationarity_head": math.fsum(heads.tolist()) / exp.cfg.workers,
    }


def _check_metrics(record: dict[str, float], stats: dict[str, np.ndarray], round_done: int) -> None:
    """Stop with the round and the first worker whose loss is NaN or infinite."""
    if all(np.isfinite(v) for v in record.values()):
        return
    losses = np.stack([stats["train_loss"], stats["test_loss"]])
    bad = np.flatnonzero(~np.isfinite(losses).all(axis=0))
    key = next(k for k, v in record.items() if not np.isfinite(v))
    who = (
        f"worker {int(bad[0])}'s loss is {losses[:, bad[0]].max()}"
        if len(bad)
        else f"{key} is not finite"
    )
    raise DivergenceError(f"training diverged by round {round_done}: {who}; lower lr")
