"""The loss a run trains on and the metric it reports besides loss and accuracy: the task's own loss
(cross-entropy for classification, mean squared error for regression) or plug-ins.

A plug-in is named `package.module:function` (config keys `loss`, `metric`) or handed to
`repgossip.run(loss=..., metric=...)` as a function:

- `loss(outputs, targets) -> torch.Tensor`: a scalar, the mean over the batch; it is what every
  worker differentiates at every step (outputs: the model's, (batch, classes) logits or (batch,)
  values; targets: class indices or values), and what `train_loss` and `test_loss_mean` report.
- `metric(outputs, targets) -> float`: one number for one worker's whole test split, given its
  model's outputs (class scores, after the algorithm's `predictions`) and its targets as CPU
  tensors (numpy and scikit-learn take them as they are); a run reports the mean over workers as
  `test_metric_mean` and each worker's value as `per_worker_metric` in summary.json.

Either one failing, or returning something else, stops the run with one line naming the plug-in.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from repgossip.errors import RepgossipError, UsageError, described, user_code_failed
from repgossip.registry import API_PREFIX, import_object

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], Any]
MetricScore = Callable[[torch.Tensor, torch.Tensor], float]  # a checked metric: a float
SIGNATURES = {
    "loss": "(outputs, targets) -> scalar tensor, the mean over the batch",
    "metric": "(outputs, targets) -> number, for one worker's test split",
}


def resolve(key: str, ref: str | None, supplied: Callable[..., Any] | None = None) -> Any:
    """The function config key `key` ("loss" or "metric") names: None for the task's own (no
    metric), the object handed to repgossip.run() for a `python:` reference, else the imported
    plug-in, refused in one line when it is not callable."""
    if ref is None:
        return None
    if ref.startswith(API_PREFIX):
        if supplied is None:
            raise UsageError(
                f"{key} '{ref}' was a function handed to repgossip.run(); pass it again there to "
                "run or resume this config"
            )
        return supplied
    function = import_object(ref, key)
    if not callable(function):
        raise UsageError(
            f"{key} plug-in '{ref}' is a {type(function).__name__}, not a function "
            f"{SIGNATURES[key]}"
        )
    return function


def _failed(key: str, ref: str, err: Exception) -> UsageError:
    return user_code_failed(f"{key} plug-in '{ref}' raised {described(err)}", err)


def checked_loss(ref: str, function: LossFn) -> LossFn:
    """`function` as a task loss: its failure, or a result other than a scalar tensor (a
    per-sample vector would be summed silently), ends the run in one line."""

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        try:
            value = function(outputs, targets)
        except RepgossipError:
            raise
        except Exception as err:
            raise _failed("loss", ref, err) from None
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value)
            raise UsageError(
                f"loss plug-in '{ref}' must return a scalar tensor (the mean over the batch), "
                f"got {getattr(got, '__name__', got)}"
            )
        return value

    return loss


def checked_metric(ref: str, function: MetricFn) -> MetricScore:
    """`function` as a metric: called on CPU tensors, its result a float; a failure or a result
    that is not one number ends the run in one line (non-finite values are judged later, with
    the worker's id: `check_finite_metric`)."""

    def metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        try:
            value = function(outputs.detach().cpu(), targets.detach().cpu())
        except RepgossipError:
            raise
        except Exception as err:
            raise _failed("metric", ref, err) from None
        one = value.numel() if isinstance(value, torch.Tensor) else getattr(value, "size", 0)
        if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and one == 1:
            value = value.item()  # a 0-d tensor or array, a numpy scalar: its Python number
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UsageError(
                f"metric plug-in '{ref}' must return a number, got {type(value).__name__}"
            )
        return float(value)

    return metric


def check_finite_metric(ref: str, values: list[float]) -> None:
    """Refuse a metric that is NaN or infinite for some worker (`values` in worker order):
    metrics.jsonl and summary.json hold numbers only."""
    for worker, value in enumerate(values):
        if not math.isfinite(value):
            raise UsageError(
                f"metric plug-in '{ref}' returned {value} for worker {worker}; it must return a "
                "finite number"
            )
