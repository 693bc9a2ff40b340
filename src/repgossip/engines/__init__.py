"""Engines: where workers live (`sim`: one process; `dist`: torch.distributed ranks)."""

from __future__ import annotations

import torch

from repgossip.engines.base import Engine


def make_engine(name: str, workers: int, device: torch.device, timeout_s: float) -> Engine:
    if name == "dist":
        from repgossip.engines.dist import DistEngine  # torch.distributed only when asked for

        return DistEngine(workers, device, timeout_s)
    return Engine(workers)
