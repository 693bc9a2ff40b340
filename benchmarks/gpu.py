"""The GPU check, one prepared script for a session that has a GPU machine (see docs/performance.md).

    python benchmarks/gpu.py --out benchmarks/results/gpu.json     # on the GPU machine
    python benchmarks/gpu.py --device cpu --workers 4 --samples 8  # a dry run of the plumbing

1. sim == dist on the device: the same small vgg11 run in one process and under torchrun
   (NCCL on CUDA: 2 ranks on 2 GPUs, else 1 rank), per-worker numbers compared bit for bit
   (network-wide means only to their summation order: `aggregates_max_rel_diff`).
2. Seconds per round, ratio to the compute bound and peak GPU memory of `repgossip bench`'s
   measurement for `--workers` workers of vgg11 (CIFAR-10 shapes) and of the cnn (Fashion-MNIST).

The machine has no internet, so the data are random images in the standard file formats, written
to a temporary folder: timings and equality do not depend on pixel values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import positive_int
from fake_data import write_cifar10, write_fmnist

from repgossip.bench import measure
from repgossip.config import build_config


def _settings(**keys: Any) -> list[str]:
    return [f"{k}={v}" for k, v in keys.items()]


def sim_equals_dist(device: str, data_dir: Path, work: Path) -> dict[str, Any]:
    """The same vgg11 run under engine=sim and under torchrun; per-worker numbers compared."""
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    ranks = 2 if gpus >= 2 or device == "cpu" else 1
    common = _settings(dataset="cifar10", data_dir=data_dir, model="vgg11", workers=8,
                       samples_per_worker=32, rounds=2, device=device)  # fmt: skip
    runs = {
        "sim": [sys.executable, "-m", "repgossip", "run", "--quiet", "--set", *common,
                "engine=sim", "--out", str(work / "sim")],
        "dist": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={ranks}", "-m", "repgossip", "run", "--quiet", "--set",
                 *common, "engine=dist", "--out", str(work / "dist")],
    }  # fmt: skip
    summaries = {}
    for name, command in runs.items():
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            return {
                "ranks": ranks,
                "equal": False,
                "error": f"{name}: {done.stderr.strip()[-500:]}",
            }
        summaries[name] = json.loads((work / name / "summary.json").read_text())
    sim, dist = summaries["sim"], summaries["dist"]
    # Per-worker numbers come from each worker's own parameters: equal bit for bit where the
    # parameters are. Network-wide means (consensus_dist, train_loss) are sums whose order
    # depends on the ranks, so they may differ in the last digits.
    keys = ("per_worker_acc", "per_worker_test_loss")
    aggregates = [k for k, v in sim.items() if isinstance(v, float) and k != "wall_s"]
    largest = max(abs(sim[k] - dist[k]) / max(abs(sim[k]), 1e-300) for k in aggregates)
    return {"ranks": ranks, "equal": all(sim[k] == dist[k] for k in keys),
            "compared": list(keys), "aggregates_max_rel_diff": largest}  # fmt: skip


def timing(device: str, model: str, dataset: str, data_dir: Path, args: argparse.Namespace) -> dict:
    """`repgossip bench`'s measurement in this process, with the device's peak memory."""
    cfg = build_config({"dataset": dataset, "data_dir": str(data_dir), "model": model,
                        "workers": args.workers, "samples_per_worker": args.samples,
                        "device": device})  # fmt: skip
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = measure(cfg, rounds_measured=args.rounds_measured)
    keep = ("s_per_round", "bound_s", "ratio", "samples_per_s", "peak_rss_mb", "model_params")
    out = {"model": model, "workers": args.workers, **{k: result[k] for k in keep}}
    if device == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--workers", type=positive_int, default=128)
    parser.add_argument("--samples", type=positive_int, default=50, help="samples per worker")
    parser.add_argument("--rounds-measured", type=positive_int, default=3)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu runs the plumbing on the CPU")
    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists; remove it or choose another --out")
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: no folder {args.out.parent}")
    rng = np.random.default_rng(0)
    found: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        samples = max(args.workers * args.samples, 8 * 32)
        cifar = write_cifar10(work / "cifar", samples, samples, rng)
        fmnist = write_fmnist(work / "fmnist", samples, samples, rng)
        start = time.perf_counter()
        found["sim_equals_dist"] = sim_equals_dist(args.device, cifar, work)
        found["sim_equals_dist"]["s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(found), flush=True)
        found["timing"] = [
            timing(args.device, "vgg11", "cifar10", cifar, args),
            timing(args.device, "cnn", "fmnist", fmnist, args),
        ]
    text = json.dumps(found, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if found["sim_equals_dist"]["equal"] else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the torchrun ranks: one thread each
    sys.exit(main())
