"""The paper's CIFAR models against their compute bound: `repgossip bench` on vgg11 and resnet18.

    python benchmarks/models.py [--models vgg11 resnet18] [--workers 4] [--samples 64]
                                [--rounds-measured 3] [--out FILE.jsonl] [--set key=value ...]

CIFAR-10 cannot be downloaded here, so the data are random images in its binary format, written to
a temporary folder (a round's arithmetic does not depend on pixel values; pass
`--set data_dir=FOLDER` to use the real files). Ten times the images the workers need are written,
so that every worker of the default partition (shards of 2 classes) gets its `--samples`; the
`samples` column says how many each worker had. Each model is its own `repgossip bench` process,
one after the other.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import bench, header, one_line_errors, output_file, positive_int, row, save
from fake_data import write_cifar10

COLUMNS = ("model", "workers", "samples", "s_per_round", "bound_s", "ratio", "bound_batch", "samples_per_s",
           "peak_rss_mb")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg11", "resnet18"])
    parser.add_argument("--workers", type=positive_int, default=4)
    parser.add_argument("--samples", type=positive_int, default=64, help="samples per worker")
    parser.add_argument("--rounds-measured", type=positive_int, default=3)
    parser.add_argument("--out", type=output_file, help="append the raw JSON lines here")
    parser.add_argument("--set", nargs="*", default=[], help="more config assignments")
    args = parser.parse_args()
    print(header(COLUMNS))
    with tempfile.TemporaryDirectory() as tmp:
        n = args.workers * args.samples
        data = write_cifar10(Path(tmp), 10 * n, max(n // 4, 100), np.random.default_rng(0))
        for model in args.models:
            assignments = ["dataset=cifar10", f"data_dir={data}", f"model={model}",
                           f"workers={args.workers}", f"samples_per_worker={args.samples}",
                           *args.set]  # fmt: skip
            result = bench("--set", *assignments, "--rounds-measured", str(args.rounds_measured))
            save(result, args.out)
            samples = result["train_samples"] / args.workers  # what each worker really had
            shown = {"model": model, "workers": args.workers, "samples": f"{samples:g}"}
            print(row(result | shown, COLUMNS), flush=True)


if __name__ == "__main__":
    one_line_errors(main)
