"""Models with an explicit representation (`body`) and a private `head`.

The split is declared by the architecture, never guessed from parameter names: the body is what
DePRL-style algorithms share, the head is what stays with the worker. Bodies must be deterministic
functions of their input (no dropout, no batch statistics), which lets the head phase compute body
features once per round and reuse them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from repgossip.errors import UsageError


class SplitModel(nn.Module):
    """`head(body(x))`, with the two halves as named submodules."""

    def __init__(self, body: nn.Module, head: nn.Module, squeeze_output: bool = False) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.squeeze_output = squeeze_output

    def forward(self, x: torch.Tensor, stage: str = "full") -> torch.Tensor:
        """`stage` "full" maps inputs to outputs, "body" inputs to features, "head" features to
        outputs: one entry point that runs any part of the model."""
        if stage == "body":
            return self.body(x)
        if stage == "head":
            return self.head_forward(x)
        return self.head_forward(self.body(x))

    def head_forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.head(features)
        return out.squeeze(-1) if self.squeeze_output else out


def cnn(input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
    """The CNN of the DePRL/FedRep experiments for 28x28 images (benchmarks compare this exact net)."""
    channels, height, width = input_shape
    if (height, width) != (28, 28):
        raise UsageError(f"model 'cnn' needs 28x28 images, got {height}x{width}; use model 'mlp'")
    body = nn.Sequential(
        nn.Conv2d(channels, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(512, 128), nn.ReLU(),
    )  # fmt: skip
    return SplitModel(body, nn.Linear(128, num_classes))


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> SplitModel:
    """Two hidden layers for feature vectors (images are flattened)."""
    inputs = math.prod(input_shape)
    body = nn.Sequential(
        nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
    )
    return SplitModel(body, nn.Linear(hidden, num_classes))


def linear(input_shape: tuple[int, ...], rank: int) -> SplitModel:
    """The linear-representation model: body d->k (B^T, no bias), head k->1 (theta, no bias)."""
    (dim,) = input_shape
    return SplitModel(nn.Linear(dim, rank, bias=False), nn.Linear(rank, 1, bias=False), True)


def build_model(name: str, input_shape: tuple[int, ...], outputs: int, rank: int = 2) -> SplitModel:
    """The named architecture for inputs of `input_shape`; `outputs` classes (unused by linear)."""
    if name == "cnn":
        return cnn(input_shape, outputs)
    if name == "mlp":
        return mlp(input_shape, outputs)
    if name == "linear":
        return linear(input_shape, rank)
    raise UsageError(f"unknown model '{name}'; valid: cnn, mlp, linear")
