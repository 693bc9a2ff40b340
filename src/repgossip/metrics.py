"""What a run reports, computed from per-worker statistics and the workers' parameters.

Personalized accuracy is each worker's own model on its own test split; `test_acc_mean` averages
those accuracies over workers, `test_acc_pooled` divides all correct predictions by all test samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BYTES_PER_FLOAT = 4  # parameters travel as float32


def accuracy_summary(correct: np.ndarray, count: np.ndarray) -> dict[str, float]:
    acc = correct / np.maximum(count, 1)
    return {
        "test_acc_mean": float(acc.mean()),
        "test_acc_pooled": float(correct.sum() / max(count.sum(), 1)),
        "test_acc_p10": float(np.percentile(acc, 10)),
        "test_acc_min": float(acc.min()),
    }


def add_in_order(total: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`total` plus every row of `rows`, one row at a time in order, in place and in `total`'s
    dtype: a fixed order of additions, where a reduction kernel's order depends on its thread count
    and an all-reduce adds per-process partial sums in an order of its own."""
    for row in rows:
        total.add_(row)
    return total


def squared_deviations(rows: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """||x_i - mean||^2 for each row x_i, in float64, each row reduced on its own: a worker's value
    is the same whichever process holds it."""
    return ((rows.double() - mean) ** 2).sum(1)


def consensus_distance(shared: torch.Tensor) -> float:
    """Mean over workers of ||x_i - mean_j x_j||^2 for rows x_i of the shared parameters; the mean
    is added in worker order and the deviations summed exactly (math.fsum), as the run does."""
    zero = torch.zeros(shared.shape[1:], dtype=torch.float64, device=shared.device)
    mean = add_in_order(zero, shared) / len(shared)
    return math.fsum(squared_deviations(shared, mean).tolist()) / len(shared)


def subspace_distance(b_star: np.ndarray, body_weight: np.ndarray) -> float:
    """||(I - Q Q^T) B*||_2 with Q an orthonormal basis of the column space of `body_weight`^T.

    `body_weight` is the linear body's (k, d) weight, i.e. B^T; 0 means the learned representation
    spans the true one, 1 that some true direction is orthogonal to it.
    """
    q, _ = np.linalg.qr(body_weight.T.astype(np.float64))
    residual = b_star - q @ (q.T @ b_star)
    return float(np.linalg.norm(residual, 2))


def bytes_per_round(links: int, shared_params: int) -> int:
    """Every worker sends its shared float32 parameters to each neighbour once per round: twice
    per undirected link."""
    return 2 * links * shared_params * BYTES_PER_FLOAT


def push_sum_bytes_per_round(links: int, shared_params: int) -> int:
    """Push-sum on a directed graph: every worker sends its shared float32 parameters and its
    float32 weight to each out-neighbour once per round: once per directed link."""
    return links * (shared_params + 1) * BYTES_PER_FLOAT
