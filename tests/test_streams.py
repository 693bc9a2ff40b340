"""Per-worker random streams: the vectorized seeds are numpy's SeedSequence values exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repgossip.streams import worker_generator, worker_seeds


def numpy_seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0])


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**70),  # beyond 2^32 and 2^64: several entropy words
    workers=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8),
    round_index=st.integers(0, 2**40),
    phase=st.integers(0, 5),
)
def test_worker_seeds_are_numpys_seed_sequence(seed, workers, round_index, phase):
    got = worker_seeds(seed, np.array(workers), round_index, phase)
    assert got.dtype == np.uint64
    assert got.tolist() == [numpy_seed(seed, w, round_index, phase) for w in workers]


def test_worker_seeds_of_no_workers_and_bad_ids():
    assert worker_seeds(0, np.array([], dtype=np.int64), 1, 2).shape == (0,)
    with pytest.raises(ValueError):
        worker_seeds(0, np.array([-1]), 0, 0)
    with pytest.raises(ValueError):
        worker_seeds(-1, np.array([0]), 0, 0)


def test_worker_streams_depend_on_worker_round_and_phase_only():
    def draw(*key: int) -> list[int]:
        return torch.randperm(50, generator=worker_generator(*key)).tolist()

    assert draw(0, 1, 2, 0) == draw(0, 1, 2, 0)
    keys = [(0, 1, 2, 0), (0, 2, 2, 0), (0, 1, 3, 0), (0, 1, 2, 1), (1, 1, 2, 0)]
    assert len({tuple(draw(*k)) for k in keys}) == len(keys)
