"""Per-worker statistics of each worker's own model on its own train and test splits.

Models run in eval mode (BatchNorm on each worker's own running statistics, dropout off); a metric
plug-in (repgossip.objectives) scores each worker's test outputs. A small
stackable model evaluates a group of workers as one stacked forward; others worker by worker, side
by side on threads, as in training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from repgossip import stacked
from repgossip.layout import row_key

if TYPE_CHECKING:
    from repgossip.population import Population
    from repgossip.scratch import Scratch

# test loss, train loss, correct test predictions, test count, metric (NaN without a metric plug-in)
Stats = tuple[float, float, int, int, float]
METRIC_NAN = float("nan")
Predict = Callable[[torch.Tensor], torch.Tensor]  # model outputs -> class scores or values
# `eval_model`: each worker's own model, or its model with the gossiped part averaged over workers
EVAL_MODELS = ("own", "average")


def _identity(outputs: torch.Tensor) -> torch.Tensor:
    return outputs


@torch.no_grad()
def evaluate(pop: Population, model: str, predict: Predict | None = None) -> dict[str, np.ndarray]:
    """Arrays over this process's workers: test_loss, train_loss, correct (empty for regression),
    count and metric (empty without a metric plug-in), for model copy `model`, scoring
    `predict(outputs)` (default: the outputs)."""
    predict = predict or _identity
    everyone = list(range(len(pop)))
    with pop.pool.one_thread_per_worker() as threads:
        if pop.stack_model:
            sizes = lambda local: (len(pop.train_y[local]), len(pop.test_y[local]))  # noqa: E731
            groups = pop.pool.stacks(everyone, sizes, threads)
            done = pop.pool.each(
                groups, lambda _, members: _stack(pop, members, model, predict), threads
            )
            by_worker = {m: r for members, rs in zip(groups, done, strict=True)
                         for m, r in zip(members, rs, strict=True)}  # fmt: skip
            rows = [by_worker[local] for local in everyone]
        else:
            rows = pop.pool.each(
                everyone,
                lambda scratch, local: _worker(pop, scratch, local, model, predict),
                threads,
            )
    keys = ("test_loss", "train_loss", "correct", "count", "metric")
    stats = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
    if pop.regression:
        stats["correct"] = []
    if pop.metric_fn is None:
        stats["metric"] = []
    return {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}


def _stack(pop: Population, members: list[int], model: str, predict: Predict) -> list[Stats]:
    """_worker for workers of equal train and test sizes, as one stacked forward."""
    rows = torch.tensor(members, device=pop.params.device)
    params = pop.layout.views(pop.rows[row_key(model, "params")][rows])
    stats = []
    for xs, ys in ((pop.test_x, pop.test_y), (pop.train_x, pop.train_y)):
        x, y = torch.stack([xs[m] for m in members]), torch.stack([ys[m] for m in members])
        out = predict(stacked.model_forward(pop.model, params, x, "full"))
        stats.append((pop.mean_losses(out, y), out, y))
    (test_loss, test_out, test_y), (train_loss, _, _) = stats
    correct = [0] * len(members)
    if not pop.regression:
        correct = (test_out.argmax(-1) == test_y).sum(1).tolist()
    count = test_y.shape[1]
    metric = [_metric(pop, o, t) for o, t in zip(test_out, test_y, strict=True)]
    return [
        (test, train, c, count, m)
        for test, train, c, m in zip(
            test_loss.tolist(), train_loss.tolist(), correct, metric, strict=True
        )
    ]


def _metric(pop: Population, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The metric plug-in on one worker's test outputs, or NaN where there is none."""
    if pop.metric_fn is None:
        return METRIC_NAN
    return pop.metric_fn(outputs, targets)


def _worker(pop: Population, scratch: Scratch, local: int, model: str, predict: Predict) -> Stats:
    rows = pop.worker_rows(local, model)
    test_out = predict(scratch.outputs(rows, pop.test_x[local]))
    train_out = predict(scratch.outputs(rows, pop.train_x[local]))
    correct = 0 if pop.regression else int((test_out.argmax(1) == pop.test_y[local]).sum())
    return (
        pop.loss(test_out, pop.test_y[local]).item(),
        pop.loss(train_out, pop.train_y[local]).item(),
        correct,
        len(pop.test_y[local]),
        _metric(pop, test_out, pop.test_y[local]),
    )


def gradients_at_mean_body(
    pop: Population, mean_body: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(body gradients, squared head-gradient norms) of this process's workers: each worker's
    full-batch gradient of its training loss at the parameters (mean_body, its own head), in eval
    mode, in float64 (local workers x body width, and local workers).

    These are the two terms of the stationarity DePRL's theorem bounds (`stationarity=true`): the
    gradient of the global objective in the shared representation at the workers' average body,
    and each worker's head gradient there. Full-batch, so no sampling noise enters the measure."""
    body, head = pop.layout.part("body"), pop.layout.part("head")
    everyone = list(range(len(pop)))
    with pop.pool.one_thread_per_worker() as threads:
        grads = pop.pool.each(
            everyone, lambda scratch, local: _full_gradient(pop, scratch, local, mean_body), threads
        )
    stacked_grads = torch.stack(grads) if grads else torch.zeros(0, pop.layout.size)
    body_grads = stacked_grads[:, body].double()
    head_norms = stacked_grads[:, head].double().square().sum(dim=1)
    return body_grads, head_norms


def _full_gradient(
    pop: Population, scratch: Scratch, local: int, mean_body: torch.Tensor
) -> torch.Tensor:
    """Worker `local`'s gradient (one flat row) of its mean training loss over all its samples,
    with the body replaced by `mean_body`: chunk losses weighted by their share of the samples."""
    own = pop.worker_rows(local)
    params = own.params.clone()
    params[pop.layout.part("body")] = mean_body.to(params.dtype)
    # eval mode writes no buffer (BatchNorm uses its running statistics): the worker's own serve
    scratch.bind(dataclasses.replace(own, params=params), slice(0, len(params)))
    scratch.start(None, training=False)
    scratch.grad.zero_()
    x, y = pop.train_x[local], pop.train_y[local]
    total = len(y)
    for xs, ys in zip(x.split(FULL_BATCH_CHUNK), y.split(FULL_BATCH_CHUNK), strict=True):
        (pop.loss(scratch.module(xs), ys) * (len(ys) / total)).backward()
    return scratch.grad.clone()


FULL_BATCH_CHUNK = 1024  # samples per forward of a full-batch gradient: bounded activation memory
