"""Random images in CIFAR-10's and Fashion-MNIST's standard file formats, for benchmarks on
machines without the datasets (or without internet): timings do not depend on pixel values.

    python benchmarks/fake_data.py {cifar10,fmnist} FOLDER [--train 2560] [--test 640]

writes them into FOLDER and prints the folder to pass as `data_dir`.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from common import one_line_errors, positive_int

CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then channel-major pixels


def write_cifar10(folder: Path, train: int, test: int, rng: np.random.Generator) -> Path:
    """CIFAR-10's binary version: five training batches and one test batch of random records."""
    root = folder / "cifar-10-batches-bin"
    root.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i + 1}.bin": train // 5 + (i < train % 5) for i in range(5)}
    sizes = batches | {"test_batch.bin": test}
    for name, n in sizes.items():
        records = rng.integers(0, 256, size=(n, CIFAR_RECORD), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, size=n)
        records.tofile(root / name)
    return folder


def write_fmnist(folder: Path, train: int, test: int, rng: np.random.Generator) -> Path:
    """Fashion-MNIST's four gzipped IDX files of random images and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        header = bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">u4").tobytes()
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + np.array([n], ">u4").tobytes() + labels.tobytes())
    return folder


WRITERS = {"cifar10": write_cifar10, "fmnist": write_fmnist}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(WRITERS))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--train", type=positive_int, default=2560)
    parser.add_argument("--test", type=positive_int, default=640)
    args = parser.parse_args()
    if args.folder.exists() and not args.folder.is_dir():
        parser.error(f"{args.folder} is a file, not a folder")
    if args.folder.is_dir() and any(args.folder.iterdir()):
        parser.error(f"{args.folder} is not empty; give a new or empty folder")
    try:
        args.folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"cannot make {args.folder}: {err.strerror}")
    folder = WRITERS[args.dataset](args.folder, args.train, args.test, np.random.default_rng(0))
    print(folder)


if __name__ == "__main__":
    one_line_errors(main)
