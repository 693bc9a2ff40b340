"""Loss and metric plug-ins: `repgossip run --set loss=myobjectives:smoothed
metric=myobjectives:macro_f1` from this folder.

A loss is called as `loss(outputs, targets)` at every training step and evaluation, and returns a
scalar tensor, the mean over the batch. A metric is called as `metric(outputs, targets)` once per
worker and evaluation, on the worker's whole test split (CPU tensors), and returns one number;
the run reports the mean over workers as `test_metric_mean` (metrics.jsonl) and each worker's
value as `per_worker_metric` (summary.json).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing 0.1."""
    return F.cross_entropy(outputs, targets, label_smoothing=0.1)


def macro_f1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """F1 averaged over the classes that occur in the targets or the predictions, each class
    counting as much as any other: the usual score for activity recognition, whose classes are
    unbalanced (sklearn's f1_score(targets, predictions, average="macro") gives the same)."""
    predicted = outputs.argmax(1)
    scores = []
    for c in torch.unique(torch.cat([targets, predicted])):
        true_pos = int(((predicted == c) & (targets == c)).sum())
        wrong = int((predicted != targets).logical_and((predicted == c) | (targets == c)).sum())
        scores.append(2 * true_pos / (2 * true_pos + wrong))
    return sum(scores) / len(scores)
