"""Partition and per-worker test split: validity properties, skew, speed and error messages."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repgossip.data.partition import EQUAL_SIZE, PARTITIONS, partition
from repgossip.data.partition import test_split as make_test_split
from repgossip.errors import UsageError


def assert_valid(parts: list[np.ndarray], total: int) -> None:
    """Disjoint, non-empty, equal-sized, in-range, sorted int64 index arrays."""
    assert parts, "no workers"
    sizes = {len(p) for p in parts}
    assert len(sizes) == 1 and min(sizes) > 0
    every = np.concatenate(parts)
    assert len(np.unique(every)) == len(every)
    assert every.min() >= 0 and every.max() < total
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)


labels_st = st.lists(st.integers(0, 6), min_size=1, max_size=300).map(np.array)


@settings(max_examples=150, deadline=None)
@given(
    labels=labels_st,
    workers=st.integers(1, 40),
    scheme=st.sampled_from(EQUAL_SIZE),
    alpha=st.floats(0.01, 10.0),
    k=st.integers(1, 3),
    cap=st.one_of(st.none(), st.integers(1, 50)),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_properties(labels, workers, scheme, alpha, k, cap, seed):
    own = {"dirichlet": {"alpha": alpha}, "shards": {"classes_per_worker": k}}.get(scheme, {})
    if workers > len(labels):
        with pytest.raises(UsageError, match=str(workers)):
            partition(labels, workers, scheme, seed=seed, **own)
        return
    kwargs = dict(samples_per_worker=cap, seed=seed, **own)
    try:
        parts = partition(labels, workers, scheme, **kwargs)
    except UsageError as exc:
        # only shards may be infeasible: too few classes, or a class too small for its holders
        assert scheme == "shards", exc
        return
    assert len(parts) == workers
    assert_valid(parts, len(labels))
    expected = len(labels) // workers if cap is None else min(cap, len(labels) // workers)
    if scheme == "shards":
        assert len(parts[0]) <= expected and len(parts[0]) % k == 0
        for p in parts:
            _, counts = np.unique(labels[p], return_counts=True)
            assert len(counts) == k and np.all(counts == counts[0])
    else:
        assert len(parts[0]) == expected
    again = partition(labels, workers, scheme, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@settings(max_examples=80, deadline=None)
@given(
    classes=st.integers(1, 8),
    per_class=st.integers(1, 40),
    workers=st.integers(1, 40),
    k=st.integers(1, 8),
    seed=st.integers(0, 1000),
)
def test_shards_balanced_labels_never_fail(classes, per_class, workers, k, seed):
    """With equal class sizes and workers <= per-class size, shards always has a solution."""
    k = min(k, classes)
    workers = min(workers, per_class)
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))
    parts = partition(labels, workers, "shards", classes_per_worker=k, seed=seed)
    assert_valid(parts, len(labels))
    for p in parts:
        _, counts = np.unique(labels[p], return_counts=True)
        assert len(counts) == k and len(set(counts.tolist())) == 1


def test_shards_exact_classes_and_balanced_usage():
    labels = np.repeat(np.arange(10), 600)
    parts = partition(labels, 25, "shards", classes_per_worker=3, seed=3)
    holders = np.zeros(10, int)
    for p in parts:
        cls, counts = np.unique(labels[p], return_counts=True)
        assert len(cls) == 3
        assert np.all(counts == counts[0])
        holders[cls] += 1
    assert holders.max() - holders.min() <= 1  # 75 slots over 10 classes: 7 or 8 holders each
    assert len(parts[0]) == 3 * (600 // 8)


def test_iid_and_dirichlet_use_all_labels_values():
    labels = np.array([-3, 7, 7, 100, -3, 100, 7, -3] * 5)
    for scheme in ("iid", "dirichlet"):
        parts = partition(labels, 4, scheme, seed=1)
        assert_valid(parts, len(labels))
        assert sum(len(p) for p in parts) == len(labels)


def test_samples_per_worker_caps_size():
    labels = np.repeat(np.arange(5), 100)
    for scheme in EQUAL_SIZE:
        parts = partition(labels, 10, scheme, samples_per_worker=20, seed=0)
        assert {len(p) for p in parts} == {20}


def test_seed_changes_result():
    labels = np.repeat(np.arange(10), 100)
    a = partition(labels, 10, "dirichlet", seed=0)
    b = partition(labels, 10, "dirichlet", seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _dominant_classes(labels, parts, share=0.9):
    """Mean number of classes needed to cover `share` of a worker's samples."""
    out = []
    for p in parts:
        counts = np.sort(np.bincount(labels[p], minlength=10))[::-1]
        out.append(int(np.searchsorted(np.cumsum(counts), share * len(p))) + 1)
    return float(np.mean(out))


def test_dirichlet_large_fast_and_skewed():
    labels = np.random.default_rng(0).integers(0, 10, 60_000)
    start = time.perf_counter()
    parts = partition(labels, 1000, "dirichlet", alpha=0.05, seed=0)
    assert time.perf_counter() - start < 10.0
    assert len(parts) == 1000
    assert_valid(parts, len(labels))
    assert {len(p) for p in parts} == {60}
    loose = partition(labels, 1000, "dirichlet", alpha=5.0, seed=0)
    assert _dominant_classes(labels, parts) < _dominant_classes(labels, loose) - 2


def test_dirichlet_tiny_alpha_terminates_and_fills_everything():
    """alpha so small that q underflows to one-hot (or all-zero) still ends with full workers."""
    labels = np.repeat(np.arange(4), [5, 50, 500, 45])
    parts = partition(labels, 20, "dirichlet", alpha=1e-6, seed=2)
    assert_valid(parts, len(labels))
    assert sum(len(p) for p in parts) == len(labels)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(workers=2, scheme="natural"), "natural"),
        (dict(workers=2, scheme="bogus"), "bogus"),
        (dict(workers=0, scheme="iid"), "got 0"),
        (dict(workers=-3, scheme="iid"), "got -3"),
        (dict(workers=41, scheme="iid"), "workers=41"),
        (dict(workers=2, scheme="dirichlet", alpha=0.0), "got 0.0"),
        (dict(workers=2, scheme="dirichlet", alpha=-1.5), "got -1.5"),
        (
            dict(workers=2, scheme="iid", samples_per_worker=0),
            "samples_per_worker must be >= 1 or unset, got 0",
        ),
        (dict(workers=2, scheme="shards", classes_per_worker=5), "got 5"),
        (dict(workers=2, scheme="shards", classes_per_worker=0), "got 0"),
    ],
)
def test_partition_errors(kwargs, needle):
    labels = np.repeat(np.arange(4), 10)
    with pytest.raises(UsageError) as info:
        partition(labels, **kwargs)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(UsageError) as info:
        partition(np.zeros(10, int), 2, "natural")
    for name in PARTITIONS:
        assert name in str(info.value)


def test_shards_error_when_a_class_cannot_feed_its_workers():
    labels = np.array([0] * 100 + [1] * 2)
    with pytest.raises(UsageError, match="class 1"):
        partition(labels, 10, "shards", classes_per_worker=2)


def test_split_follows_train_proportions_and_is_disjoint():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 10, 6000)
    test = rng.integers(0, 10, 3000)
    parts = partition(train, 20, "dirichlet", alpha=0.3, seed=0)
    train_labels = [train[p] for p in parts]
    splits = make_test_split(train_labels, test, 0.2, seed=0)
    for y, idx in zip(train_labels, splits, strict=True):
        want = np.floor(0.2 * np.bincount(y, minlength=10) + 0.5).astype(int)
        assert np.array_equal(np.bincount(test[idx], minlength=10), want)
        assert idx.dtype == np.int64 and len(np.unique(idx)) == len(idx)
    every = np.concatenate(splits)
    assert len(np.unique(every)) == len(every)  # 1200 wanted from a pool of 3000
    again = make_test_split(train_labels, test, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(splits, again, strict=True))


def test_split_wraps_only_across_workers_when_pool_is_small():
    test = np.repeat(np.arange(2), 5)
    train_labels = [np.repeat(np.arange(2), 4)] * 4  # each wants 4 of each class; pool has 5
    splits = make_test_split(train_labels, test, 1.0, seed=1)
    for idx in splits:
        assert len(idx) == 8 and len(np.unique(idx)) == 8
    every = np.concatenate(splits)
    assert np.bincount(every, minlength=10).max() - np.bincount(every, minlength=10).min() <= 1


def test_split_caps_demand_at_pool_size_and_gives_at_least_one():
    test = np.array([0, 0, 1])
    splits = make_test_split([np.zeros(50, int), np.ones(2, int)], test, 0.1, seed=0)
    assert sorted(splits[0].tolist()) == [0, 1]  # wants 5 of class 0, only 2 exist
    assert np.array_equal(test[splits[1]], [1])  # round(0.2) = 0 -> still one sample


@settings(max_examples=60, deadline=None)
@given(
    train=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=40), min_size=1, max_size=8),
    test=st.lists(st.integers(0, 4), min_size=5, max_size=60),
    ratio=st.floats(0.05, 2.0),
    seed=st.integers(0, 100),
)
def test_split_properties(train, test, ratio, seed):
    test = np.array(test)
    train_labels = [np.array(t) for t in train]
    try:
        splits = make_test_split(train_labels, test, ratio, seed=seed)
    except UsageError:
        assert any(not set(t) & set(test.tolist()) for t in train)
        return
    pool = np.bincount(test, minlength=5)
    demand = []
    for y, idx in zip(train_labels, splits, strict=True):
        assert len(idx) >= 1 and len(np.unique(idx)) == len(idx)
        assert idx.min() >= 0 and idx.max() < len(test)
        want = np.minimum(np.floor(ratio * np.bincount(y, minlength=5) + 0.5), pool)
        got = np.bincount(test[idx], minlength=5)
        if want.sum() > 0:
            assert np.array_equal(got, want)
        demand.append(got)
    total = np.sum(demand, axis=0)
    for c in np.flatnonzero(total <= pool):
        chosen = np.concatenate([idx[test[idx] == c] for idx in splits])
        assert len(np.unique(chosen)) == len(chosen)


def test_split_errors():
    with pytest.raises(UsageError, match="-0.5"):
        make_test_split([np.zeros(3, int)], np.zeros(3, int), -0.5)
    with pytest.raises(UsageError, match="worker 0"):
        make_test_split([np.full(3, 7)], np.zeros(3, int), 0.5)


# --- dirichlet_classwise (Hsu et al. 2019) and natural ------------------------------------------


def classwise_or_error(labels, workers, alpha, cap, seed):
    """The partition, or None after checking that the refusal is one line naming alpha."""
    try:
        return partition(labels, workers, "dirichlet_classwise", alpha=alpha,
                         samples_per_worker=cap, seed=seed)  # fmt: skip
    except UsageError as exc:
        assert f"alpha={alpha}" in str(exc) and "\n" not in str(exc)
        return None


@settings(max_examples=120, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=20, max_size=400).map(np.array),
    workers=st.integers(1, 20),
    alpha=st.one_of(st.floats(1e-6, 10.0), st.sampled_from([1e-300, 1e-12, 0.01])),
    cap=st.one_of(st.none(), st.integers(1, 50)),
    seed=st.integers(0, 2**32 - 1),
)
def test_classwise_properties(labels, workers, alpha, cap, seed):
    """Disjoint, covering (all samples, or workers * cap when the cap binds), every worker holds
    at least min(10, half a mean share), deterministic in the seed; tiny alpha terminates."""
    workers = min(workers, len(labels))
    parts = classwise_or_error(labels, workers, alpha, cap, seed)
    if parts is None:
        return
    every = np.concatenate(parts)
    assert len(parts) == workers and len(np.unique(every)) == len(every)
    assert every.min() >= 0 and every.max() < len(labels)
    n = len(labels) // workers if cap is None else min(cap, len(labels) // workers)
    assert len(every) == (len(labels) if n == len(labels) // workers else workers * n)
    assert min(len(p) for p in parts) >= min(10, max(1, len(every) // (2 * workers)))
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
    again = classwise_or_error(labels, workers, alpha, cap, seed)
    assert again is not None and all(
        np.array_equal(a, b) for a, b in zip(parts, again, strict=True)
    )


def test_classwise_sizes_differ_and_skew_follows_alpha():
    labels = np.random.default_rng(0).integers(0, 10, 20_000)
    skewed = partition(labels, 50, "dirichlet_classwise", alpha=0.1, samples_per_worker=None)
    loose = partition(labels, 50, "dirichlet_classwise", alpha=100.0, samples_per_worker=None)
    sizes = [len(p) for p in skewed]
    assert sum(sizes) == 20_000 and max(sizes) > 2 * min(sizes)
    assert _dominant_classes(labels, skewed) < _dominant_classes(labels, loose) - 3
    other_seed = partition(labels, 50, "dirichlet_classwise", alpha=0.1, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(skewed, other_seed, strict=True))


def test_classwise_cap_means_average_size():
    labels = np.repeat(np.arange(10), 1000)
    parts = partition(labels, 20, "dirichlet_classwise", alpha=0.5, samples_per_worker=100)
    assert sum(len(p) for p in parts) == 2000 and len({len(p) for p in parts}) > 1


def test_classwise_tiny_alpha_many_workers_stops_quickly():
    labels = np.random.default_rng(1).integers(0, 10, 60_000)
    start = time.perf_counter()
    with pytest.raises(UsageError, match="alpha=1e-06") as info:
        partition(labels, 1000, "dirichlet_classwise", alpha=1e-6, samples_per_worker=None)
    assert time.perf_counter() - start < 30.0 and "\n" not in str(info.value)


def test_classwise_test_splits_follow_each_workers_labels():
    """Through partitioned(): unequal train sizes, each test split in its worker's proportions."""
    from repgossip.config import build_config
    from repgossip.data.federation import partitioned

    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 10, 6000), rng.integers(0, 10, 3000)
    x_train, x_test = np.zeros((6000, 2), np.float32), np.zeros((3000, 2), np.float32)
    cfg = build_config({"dataset": "synthetic", "partition": "dirichlet_classwise", "alpha": 0.3,
                        "workers": 12, "samples_per_worker": None})  # fmt: skip
    fed = partitioned(x_train, y_train, x_test, y_test, cfg)
    sizes = fed.train_sizes()
    assert len(set(sizes)) > 1 and sum(sizes) == 6000
    ratio = (3000 // 12) / (6000 / 12)
    for train, test in zip(fed.train_y, fed.test_y, strict=True):
        want = np.floor(ratio * np.bincount(train.numpy(), minlength=10) + 0.5)
        assert np.array_equal(np.bincount(test.numpy(), minlength=10), want)


def test_natural_is_registered_and_refused_without_users():
    assert "natural" in PARTITIONS and "dirichlet_classwise" in PARTITIONS
    with pytest.raises(UsageError) as info:
        partition(np.repeat(np.arange(3), 10), 3, "natural")
    message = str(info.value)
    assert "hapt" in message and "dirichlet_classwise" in message and "\n" not in message


def test_a_scheme_refuses_another_schemes_parameter_in_one_line():
    with pytest.raises(
        UsageError, match="partition 'shards' takes no alpha; it takes: classes_per"
    ):
        partition(np.arange(10) % 2, 2, "shards", alpha=0.1)
