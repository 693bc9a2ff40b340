"""Running one worker at a time on a private module copy, and many workers side by side on threads.

Why a scratch copy: `functional_call` re-binds every parameter on every call, and `autograd.grad`
hands back per-tensor gradients to concatenate. Here a copy's parameters are views of the worker's
row and their `.grad` views of one flat buffer, bound once per worker and phase: a step is a plain
forward and backward whose gradient lands in flat layout, and the update writes the row. BatchNorm
buffers are bound the same way to the worker's buffer rows (its running statistics are its own),
and dropout layers draw from the worker's own generator.

Why threads of single-threaded kernels: a batch of 16 is too small for two OpenMP threads to share
(on a busy machine their barriers cost many times the work), while whole workers are independent.
Every kernel runs single-threaded, so a worker's numbers are bitwise the same for any thread count
and any placement of workers over processes.
"""

from __future__ import annotations

import copy
import queue
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from repgossip.layout import RowLayout
from repgossip.models import SplitModel, use_worker_dropout
from repgossip.threads import pin_this_thread, single_threaded

FORWARD_CHUNK = 256  # samples per gradient-free forward pass: bounded activation memory
# Fewest workers worth a thread of their own in a stacked step: below it, a second thread adds more
# Python overhead (which the GIL serialises) than it saves in arithmetic.
STACK_CHUNK = 256
S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerRows:
    """One worker's rows of one model copy: parameters, float buffers, integer buffers."""

    params: torch.Tensor
    buffers: torch.Tensor
    int_buffers: torch.Tensor


class Scratch:
    """A private copy of the model whose tensors are pointed at one worker's rows at a time."""

    def __init__(
        self, model: SplitModel, layouts: tuple[RowLayout, RowLayout, RowLayout], device
    ) -> None:
        self.module = copy.deepcopy(model)
        self.dropouts = use_worker_dropout(self.module)
        self.params = list(self.module.parameters())
        layout, floats, ints = layouts
        self.entries = layout.entries
        self.buffer_slots = [
            (self._owner(e.name), e, which)
            for which, buffer_layout in ((0, floats), (1, ints))
            for e in buffer_layout.entries
        ]
        self.grad = torch.zeros(layout.size, device=device)

    def _owner(self, qualified: str) -> tuple[nn.Module, str]:
        path, _, attribute = qualified.rpartition(".")
        return self.module.get_submodule(path), attribute

    def bind(self, rows: WorkerRows, trainable: slice) -> None:
        """Point the tensors at the worker's rows; parameters inside `trainable` get gradients."""
        row = rows.params
        for param, entry in zip(self.params, self.entries, strict=True):
            learns = trainable.start <= entry.start and entry.stop <= trainable.stop
            param.data = row[entry.start : entry.stop].view(entry.shape)
            param.requires_grad_(learns)
            param.grad = self.grad[entry.start : entry.stop].view(entry.shape) if learns else None
        for (owner, attribute), entry, which in self.buffer_slots:
            source = rows.int_buffers if which else rows.buffers
            owner._buffers[attribute] = source[entry.start : entry.stop].view(entry.shape)

    def start(self, generator: torch.Generator | None, training: bool) -> None:
        """Set train/eval mode (dropout, BatchNorm) and the worker's generator for dropout."""
        self.module.train(training)
        for layer in self.dropouts:
            layer.generator = generator

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen body's features of one batch, in eval mode (as `outputs` computes them),
        leaving the module in train mode for the step that follows."""
        body = self.module.body
        body.eval()
        try:
            return body(x)
        finally:
            body.train()

    @torch.no_grad()
    def outputs(self, rows: WorkerRows, inputs: torch.Tensor, stage: str = "full") -> torch.Tensor:
        """The worker's model (or one stage of it) in eval mode on all `inputs`, FORWARD_CHUNK at
        a time: evaluation, and the features of a frozen body."""
        self.bind(rows, slice(0, 0))
        self.start(None, training=False)
        return torch.cat([self.module(x, stage=stage) for x in inputs.split(FORWARD_CHUNK)])


class WorkerPool:
    """Runs a function per worker (or per group of workers) on up to `threads` threads, each with
    a scratch model of its own."""

    def __init__(
        self, make_scratch: Callable[[], Scratch], device: torch.device, threads: int | None = None
    ) -> None:
        self.make_scratch = make_scratch
        self.device = device
        # Workers side by side: torch's thread count when the pool was made, unless given (a run
        # pins its kernels to one thread and hands over the count it had before).
        self.threads = threads or torch.get_num_threads()
        self._scratches: list[Scratch] = []

    @contextmanager
    def one_thread_per_worker(self) -> Iterator[int]:
        """Spread workers over the intra-op threads instead of splitting each small kernel; inside,
        every kernel runs single-threaded. Yields how many workers run at once."""
        if self.device.type != "cpu":
            yield 1
            return
        with single_threaded():
            yield self.threads

    def each(self, items: Sequence[S], fn: Callable[[Scratch, S], T], threads: int) -> list[T]:
        """`fn(scratch, item)` for every item (a worker, or a chunk of workers), up to `threads` at
        a time, each with a scratch model of its own; results in order."""
        threads = max(1, min(threads, len(items)))
        while len(self._scratches) < threads:
            self._scratches.append(self.make_scratch())
        if threads == 1:
            return [fn(self._scratches[0], item) for item in items]
        free: queue.SimpleQueue[Scratch] = queue.SimpleQueue()
        for scratch in self._scratches[:threads]:
            free.put(scratch)

        def task(item: S) -> T:
            scratch = free.get()  # never blocks: as many scratch models as threads
            try:
                return fn(scratch, item)
            finally:
                free.put(scratch)

        with ThreadPoolExecutor(threads, initializer=pin_this_thread) as pool:
            return list(pool.map(task, items))

    @staticmethod
    def stacks(
        chosen: list[int], shape: Callable[[int], Hashable], threads: int
    ) -> list[list[int]]:
        """Workers of equal `shape(local)` (sample counts) stack; each such group is cut into
        chunks of at least STACK_CHUNK workers, at most one per thread."""
        groups: dict[Hashable, list[int]] = {}
        for local in chosen:
            groups.setdefault(shape(local), []).append(local)
        return [
            chunk.tolist()
            for members in groups.values()
            for chunk in np.array_split(members, min(threads, -(-len(members) // STACK_CHUNK)))
        ]
