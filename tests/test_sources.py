"""Fashion-MNIST IDX loading (on tiny generated files, and the real ones when installed) and the
synthetic linear-representation task."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from repgossip.data import sources
from repgossip.data.sources import FMNIST_DIRS, load_fmnist, make_synthetic
from repgossip.errors import UsageError

NAMES = sources.FMNIST_FILES


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x00 0x00 0x08 ndim, big-endian dims, payload."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_fake_fmnist(directory: Path, gz: bool, n_train: int = 40, n_test: int = 20) -> dict:
    """Four tiny IDX files in `directory`; returns the arrays written, by file name."""
    rng = np.random.default_rng(7)
    arrays = {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (directory / name).write_bytes(idx_bytes(array))
    return arrays


@pytest.fixture
def no_system_dirs(monkeypatch, tmp_path):
    """Hide the system Fashion-MNIST so that error paths are reachable."""
    monkeypatch.setattr(sources, "FMNIST_DIRS", (str(tmp_path / "nowhere"),))


@pytest.mark.parametrize("gz", [False, True])
def test_load_fake_fmnist(tmp_path, gz):
    arrays = write_fake_fmnist(tmp_path, gz)
    data = load_fmnist(str(tmp_path))
    assert data.x_train.shape == (40, 1, 28, 28) and data.x_test.shape == (20, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert np.array_equal(data.y_train, arrays[NAMES[1]])
    assert np.array_equal(data.y_test, arrays[NAMES[3]])
    expected = (arrays[NAMES[2]][:, None] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(data.x_test, expected, rtol=1e-5, atol=1e-5)


def test_load_returns_fresh_writable_arrays(tmp_path):
    write_fake_fmnist(tmp_path, gz=True)
    first = load_fmnist(str(tmp_path))
    first.x_train[:] = 0.0
    first.y_train[:] = 0
    second = load_fmnist(str(tmp_path))
    assert second.x_train.std() > 0.5 and second.y_train.any()


def test_mixed_plain_and_gz(tmp_path):
    arrays = write_fake_fmnist(tmp_path, gz=True)
    gz_file = tmp_path / f"{NAMES[3]}.gz"
    (tmp_path / NAMES[3]).write_bytes(gzip.decompress(gz_file.read_bytes()))
    gz_file.unlink()
    assert np.array_equal(load_fmnist(str(tmp_path)).y_test, arrays[NAMES[3]])


def test_missing_file_error(tmp_path, no_system_dirs):
    write_fake_fmnist(tmp_path, gz=False)
    (tmp_path / NAMES[2]).unlink()
    with pytest.raises(UsageError) as info:
        load_fmnist(str(tmp_path))
    message = str(info.value)
    assert NAMES[2] in message and str(tmp_path) in message
    assert "nowhere" not in message  # a given data_dir is the only place looked at
    assert "dataset-fashion-mnist" in message and "data_dir" in message and "\n" not in message


def test_missing_everything_without_data_dir(no_system_dirs):
    with pytest.raises(UsageError, match="dataset-fashion-mnist"):
        load_fmnist()


@pytest.mark.parametrize(
    ("corrupt", "needle"),
    [
        (lambda b: b[:-10], "truncated"),
        (lambda b: b"\x00\x00\x0d\x03" + b[4:], "magic"),
        (lambda b: b[:6], "corrupt"),
        (lambda b: b + b"extra", "truncated or corrupt"),
    ],
)
def test_corrupt_idx_error_names_file(tmp_path, no_system_dirs, corrupt, needle):
    write_fake_fmnist(tmp_path, gz=False)
    path = tmp_path / NAMES[0]
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(UsageError, match=needle) as info:
        load_fmnist(str(tmp_path))
    assert NAMES[0] in str(info.value)


def test_broken_gzip_error_names_file(tmp_path, no_system_dirs):
    write_fake_fmnist(tmp_path, gz=True)
    path = tmp_path / f"{NAMES[1]}.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UsageError) as info:
        load_fmnist(str(tmp_path))
    assert NAMES[1] in str(info.value)


def test_label_count_mismatch(tmp_path, no_system_dirs):
    write_fake_fmnist(tmp_path, gz=False)
    (tmp_path / NAMES[1]).write_bytes(idx_bytes(np.zeros(39, np.uint8)))
    with pytest.raises(UsageError, match="40 labels"):
        load_fmnist(str(tmp_path))


def test_label_out_of_range(tmp_path, no_system_dirs):
    write_fake_fmnist(tmp_path, gz=False)
    (tmp_path / NAMES[3]).write_bytes(idx_bytes(np.full(20, 12, np.uint8)))
    with pytest.raises(UsageError, match="label 12"):
        load_fmnist(str(tmp_path))


def test_data_dir_is_the_only_place_looked_at_when_given(tmp_path, monkeypatch):
    """The system copy is used only without data_dir: a data_dir that misses a file is an error
    naming that file, never a silent switch to other data."""
    system = tmp_path / "system"
    write_fake_fmnist(system, gz=True, n_train=30)
    monkeypatch.setattr(sources, "FMNIST_DIRS", (str(system),))
    assert len(load_fmnist().y_train) == 30
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=NAMES[0]) as info:
        load_fmnist(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(info.value) and str(system) not in str(info.value)
    write_fake_fmnist(tmp_path / "mine", gz=False, n_train=12)
    assert len(load_fmnist(str(tmp_path / "mine")).y_train) == 12


REAL_DIR = FMNIST_DIRS[0]


@pytest.mark.skipif(not os.path.isdir(REAL_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fmnist():
    data = load_fmnist()
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    assert data.num_classes == 10 and set(np.unique(data.y_train)) == set(range(10))
    assert abs(float(data.x_train.mean())) < 0.01
    assert abs(float(data.x_train.std()) - 1.0) < 0.01


def test_synthetic_shapes_and_orthonormal():
    task = make_synthetic(workers=5, dim=12, rank=3, samples_per_worker=30, noise=0.1)
    assert task.b_star.shape == (12, 3) and task.theta_star.shape == (5, 3)
    np.testing.assert_allclose(task.b_star.T @ task.b_star, np.eye(3), atol=1e-12)
    for lists, n in ((task.x_train, 30), (task.x_test, 30)):
        assert len(lists) == 5 and all(x.shape == (n, 12) and x.dtype == np.float32 for x in lists)
    assert all(y.shape == (30,) and y.dtype == np.float32 for y in task.y_train + task.y_test)
    other = make_synthetic(5, 12, 3, 30, 0.1, test_samples_per_worker=7)
    assert all(x.shape == (7, 12) for x in other.x_test)


def test_synthetic_noiseless_is_exact_linear():
    task = make_synthetic(workers=4, dim=8, rank=2, samples_per_worker=25, noise=0.0, seed=3)
    for i in range(4):
        for x, y in ((task.x_train[i], task.y_train[i]), (task.x_test[i], task.y_test[i])):
            truth = x.astype(np.float64) @ task.b_star @ task.theta_star[i]
            np.testing.assert_allclose(y, truth, rtol=1e-6, atol=1e-6)


def test_synthetic_noise_level():
    task = make_synthetic(workers=2, dim=6, rank=2, samples_per_worker=20000, noise=0.5, seed=1)
    resid = task.y_train[0] - task.x_train[0] @ task.b_star @ task.theta_star[0]
    assert abs(float(resid.std()) - 0.5) < 0.02


def test_synthetic_deterministic():
    a = make_synthetic(3, 6, 2, 10, 0.3, seed=11)
    b = make_synthetic(3, 6, 2, 10, 0.3, seed=11)
    c = make_synthetic(3, 6, 2, 10, 0.3, seed=12)
    assert np.array_equal(a.b_star, b.b_star) and np.array_equal(a.theta_star, b.theta_star)
    assert all(np.array_equal(x, y) for x, y in zip(a.y_test, b.y_test, strict=True))
    assert not np.array_equal(a.x_train[0], c.x_train[0])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((0, 6, 2, 10, 0.1), "workers"),
        ((3, -1, 2, 10, 0.1), "-1"),
        ((3, 6, 0, 10, 0.1), "rank"),
        ((3, 6, 7, 10, 0.1), "rank=7"),
        ((3, 6, 2, 0, 0.1), "samples_per_worker"),
        ((3, 6, 2, 10, -0.2), "-0.2"),
        ((3, 6, 2, 10, float("nan")), "nan"),
    ],
)
def test_synthetic_errors(args, needle):
    with pytest.raises(UsageError, match=needle):
        make_synthetic(*args)


def test_synthetic_test_size_error():
    with pytest.raises(UsageError, match="test_samples_per_worker"):
        make_synthetic(2, 4, 2, 10, 0.1, test_samples_per_worker=0)
