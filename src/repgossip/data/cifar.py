"""CIFAR-10 and CIFAR-100 from the files of https://www.cs.toronto.edu/~kriz/cifar.html, offline.

Both of the site's versions are read: the "python version" (pickled dicts, read through the
restricted unpickler, which builds numpy arrays and plain containers and nothing else) and the
"binary version" (fixed-size records, read with numpy alone; preferred when a folder has both,
since it needs no unpickling). `data_dir` may be the folder holding the files or its parent.
Images come out as (n, 3, 32, 32): uint8 from `read_cifar`, normalized float32 from `load_cifar`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repgossip.data.sources import ArrayDataset
from repgossip.data.unpickle import NUMPY_ARRAYS, load_restricted
from repgossip.errors import UsageError
from repgossip.memory import int_text

PIXELS = 3 * 32 * 32
IMAGE_SHAPE = (3, 32, 32)
WHERE_TO_GET = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant's files are and how its labels are stored."""

    title: str
    classes: int
    py_folder: str
    py_train: tuple[str, ...]
    py_test: tuple[str, ...]
    py_label_key: bytes
    bin_folder: str
    bin_train: tuple[str, ...]
    bin_test: tuple[str, ...]
    label_bytes: int  # bytes before the pixels of a binary record
    label_offset: int  # which of them is the label we train on
    mean: tuple[float, float, float]  # per channel, of the training images scaled to [0, 1]
    std: tuple[float, float, float]


_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        "CIFAR-10", 10,
        "cifar-10-batches-py", _BATCHES, ("test_batch",), b"labels",
        "cifar-10-batches-bin", tuple(f"{b}.bin" for b in _BATCHES), ("test_batch.bin",), 1, 0,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarSpec(
        "CIFAR-100", 100,
        "cifar-100-python", ("train",), ("test",), b"fine_labels",
        "cifar-100-binary", ("train.bin",), ("test.bin",), 2, 1,  # (coarse, fine) label bytes
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class CifarFiles:
    binary: bool
    train: tuple[Path, ...]
    test: tuple[Path, ...]


def load_cifar(name: str, data_dir: str | None) -> ArrayDataset:
    """CIFAR-10 or CIFAR-100 (`name`) as (n, 3, 32, 32) float32, normalized per channel with the
    dataset's standard mean and std, and int64 labels (CIFAR-100: the 100 fine labels)."""
    spec = CIFAR[name]
    x_tr, y_tr, x_te, y_te = read_cifar(name, data_dir)
    return ArrayDataset(
        normalize(x_tr, name), y_tr.astype(np.int64), normalize(x_te, name),
        y_te.astype(np.int64), spec.classes, IMAGE_SHAPE,
    )  # fmt: skip


def read_cifar(name: str, data_dir: str | None) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels): read-only uint8 (n, 3, 32, 32)
    images and uint8 labels, cached per file set so a sweep reads the files once."""
    files = find_cifar(name, data_dir)
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files.train + files.test)
    return _read(name, files.binary, len(files.train), key)


def normalize(images: np.ndarray | torch.Tensor, name: str) -> Any:
    """uint8 images (n, 3, 32, 32) -> float32 (x / 255 - mean) / std per channel; a tensor stays a
    tensor, so a dataset can normalize each worker's share after partitioning (less memory)."""
    spec = CIFAR[name]
    mean = np.array(spec.mean, np.float32)[:, None, None]
    std = np.array(spec.std, np.float32)[:, None, None]
    if isinstance(images, torch.Tensor):
        scale, shift = torch.from_numpy(1 / (255 * std)), torch.from_numpy(mean / std)
        return images.float() * scale - shift
    return images.astype(np.float32) * (1 / (255 * std)) - mean / std


def find_cifar(name: str, data_dir: str | None) -> CifarFiles:
    """The files of one version in `data_dir` or in its standard subfolder; binary first."""
    spec = CIFAR[name]
    if not data_dir:
        raise UsageError(f"dataset {name} needs data_dir: {_expected(spec)}")
    root = Path(os.path.expanduser(data_dir))
    if not _is(root, Path.is_dir):
        raise UsageError(f"data_dir {str(root)!r} is not a directory; {_expected(spec)}")
    for folder in (root, root / spec.bin_folder, root / spec.py_folder):
        for binary, train, test in ((True, spec.bin_train, spec.bin_test),
                                    (False, spec.py_train, spec.py_test)):  # fmt: skip
            paths = [folder / f for f in train + test]
            if all(_is(p, Path.is_file) for p in paths):
                resolved = tuple(p.resolve() for p in paths)
                return CifarFiles(binary, resolved[: len(train)], resolved[len(train) :])
    raise UsageError(f"{spec.title} files not found in data_dir {str(root)!r}; {_expected(spec)}")


def _is(path: Path, test: Any) -> bool:
    """path.is_dir() / is_file(), but a path the OS cannot look up (a name over 255 bytes, no
    permission) is one line naming it."""
    try:
        return bool(test(path))
    except OSError as exc:
        raise UsageError(f"cannot look up {str(path)!r}: {exc.strerror or exc}") from None


def _expected(spec: CifarSpec) -> str:
    py = ", ".join((*_ranges(spec.py_train), *spec.py_test))
    binary = ", ".join((*_ranges(spec.bin_train), *spec.bin_test))
    return (
        f"expected {spec.py_folder}/ ({py}) or {spec.bin_folder}/ ({binary}), or those files "
        f"directly in data_dir; get them from {WHERE_TO_GET}"
    )


def _ranges(names: tuple[str, ...]) -> tuple[str, ...]:
    return (f"{names[0]}..{names[-1]}",) if len(names) > 2 else names


@functools.lru_cache(maxsize=2)
def _read(name: str, binary: bool, n_train: int, key: tuple) -> tuple[np.ndarray, ...]:
    """Parse and check every file; keyed by (path, mtime, size), so edited files are re-read."""
    paths = [Path(p) for p, _, _ in key]
    reader = _read_binary if binary else _read_python
    parts = [reader(p, CIFAR[name]) for p in paths]
    out = []
    for chunk in (parts[:n_train], parts[n_train:]):
        x = np.concatenate([c[0] for c in chunk]).reshape(-1, *IMAGE_SHAPE)
        y = np.concatenate([c[1] for c in chunk])
        x.flags.writeable = y.flags.writeable = False  # shared by the cache
        out += [x, y]
    return tuple(out)


def _read_binary(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Records of `label_bytes` label bytes and 3072 pixel bytes (channel-major, row-major)."""
    record = spec.label_bytes + PIXELS
    size = path.stat().st_size
    if size == 0 or size % record:
        raise UsageError(
            f"{path}: {size} bytes is not a whole number of {record}-byte {spec.title} records; "
            f"the file is truncated or not {spec.title}, get it again from {WHERE_TO_GET}"
        )
    try:
        rows = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    labels = rows[:, spec.label_offset]
    _check_labels(labels, spec, path)
    return rows[:, spec.label_bytes :], labels


def _read_python(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """A pickled dict {b"data": (n, 3072) uint8, b"labels" or b"fine_labels": n ints}, unpickled
    with numpy arrays as the only classes allowed."""
    batch = load_restricted(path, NUMPY_ARRAYS, encoding="bytes", what=str(path))
    key = spec.py_label_key
    if not isinstance(batch, dict):
        raise UsageError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _entry(batch, b"data", path), _entry(batch, key, path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == PIXELS):  # fmt: skip
        shape = getattr(data, "shape", type(data).__name__)
        raise UsageError(f"{path}: b'data' must be an (n, {PIXELS}) uint8 array, got {shape}")
    labels = _label_array(labels, len(data), key, spec, path)
    _check_labels(labels, spec, path)
    return data, labels.astype(np.uint8)


def _entry(batch: dict, key: bytes, path: Path) -> Any:
    """batch[key], also under its str spelling (a file re-pickled by Python 3)."""
    for k in (key, key.decode()):
        if k in batch:
            return batch[k]
    keys = ", ".join(repr(k)[:40] for k in sorted(batch, key=str)[:10])
    raise UsageError(f"{path}: the pickled dict has no {key!r}; keys: {keys}")


def _label_array(labels: Any, n: int, key: bytes, spec: CifarSpec, path: Path) -> np.ndarray:
    """The labels as a 1-D integer array of one label per image, each a class index (a list's
    ints are checked before numpy sees them: one of 2^70 would not fit an int64)."""
    if isinstance(labels, list) and all(type(v) is int for v in labels):
        _check_labels(labels, spec, path)
        labels = np.array(labels, dtype=np.int64)
    if not (isinstance(labels, np.ndarray) and labels.ndim == 1 and len(labels) == n
            and np.issubdtype(labels.dtype, np.integer)):  # fmt: skip
        raise UsageError(f"{path}: {key!r} must be {n} integer labels, one per image")
    return labels


def _check_labels(labels: np.ndarray | list[int], spec: CifarSpec, path: Path) -> None:
    if not len(labels):
        return
    if isinstance(labels, np.ndarray):
        low, high = labels.min(), labels.max()
    else:
        low, high = min(labels), max(labels)
    if low < 0 or high >= spec.classes:
        bad = int(high if high >= spec.classes else low)
        raise UsageError(
            f"{path}: label {int_text(bad)} out of range; {spec.title} has 0..{spec.classes - 1}"
        )
