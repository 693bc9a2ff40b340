"""Data augmentation for image batches, drawn from the worker's own random stream.

The standard CIFAR recipe: pad by 4 pixels, crop back at a random offset, flip horizontally with
probability 1/2. Offsets and flips come from the generator of the worker's phase (after its batch
order), so a worker's augmented batches, like its batch order and dropout masks, do not depend on
which process or thread runs it: `sim` and `dist` stay equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4


def crop_and_flip(x: torch.Tensor, gen: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Each image of `x` (batch, channels, height, width) padded with zeros, cropped back at a
    random offset and flipped left-right with probability 1/2; one vectorised gather, no loop."""
    batch, _, height, width = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=gen).to(x.device)
    flips = (torch.rand(batch, generator=gen) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[0][:, None] + torch.arange(height, device=x.device)
    cols = offsets[1][:, None] + torch.arange(width, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    every = torch.arange(batch, device=x.device)[:, None, None]
    cropped = padded[every, :, rows[:, :, None], cols[:, None, :]]  # (batch, height, width, C)
    return cropped.permute(0, 3, 1, 2).contiguous()
