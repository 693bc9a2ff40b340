"""Augmentation: crops and flips drawn from each worker's stream, so runs repeat, resume exactly
and give the numbers of one process on two ranks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repgossip.augment import crop_and_flip
from repgossip.cli import main

from launch import assert_same_numbers, summary, torchrun

SETS = ["augment=true", "workers=4", "samples_per_worker=30", "head_epochs=1", "checkpoint_every=1"]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(2, 9), pad=st.integers(0, 3))
def test_every_output_is_a_shifted_maybe_flipped_window_of_the_padded_image(seed, size, pad):
    x = torch.rand(5, 2, size, size) + 1  # nonzero, so padding is recognisable
    out = crop_and_flip(x, torch.Generator().manual_seed(seed), pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for image, result in zip(padded, out, strict=True):
        windows = [image[:, r : r + size, c : c + size] for r in range(2 * pad + 1)
                   for c in range(2 * pad + 1)]  # fmt: skip
        assert any(torch.equal(result, w) or torch.equal(result, w.flip(-1)) for w in windows)
    again = crop_and_flip(x, torch.Generator().manual_seed(seed), pad)
    assert torch.equal(out, again)


def test_augmented_runs_differ_from_plain_ones_and_resume_exactly(tmp_path):
    run = lambda out, *extra: main(["run", "--quiet", "--set", *SETS, *extra, "--out", str(out)])  # noqa: E731
    assert run(tmp_path / "a", "rounds=2") == 0
    assert run(tmp_path / "plain", "rounds=2", "augment=false") == 0
    assert summary(tmp_path / "a") != summary(tmp_path / "plain")
    assert run(tmp_path / "b", "rounds=1") == 0
    assert (
        main(["run", "--quiet", "--set", "rounds=2", "--out", str(tmp_path / "b"), "--resume"]) == 0
    )
    assert summary(tmp_path / "a") == summary(tmp_path / "b")


@pytest.mark.slow
def test_augmented_runs_give_the_numbers_of_one_process_on_two_ranks(tmp_path):
    sets = [*SETS, "rounds=2", "workers=5"]
    assert main(["run", "--quiet", "--set", *sets, "--out", str(tmp_path / "sim")]) == 0
    done = torchrun(2, tmp_path / "dist", *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_numbers(summary(tmp_path / "dist"), summary(tmp_path / "sim"))
