"""Where each named tensor of a model lives in a worker's flat row: body block, then head block.

Every worker's parameters are one row of a (workers x P) tensor, and so are its BatchNorm buffers
(a float row and an integer row). With the body first, "the body" of all workers is one contiguous
column block: gossip mixes that block, and a worker's SGD update is a few vector operations on its
row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

PARTS = ("body", "head", "all")
MAIN_MODEL = (
    "params"  # the model copy every worker has: the one gossip and evaluation use by default
)
# Adam's state besides its first moment (kept in the momentum rows): the second moment, as wide as
# the parameters, and a step count per parameter tensor (int64). Only a run with optimizer adam or
# adamw has these rows, so an SGD run's rows and checkpoints are what they were.
SECOND_MOMENT, OPTIMIZER_STEPS = "second_moment", "optimizer_steps"
ROW_KINDS = ("params", "momentum", "buffers", "int_buffers", SECOND_MOMENT, OPTIMIZER_STEPS)


def row_key(model: str, kind: str) -> str:
    """Name of the row set `kind` (one of ROW_KINDS) of model copy `model`: the main model's are
    `params`, `momentum`, `buffers`, `int_buffers` (and Adam's `second_moment`,
    `optimizer_steps`); another copy m's are `m`, `m.momentum`, ..."""
    if model == MAIN_MODEL:
        return kind
    return model if kind == "params" else f"{model}.{kind}"


@dataclass(frozen=True)
class RowEntry:
    name: str
    shape: tuple[int, ...]
    start: int
    stop: int


class RowLayout:
    """Column ranges of named tensors in a flat row, body tensors first."""

    def __init__(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        entries, offset = [], 0
        for name, tensor in named:
            entries.append(RowEntry(name, tuple(tensor.shape), offset, offset + tensor.numel()))
            offset += tensor.numel()
        body = [e for e in entries if e.name.startswith("body.")]
        if [e.name for e in entries[: len(body)]] != [e.name for e in body]:
            raise ValueError("SplitModel must register its body before its head")
        self.entries = tuple(entries)
        self.size = offset
        self.body_size = body[-1].stop if body else 0

    @classmethod
    def parameters(cls, model: nn.Module) -> RowLayout:
        return cls(model.named_parameters())

    @classmethod
    def buffers(cls, model: nn.Module, *, integer: bool) -> RowLayout:
        """The model's floating-point buffers (BatchNorm running statistics), or its integer ones
        (BatchNorm's num_batches_tracked): each kind in a row of its own dtype."""
        return cls(
            (name, b) for name, b in model.named_buffers() if b.is_floating_point() != integer
        )

    def part(self, part: str) -> slice:
        """Column slice of a part: 'body', 'head', 'all', or module prefixes joined by '+' (such
        as 'body+head.generic') whose tensors lie side by side in the row; an empty slice when
        no tensor matches."""
        if part == "body":
            return slice(0, self.body_size)
        if part == "head":
            return slice(self.body_size, self.size)
        if part == "all":
            return slice(0, self.size)
        prefixes = tuple(p.strip() for p in part.split("+"))
        chosen = [e for e in self.entries if any(e.name.startswith(p + ".") for p in prefixes)]
        if not chosen:
            return slice(0, 0)
        span = slice(chosen[0].start, chosen[-1].stop)
        if sum(e.stop - e.start for e in chosen) != span.stop - span.start:
            raise ValueError(f"part '{part}' is not one block of the row: its tensors are apart")
        return span

    def entries_of(self, part: str) -> tuple[RowEntry, ...]:
        cols = self.part(part)
        return tuple(e for e in self.entries if cols.start <= e.start and e.stop <= cols.stop)

    def views(self, block: torch.Tensor, part: str = "all") -> dict[str, torch.Tensor]:
        """Named views of the tensors of `part` in `block`, whose last dimension holds exactly
        that part's columns (a whole row for "all"); leading dimensions (workers) are kept.
        Writing the block changes the views, and vice versa."""
        base, lead = self.part(part).start, block.shape[:-1]
        return {
            e.name: block[..., e.start - base : e.stop - base].view((*lead, *e.shape))
            for e in self.entries_of(part)
        }

    def flatten(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        """One row from the tensors in layout order (an empty row when there are none)."""
        flat = [t.detach().reshape(-1) for t in tensors]
        return torch.cat(flat) if flat else torch.zeros(0)


@dataclass(frozen=True)
class StateSpec:
    """An extra per-worker row of `width` float32 values ("params": one per model parameter),
    filled with `fill` at the start (then `Algorithm.init_state` may overwrite it)."""

    width: int | str = "params"
    fill: float = 0.0
