"""Seconds per round and peak memory as the number of workers grows, one process per size.

    python benchmarks/scale.py [--dataset synthetic] [--workers 128 1024 10000]
                               [--rounds-measured 3] [--out FILE.jsonl] [--set key=value ...]

Each size is its own `python -m repgossip bench` process, run one after the other. Fashion-MNIST
is split whole over the workers (`samples_per_worker=none`), so its data stays the same while the
workers multiply; the synthetic task gives every worker its own `samples_per_worker` (100) samples.
The last lines give the memory each extra worker costs (the slope of peak memory between the
smallest and the largest size) against the model's size and the worker's data.
"""

from __future__ import annotations

import argparse

from common import bench, header, one_line_errors, output_file, positive_int, row, save

COLUMNS = ("workers", "s_per_round", "bound_s", "ratio", "samples_per_s", "peak_rss_mb", "data_mb")
PER_DATASET = {"fmnist": ["samples_per_worker=none"], "synthetic": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PER_DATASET), default="synthetic")
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[128, 1024, 10000])
    parser.add_argument("--rounds-measured", type=positive_int, default=3)
    parser.add_argument("--out", type=output_file, help="append the raw JSON lines here")
    parser.add_argument("--set", nargs="*", default=[], help="more config assignments")
    args = parser.parse_args()
    print(header(COLUMNS))
    results = []
    for workers in args.workers:
        assignments = [f"dataset={args.dataset}", f"workers={workers}",
                       *PER_DATASET[args.dataset], *args.set]  # fmt: skip
        result = bench("--set", *assignments, "--rounds-measured", str(args.rounds_measured))
        save(result, args.out)
        results.append(result)
        print(row(result | {"workers": workers}, COLUMNS), flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        extra = last["config"]["workers"] - first["config"]["workers"]
        per_worker = (last["peak_rss_mb"] - first["peak_rss_mb"]) * 2**20 / extra
        data = (last["data_mb"] - first["data_mb"]) * 2**20 / extra
        model = last["model_params"] * 4
        print(f"\nmemory per extra worker: {per_worker / 1024:.1f} KiB = "
              f"{per_worker / model:.1f} x the model ({model / 1024:.2f} KiB of float32 parameters); "
              f"the worker's own data: {data / 1024:.1f} KiB")  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
