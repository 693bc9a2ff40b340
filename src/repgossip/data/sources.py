"""Offline data sources: Fashion-MNIST from IDX files, and the synthetic linear-representation task.

Nothing here downloads: a missing file is a one-line UsageError saying where we looked and how to
get it, never a crash-then-retry.
"""

from __future__ import annotations

import errno
import functools
import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from repgossip import memory
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
IDX_MAX_DIMS = 4  # Fashion-MNIST needs 3 (images) and 1 (labels); numpy allows at most 64
# Bytes a loaded image byte costs: the uint8 file, its normalized float32 copy, the workers' shares.
_BYTES_PER_PIXEL = 1 + 2 * memory.FLOAT_BYTES


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

    Looks only in `data_dir` when it is given (a user who names a folder means that copy), else in
    FMNIST_DIRS; each file may be plain or gzipped.
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
    """The four files from `data_dir` alone when it is given, else from the first system
    directory that holds all of them. Falling back from a data_dir to the system copy would
    silently train on other data than the user named."""
    if data_dir:
        return _files_in_data_dir(Path(os.path.expanduser(data_dir)))
    first_missing = None
    for d in FMNIST_DIRS:
        found = [_find_file(Path(d), name) for name in FMNIST_FILES]
        present = [p for p in found if p is not None]
        if len(present) == len(found):
            return [p.resolve() for p in present]
        if first_missing is None:
            first_missing = FMNIST_FILES[found.index(None)]
    raise UsageError(
        f"Fashion-MNIST file {first_missing!r} (or .gz) not found in {', '.join(FMNIST_DIRS)}; "
        f"{_HOW_TO_GET}"
    )


def _files_in_data_dir(directory: Path) -> list[Path]:
    """The four files inside the user's data_dir, or one line naming the first one missing."""
    where = f"data_dir {str(directory)!r}"
    if not _is_dir(directory):
        raise UsageError(f"{where} is not a directory; {_HOW_TO_GET}")
    found = [_find_file(directory, name) for name in FMNIST_FILES]
    if None in found:
        missing = FMNIST_FILES[found.index(None)]
        raise UsageError(
            f"Fashion-MNIST file {missing!r} (or .gz) not found in {where} (only data_dir is "
            "searched when it is given); put the four IDX files there, or unset data_dir to use "
            "the system copy (apt-get install dataset-fashion-mnist)"
        )
    return [p.resolve() for p in found if p is not None]


def _is_dir(path: Path) -> bool:
    """path.is_dir(), but a path the OS refuses to look up (a name over 255 bytes) is one line."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise _lookup_error(path, exc) from None


def _lookup_error(path: Path, exc: OSError) -> UsageError:
    """The one-line error for a path that is/stat cannot even look up (ENAMETOOLONG, EACCES)."""
    hint = "; each name in a path may have at most 255 bytes"
    reason = (exc.strerror or str(exc)) + (hint if exc.errno == errno.ENAMETOOLONG else "")
    return UsageError(f"cannot look up Fashion-MNIST path {str(path)!r}: {reason}")


def _find_file(directory: Path, name: str) -> Path | None:
    """`name` or `name.gz` inside `directory`, preferring the plain file (faster to read)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        try:
            if candidate.is_file():
                return candidate
        except OSError as exc:
            raise _lookup_error(candidate, exc) from None
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

    The header is read and checked first (at most IDX_MAX_DIMS dims, a payload that matches the
    file's size and fits in memory), so a corrupt or hostile header never leads to a huge read,
    a gzip bomb's expansion, or a reshape numpy refuses. Read-only because it is cached and shared
    between callers.
    """
    try:
        with _open_idx(path) as f:
            header, dims = _read_idx_header(path, f)
            payload_size = math.prod(dims)
            _check_payload(path, header, dims)
            payload = f.read(payload_size + 1)  # one byte more reveals trailing garbage
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(
            f"{path}: cannot read ({' '.join(str(exc).split())}); the file is corrupt, re-install it"
        ) from None
    if len(payload) != payload_size:
        _size_mismatch(path, header + len(payload), dims)
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _open_idx(path: Path) -> BinaryIO:
    """The file as a binary stream, gunzipped on the fly if its name ends in .gz."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _read_idx_header(path: Path, f: BinaryIO) -> tuple[int, tuple[int, ...]]:
    """(header size, dims) from the magic number 0x00 0x00 0x08 ndim and ndim big-endian u32."""
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08:
        raise UsageError(f"{path}: not an unsigned-byte IDX file (bad magic number {magic!r})")
    ndim = magic[3]
    if not 1 <= ndim <= IDX_MAX_DIMS:
        raise UsageError(f"{path}: corrupt IDX header ({ndim} dims; valid: 1 to {IDX_MAX_DIMS})")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise UsageError(f"{path}: corrupt IDX header ({ndim} dims, {4 + len(raw)} bytes)")
    return 4 + 4 * ndim, tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))


def _check_payload(path: Path, header: int, dims: tuple[int, ...]) -> None:
    """Before reading the payload: a plain file's size must match the dims, and the array (with
    its normalized copy) must fit in memory; a .gz file's size says nothing about its content."""
    if path.suffix != ".gz":
        size = path.stat().st_size
        if size != header + math.prod(dims):
            _size_mismatch(path, size, dims)
    memory.check_fits(
        math.prod(dims) * _BYTES_PER_PIXEL,
        f"{path}: an IDX array of dims {dims}",
        "the file is corrupt or not Fashion-MNIST; re-install it",
    )


def _size_mismatch(path: Path, size: int, dims: tuple[int, ...]) -> NoReturn:
    expected = 4 + 4 * len(dims) + math.prod(dims)
    raise UsageError(
        f"{path}: truncated or corrupt IDX file: {size} bytes, expected {expected} for dims {dims}"
    )


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
    memory.check_fits(
        memory.synthetic_bytes(workers, dim, rank, samples_per_worker, n_test),
        f"the synthetic task ({memory.int_text(workers)} workers x "
        f"{memory.int_text(samples_per_worker)} + {memory.int_text(n_test)} samples x dim "
        f"{memory.int_text(dim)})",
        "use fewer workers, a smaller samples_per_worker or a smaller dim",
    )
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
