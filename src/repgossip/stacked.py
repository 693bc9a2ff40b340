"""Many workers' copies of one small network run as one: every layer in its batched form.

A worker's step on a small module is mostly Python and autograd overhead; G workers stepping
together as one batched forward and backward pay that overhead once. Each layer takes inputs with a
leading worker dimension (G, batch, ...) and parameters with one (G, *shape), and computes what the
layer computes for each worker: a Linear layer becomes one `bmm`. Only the layer types below have a
batched form here; `can_stack` says whether a module is made of them.

Written out rather than derived with torch.func.vmap: on this CPU vmap's per-call overhead (about
1.7 ms against 0.5 ms for a head step of 16 workers) ate most of the gain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from repgossip.models import SplitModel

# Largest module trained stacked over workers. Stacking turns each worker's Python-bound steps into
# one batched kernel per step, which wins for small modules; for larger ones the stacked weights
# and gradients no longer fit in cache and the per-worker loop is faster (docs/performance.md).
STACK_MAX_PARAMS = 4096

Params = Mapping[str, torch.Tensor]  # qualified parameter name -> (G, *shape)


def _linear(module: nn.Linear, params: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    out = torch.bmm(x, params[prefix + "weight"].transpose(1, 2))
    if module.bias is not None:
        out = out + params[prefix + "bias"].unsqueeze(1)
    return out


def _flatten(module: nn.Flatten, params: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    end = module.end_dim if module.end_dim < 0 else module.end_dim + 1
    return x.flatten(module.start_dim + 1, end)  # one more leading dimension: the workers


def _sequential(
    module: nn.Sequential, params: Params, prefix: str, x: torch.Tensor
) -> torch.Tensor:
    for name, child in module.named_children():
        x = forward(child, params, x, f"{prefix}{name}.")
    return x


_LAYERS: dict[type, Callable[..., torch.Tensor]] = {
    nn.Linear: _linear,
    nn.ReLU: lambda module, params, prefix, x: F.relu(x),
    nn.Identity: lambda module, params, prefix, x: x,
    nn.Flatten: _flatten,
    nn.Sequential: _sequential,
}


def can_stack(module: nn.Module) -> bool:
    """Whether every part of `module` has a batched form here."""
    if isinstance(module, SplitModel):  # its batched form is the library's forward
        return module.separable and can_stack(module.body) and can_stack(module.head)
    return type(module) in _LAYERS and all(can_stack(c) for c in module.children())


def forward(module: nn.Module, params: Params, x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """`module` of every worker on its own inputs: x (G, batch, ...) -> (G, batch, ...).

    `params` holds every parameter under its qualified name in the enclosing model, which `prefix`
    gives for `module`; a SplitModel is run whole.
    """
    if isinstance(module, SplitModel):
        return model_forward(module, params, x, "full")
    return _LAYERS[type(module)](module, params, prefix, x)


def model_forward(model: SplitModel, params: Params, x: torch.Tensor, stage: str) -> torch.Tensor:
    """SplitModel.forward for every worker: `stage` "full", "body" or "head"."""
    if stage != "head":
        x = forward(model.body, params, x, "body.")
    if stage == "body":
        return x
    out = forward(model.head, params, x, "head.")
    if model.after_head is not None:  # the user's own operations, on each worker's outputs
        out = torch.stack([model.after_head(o) for o in out.unbind(0)])  # as its forward has them
    return out.squeeze(-1) if model.squeeze_output else out


def stacks_well(module: nn.Module) -> bool:
    """Whether `module` trains faster stacked over workers than worker by worker: it has a stacked
    form (no convolutions, no batch statistics, no dropout) and it is small."""
    small = sum(p.numel() for p in module.parameters()) <= STACK_MAX_PARAMS
    return small and can_stack(module)
