"""A model plug-in: `repgossip run --set model=mymodels:tiny` from this folder.

A model function returns an nn.Module with `body` and `head` submodules (output = head(body(x)));
it is called with whichever of `input_shape`, `num_classes` and `config` it names.
"""

from __future__ import annotations

import math

from torch import nn


def tiny(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A 16-unit representation with BatchNorm, and a linear head."""
    model = nn.Module()
    model.body = nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.BatchNorm1d(16), nn.ReLU()
    )
    model.head = nn.Linear(16, max(num_classes, 1))
    return model
