"""Offline data sources: Fashion-MNIST from IDX files, and the synthetic linear-representation task.

Nothing here downloads: a missing file is a one-line UsageError saying where we looked and how to
get it, never a crash-then-retry.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repgossip.errors import UsageError

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
FMNIST_CLASSES = 10
_HOW_TO_GET = (
    "apt-get install dataset-fashion-mnist, "
    "or put the four IDX files (optionally .gz) into data_dir"
)


@dataclass
class ArrayDataset:
    """A centralized dataset before partitioning; x is float32 and normalized, y is int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]


def load_fmnist(data_dir: str | None = None) -> ArrayDataset:
    """Fashion-MNIST as (n, 1, 28, 28) float32, normalized with the usual mean 0.2860 / std 0.3530.

    Looks in `data_dir` first (if given), then FMNIST_DIRS; each file may be plain or gzipped.
    The parsed uint8 arrays are cached per file set, and normalized afresh on each call, so callers
    get arrays they may modify without corrupting the cache.
    """
    paths = _find_fmnist_files(data_dir)
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    x_tr, y_tr, x_te, y_te = _read_fmnist(key)
    return ArrayDataset(
        x_train=_normalize(x_tr),
        y_train=y_tr.astype(np.int64),
        x_test=_normalize(x_te),
        y_test=y_te.astype(np.int64),
        num_classes=FMNIST_CLASSES,
        input_shape=(1, *x_tr.shape[1:]),
    )


def _find_fmnist_files(data_dir: str | None) -> list[Path]:
    """The four files from the first directory that holds all of them."""
    dirs = ([os.path.expanduser(data_dir)] if data_dir else []) + list(FMNIST_DIRS)
    first_missing = None
    for d in dirs:
        found = [_find_file(Path(d), name) for name in FMNIST_FILES]
        present = [p for p in found if p is not None]
        if len(present) == len(found):
            return [p.resolve() for p in present]
        if first_missing is None:
            first_missing = FMNIST_FILES[found.index(None)]
    raise UsageError(
        f"Fashion-MNIST file {first_missing!r} (or .gz) not found in {', '.join(dirs)}; "
        f"{_HOW_TO_GET}"
    )


def _find_file(directory: Path, name: str) -> Path | None:
    """`name` or `name.gz` inside `directory`, preferring the plain file (faster to read)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _read_fmnist(key: tuple) -> tuple[np.ndarray, ...]:
    """Parse and validate the four files; keyed by (path, mtime, size) so edited files re-read."""
    paths = [Path(p) for p, _, _ in key]
    x_tr, y_tr, x_te, y_te = (_read_idx(p) for p in paths)
    _check_pair(x_tr, y_tr, paths[0], paths[1])
    _check_pair(x_te, y_te, paths[2], paths[3])
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise UsageError(
            f"{paths[2]}: test images are {x_te.shape[1:]} but train images are "
            f"{x_tr.shape[1:]}; both must be the same size"
        )
    return x_tr, y_tr, x_te, y_te


def _check_pair(x: np.ndarray, y: np.ndarray, x_path: Path, y_path: Path) -> None:
    """Images must be (n, rows, cols), labels (n,) with values in 0..9."""
    if x.ndim != 3:
        raise UsageError(f"{x_path}: expected 3-D images (n, rows, cols), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise UsageError(f"{y_path}: expected {len(x)} labels (one per image), got shape {y.shape}")
    if y.size and y.max() >= FMNIST_CLASSES:
        raise UsageError(f"{y_path}: label {int(y.max())} out of range; valid 0..9")


def _normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (n, rows, cols) -> float32 (n, 1, rows, cols), scaled to [0,1] then standardized."""
    x = images.astype(np.float32)[:, None]
    x *= np.float32(1.0 / (255.0 * FMNIST_STD))  # in place: one 190 MB allocation, not three
    x -= np.float32(FMNIST_MEAN / FMNIST_STD)
    return x


def _read_idx(path: Path) -> np.ndarray:
    """A read-only uint8 IDX array (plain or .gz), validating magic, dims and payload size.

    Read-only because it is cached and shared between callers.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UsageError(f"{path}: not an unsigned-byte IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise UsageError(f"{path}: corrupt IDX header ({ndim} dims, {len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise UsageError(
            f"{path}: truncated or corrupt IDX file: {len(data)} bytes, expected {expected} "
            f"for dims {dims}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped if the name ends in .gz; a broken gzip stream is a UsageError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(
            f"{path}: cannot read ({exc}); the file is corrupt, re-install it"
        ) from None


@dataclass
class SyntheticTask:
    """The DePRL/FedRep synthetic task: y = theta_i*^T B*^T x + noise * eps.

    b_star (d, k) float64 has orthonormal columns (the shared representation); theta_star (N, k)
    float64 holds the per-worker heads, each ~ N(0, I_k), so the noiseless y has variance ~ k.
    Per-worker x are (n_i, d) float32 and y (n_i,) float32.
    """

    b_star: np.ndarray
    theta_star: np.ndarray
    x_train: list[np.ndarray]
    y_train: list[np.ndarray]
    x_test: list[np.ndarray]
    y_test: list[np.ndarray]


def make_synthetic(
    workers: int,
    dim: int,
    rank: int,
    samples_per_worker: int,
    noise: float,
    test_samples_per_worker: int | None = None,
    seed: int = 0,
) -> SyntheticTask:
    """Generate the task: x ~ N(0, I_d), B* = Q of a Gaussian (d, k), theta_i* ~ N(0, I_k).

    Deterministic in `seed`. The test split comes from the same worker's model (default size:
    samples_per_worker), so it measures personalized generalization.
    """
    n_test = samples_per_worker if test_samples_per_worker is None else test_samples_per_worker
    _check_synthetic(workers, dim, rank, samples_per_worker, n_test, noise)
    rng = np.random.default_rng(seed)
    b_star, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    theta = rng.standard_normal((workers, rank))
    task = SyntheticTask(b_star, theta, [], [], [], [])
    for i in range(workers):
        w = b_star @ theta[i]
        x, y = _draw_linear(rng, w, samples_per_worker, noise)
        task.x_train.append(x)
        task.y_train.append(y)
        x, y = _draw_linear(rng, w, n_test, noise)
        task.x_test.append(x)
        task.y_test.append(y)
    return task


def _draw_linear(
    rng: np.random.Generator, w: np.ndarray, n: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """n samples of y = w^T x + noise * eps; y is computed from the float32 x that is returned."""
    x = rng.standard_normal((n, len(w))).astype(np.float32)
    y = x.astype(np.float64) @ w + noise * rng.standard_normal(n)
    return x, y.astype(np.float32)


def _check_synthetic(
    workers: int, dim: int, rank: int, samples: int, test_samples: int, noise: float
) -> None:
    """All sizes positive integers, rank <= dim, noise a finite number >= 0."""
    sizes = {
        "workers": workers,
        "dim": dim,
        "rank": rank,
        "samples_per_worker": samples,
        "test_samples_per_worker": test_samples,
    }
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    if rank > dim:
        raise UsageError(f"rank must be <= dim={dim}, got rank={rank}")
    if not (np.isfinite(noise) and noise >= 0):
        raise UsageError(f"noise must be a finite number >= 0, got {noise}")
