"""A dataset plug-in: `repgossip run --set dataset=mydata:blobs` from this folder.

A dataset function is called with whichever of `config`, `workers`, `seed` and `data_dir` it
names, and returns per-worker lists `(train_x, train_y, test_x, test_y)` (or two lists of one
torch Dataset per worker), used as given, or two centralized `(x, y)` splits (or torch Datasets),
as here, that are spread over the workers: all of them, iid, unless `partition` or
`samples_per_worker` is set.
"""

from __future__ import annotations

import torch


def blobs(seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Six Gaussian classes in 10 dimensions: 3,000 training and 1,200 test samples."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(6, 10, generator=gen) * 3

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 6, (n,), generator=gen)
        return centers[y] + torch.randn(n, 10, generator=gen), y

    return draw(3000), draw(1200)
