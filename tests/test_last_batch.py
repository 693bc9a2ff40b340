"""An epoch's remainder (`last_batch`: merge, drop, keep): the batch sizes of each policy as
properties over sample counts and batch sizes, the key's checks, and folders of the release before
the key (which kept the remainder as a batch) resuming as they ran."""

from __future__ import annotations

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import repgossip
from repgossip.cli import main
from repgossip.config import build_config
from repgossip.training import LAST_BATCH, Budget, batch_schedule

from launch import summary

sizes = st.tuples(st.integers(1, 80), st.integers(1, 24), st.integers(1, 3))


def schedule(n: int, batch: int, epochs: int, policy: str, no_single: bool = False):
    gen = torch.Generator().manual_seed(n * 1000 + batch)
    return batch_schedule(n, batch, Budget(epochs=epochs), gen, policy, no_single).batches()


def per_epoch(batches: list[torch.Tensor], epochs: int) -> list[list[torch.Tensor]]:
    count = len(batches) // epochs
    assert count * epochs == len(batches)
    return [batches[e * count : (e + 1) * count] for e in range(epochs)]


@settings(max_examples=200, deadline=None)
@given(sizes)
def test_merge_sees_every_sample_once_per_epoch_in_batches_of_at_least_batch_size(case):
    n, batch, epochs = case
    for epoch in per_epoch(schedule(n, batch, epochs, "merge"), epochs):
        assert sorted(torch.cat(epoch).tolist()) == list(range(n))
        assert len(epoch) == max(1, n // batch)
        assert all(min(n, batch) <= len(b) < 2 * batch for b in epoch)


@settings(max_examples=200, deadline=None)
@given(sizes)
def test_drop_takes_full_batches_only_and_never_a_sample_twice(case):
    n, batch, epochs = case
    for epoch in per_epoch(schedule(n, batch, epochs, "drop"), epochs):
        seen = torch.cat(epoch).tolist()
        assert len(set(seen)) == len(seen)
        # fewer samples than a batch: the worker still trains, on all it has
        assert [len(b) for b in epoch] == ([batch] * (n // batch) if n >= batch else [n])


@settings(max_examples=200, deadline=None)
@given(sizes)
def test_keep_is_a_plain_dataloaders_batches(case):
    n, batch, epochs = case
    full, rest = divmod(n, batch)
    for epoch in per_epoch(schedule(n, batch, epochs, "keep"), epochs):
        assert sorted(torch.cat(epoch).tolist()) == list(range(n))
        assert [len(b) for b in epoch] == [batch] * full + ([rest] if rest else [])


@settings(max_examples=100, deadline=None)
@given(sizes)
def test_every_policy_draws_the_same_shuffles(case):
    """The policies cut the same permutations: drop is merge's order less each epoch's tail."""
    n, batch, epochs = case
    merged = per_epoch(schedule(n, batch, epochs, "merge"), epochs)
    kept = per_epoch(schedule(n, batch, epochs, "keep"), epochs)
    dropped = per_epoch(schedule(n, batch, epochs, "drop"), epochs)
    for m, k, d in zip(merged, kept, dropped, strict=True):
        assert torch.equal(torch.cat(m), torch.cat(k))
        used = len(torch.cat(d))
        assert torch.equal(torch.cat(d), torch.cat(m)[:used])


def test_a_lone_last_sample_joins_the_batch_before_it_for_batchnorm_under_keep():
    assert [len(b) for b in schedule(9, 4, 1, "keep", no_single=True)] == [4, 5]
    assert [len(b) for b in schedule(10, 4, 1, "keep", no_single=True)] == [4, 4, 2]


@pytest.mark.parametrize("policy", LAST_BATCH)
def test_steps_budgets_are_full_batches_whatever_the_policy(policy):
    gen = torch.Generator().manual_seed(3)
    steps = batch_schedule(10, 4, Budget(steps=7), gen, policy).batches()
    assert [len(b) for b in steps] == [4] * 7


def test_the_key_defaults_to_merge_and_names_its_choices():
    assert build_config().last_batch == "merge"
    with pytest.raises(repgossip.UsageError, match="unknown last_batch 'last'; valid: merge, drop"):
        build_config(overrides={"last_batch": "last"})


def test_a_policy_changes_the_numbers_only_where_an_epoch_has_a_remainder():
    base = {"dataset": "synthetic", "workers": 4, "rounds": 2, "batch_size": 16}
    numbers = {
        (samples, policy): repgossip.run(
            {**base, "samples_per_worker": samples, "last_batch": policy}
        ).summary["per_worker_test_loss"]
        for samples in (48, 50)
        for policy in LAST_BATCH
    }
    assert numbers[48, "merge"] == numbers[48, "drop"] == numbers[48, "keep"]
    assert len({tuple(numbers[50, p]) for p in LAST_BATCH}) == 3


def test_a_folder_of_the_release_before_the_key_resumes_as_it_ran(tmp_path, capsys):
    """That release kept the remainder as a batch: its config.yaml, without the key, reads as
    last_batch=keep, so `run --resume` continues it to the numbers of an uninterrupted keep run,
    and asking for the new default on it is refused in one line."""
    sets = ["dataset=synthetic", "workers=4", "samples_per_worker=50", "checkpoint_every=1"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    keep = [*sets, "last_batch=keep"]
    assert main(["run", "--quiet", "--set", *keep, "rounds=3", "--out", str(whole)]) == 0
    assert main(["run", "--quiet", "--set", *keep, "rounds=1", "--out", str(part)]) == 0
    saved = yaml.safe_load((part / "config.yaml").read_text())
    del saved["last_batch"]
    (part / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    capsys.readouterr()
    merge = ["run", "--quiet", "--set", "rounds=3", "last_batch=merge", "--out", str(part)]
    assert main([*merge, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "'last_batch' ('keep' -> 'merge')" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--quiet", "--set", "rounds=3", "--out", str(part), "--resume"]) == 0
    assert summary(part)["per_worker_test_loss"] == summary(whole)["per_worker_test_loss"]
    assert yaml.safe_load((part / "config.yaml").read_text())["last_batch"] == "keep"


def _as_older_release(folder):
    """Delete from `folder`'s config.yaml the keys an older release did not write."""
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    for key in ("last_batch", "fedrod_schedule", "reset_momentum"):
        saved.pop(key, None)
    (folder / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))


OLD = {"dataset": "synthetic", "workers": 4, "samples_per_worker": 50, "checkpoint_every": 1,
       "last_batch": "keep", "reset_momentum": False, "momentum": 0.5}  # fmt: skip


def test_the_api_resumes_a_folder_of_an_older_release_as_it_ran(tmp_path):
    whole = repgossip.run({**OLD, "rounds": 3}, out=tmp_path / "whole")
    repgossip.run({**OLD, "rounds": 1}, out=tmp_path / "part")
    _as_older_release(tmp_path / "part")
    # the folder's own config.yaml, as a user would hand it back
    again = repgossip.run(tmp_path / "part" / "config.yaml", out=tmp_path / "part", resume=True,
                          rounds=3)  # fmt: skip
    assert again.summary["per_worker_test_loss"] == whole.summary["per_worker_test_loss"]
    with pytest.raises(repgossip.UsageError, match="'last_batch' \\('keep' -> 'merge'\\)"):
        repgossip.run({**OLD, "rounds": 4, "last_batch": "merge"}, out=tmp_path / "part",
                      resume=True)  # fmt: skip


def test_a_sweep_resumes_points_of_an_older_release_as_they_ran(tmp_path, capsys):
    sets = ["dataset=synthetic", "workers=4", "samples_per_worker=50", "momentum=0.5"]
    old = [*sets, "last_batch=keep", "reset_momentum=false"]
    grid = ["--grid", "lr=0.01,0.02"]
    assert (
        main(["sweep", "--quiet", *grid, "--set", *old, "rounds=2", "--out", str(tmp_path / "w")])
        == 0
    )
    assert (
        main(["sweep", "--quiet", *grid, "--set", *old, "rounds=1", "--out", str(tmp_path / "p")])
        == 0
    )
    for point in (tmp_path / "p").glob("lr-*"):
        _as_older_release(point)
    assert main(["sweep", "--quiet", *grid, "--set", *sets, "rounds=2", "--out", str(tmp_path / "p"),
                 "--resume"]) == 0, capsys.readouterr().err  # fmt: skip
    for point in (tmp_path / "w").glob("lr-*"):
        assert summary(tmp_path / "p" / point.name) == summary(point)
