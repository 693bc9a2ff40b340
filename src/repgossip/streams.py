"""Every worker's own random stream, stateless in (seed, worker, round, phase).

The batch order of worker w in phase p of round r comes from a generator seeded with
`np.random.SeedSequence([seed, w, r, p]).generate_state(1, np.uint64)`, so a worker's numbers do
not depend on which process holds it or on whether the run was resumed.

A torch Dataset's random transforms draw from the global generators instead: each read of one runs
under global generators seeded from the run's seed and the read (`read_seed`, `seeded_globals`).

SeedSequence itself costs about 35 microseconds a call, which at 10,000 workers was a quarter of a
synthetic round; `worker_seeds` computes the same values for all workers at once with numpy's
SeedSequence algorithm written out over arrays (tests/test_streams.py checks it against numpy's).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

# The constants and shift of numpy's SeedSequence (numpy/random/bit_generator.pyx).
_POOL_SIZE = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = 16
_MASK32 = 0xFFFF_FFFF
_TORCH_SEED_MASK = 0x7FFF_FFFF_FFFF_FFFF  # torch.Generator.manual_seed takes a signed 64-bit int


def _uint32_words(value: int) -> list[int]:
    """A non-negative int as SeedSequence reads it: 32-bit words, least significant first."""
    if value < 0:
        raise ValueError(f"seed material must be >= 0, got {value}")
    words = [value & _MASK32]
    while value := value >> 32:
        words.append(value & _MASK32)
    return words


def _hasher(init: int, mult: int) -> Callable[[np.ndarray], np.ndarray]:
    """SeedSequence's hash: a running constant, the same for every worker, so one scalar."""
    const = init

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal const
        value = value ^ np.uint32(const)
        const = (const * mult) & _MASK32
        value = value * np.uint32(const)
        return value ^ (value >> np.uint32(_XSHIFT))

    return hashmix


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
    return result ^ (result >> np.uint32(_XSHIFT))


def worker_seeds(seed: int, workers: np.ndarray, round_index: int, phase: int) -> np.ndarray:
    """`SeedSequence([seed, w, round_index, phase]).generate_state(1, np.uint64)[0]` for every w in
    `workers` (each below 2^32), as one uint64 array."""
    workers = np.asarray(workers, dtype=np.int64)
    if workers.size and (workers.min() < 0 or workers.max() > _MASK32):
        raise ValueError("worker ids must be in [0, 2^32)")
    column = lambda word: np.full(len(workers), word, dtype=np.uint32)  # noqa: E731
    entropy = [
        *(column(w) for w in _uint32_words(seed)),
        workers.astype(np.uint32),
        *(column(w) for w in _uint32_words(round_index)),
        *(column(w) for w in _uint32_words(phase)),
    ]
    with np.errstate(over="ignore"):
        hashmix = _hasher(_INIT_A, _MULT_A)
        zero = column(0)
        pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL_SIZE)]
        for src in range(_POOL_SIZE):
            for dst in range(_POOL_SIZE):
                if src != dst:
                    pool[dst] = _mix(pool[dst], hashmix(pool[src]))
        for src in range(_POOL_SIZE, len(entropy)):
            for dst in range(_POOL_SIZE):
                pool[dst] = _mix(pool[dst], hashmix(entropy[src]))
        output = _hasher(_INIT_B, _MULT_B)
        low, high = output(pool[0]), output(pool[1])
    return low.astype(np.uint64) | (high.astype(np.uint64) << np.uint64(32))


def generator(state: int) -> torch.Generator:
    """A CPU generator seeded from one of `worker_seeds`' values."""
    return torch.Generator().manual_seed(int(state) & _TORCH_SEED_MASK)


def worker_generator(seed: int, worker: int, round_index: int, phase: int) -> torch.Generator:
    """The generator owned by one worker for one phase of one round."""
    return generator(worker_seeds(seed, np.array([worker]), round_index, phase)[0])


# The spawn key of the seeds under which a torch Dataset is read (repgossip.data.federation):
# another stream than every (seed, worker, round, phase) generator above.
READ_KEY = 0x5EAD


def read_seed(seed: int, where: Sequence[int]) -> int:
    """The seed of the global generators while a torch Dataset is read at `where` (a tuple of
    non-negative ints naming the read: its kind, split, worker, round, phase, step)."""
    sequence = np.random.SeedSequence([seed, *where], spawn_key=(READ_KEY,))
    return int(sequence.generate_state(1, np.uint64)[0])


@contextmanager
def global_generators() -> Iterator[Callable[[int], None]]:
    """Inside, the function it yields seeds torch's (CPU), numpy's and Python's global generators
    from a state; after, each is as it was. A Dataset's random transforms draw from these
    generators (torchvision's from torch's), so reads each under a seed of their own give the
    same items in any process, on any thread count, resumed or not, and the caller's generators
    are left alone. Saved and restored once around many reads, each seeded: saving and restoring
    the states costs more than seeding them (docs/performance.md, "Datasets read anew")."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield _seed_globals
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


def _seed_globals(state: int) -> None:
    # the CPU generator alone: torch.manual_seed also seeds every accelerator, 60 times slower
    torch.default_generator.manual_seed(state & _TORCH_SEED_MASK)
    np.random.seed(state & _MASK32)
    random.seed(state)
