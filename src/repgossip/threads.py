"""Kernel thread counts, pinned to one so that no number depends on them.

A matrix product, a convolution or a sum over many elements splits its work over the math
library's threads, and each split adds in another order: an mlp run gave other per-worker losses
under OMP_NUM_THREADS=2 than under 1, a spectral gap from LAPACK moved in its 15th digit, and MKL
may pick fewer threads on a busy machine. So every kernel of a run runs on one thread, and the
run's parallelism is whole workers side by side on threads of their own (repgossip.scratch), each
also single-threaded. Elementwise work (gossip's exactly rounded multiply and add) gives the same
bits on any thread count, but it too runs inside the pinned run: one rule is easier to keep.

Three places hold a thread count, and all three are pinned: torch's intra-op pool (which also sets
MKL's and oneDNN's), OpenMP's per-thread count (a new thread starts from OMP_NUM_THREADS or the
core count, not from the thread that made it), and the BLAS that numpy and scipy call (OpenBLAS,
through threadpoolctl).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def single_threaded() -> Iterator[int]:
    """Inside, every math library of this process runs its kernels on one thread (in the calling
    thread; threads started inside must call `pin_this_thread` first). Yields the torch thread
    count from before, which is how many workers may run side by side."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield threads
    finally:
        torch.set_num_threads(threads)


def pin_this_thread() -> None:
    """Make a newly started thread's kernels single-threaded before it runs any: OpenMP's count is
    per thread, and a new one starts from the process default, not from its parent's setting."""
    torch.set_num_threads(1)
