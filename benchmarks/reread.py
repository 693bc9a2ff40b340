"""What reading a torch Dataset anew for every training batch costs: seconds per round against the
same data as tensors.

    python benchmarks/reread.py [--model cnn] [--workers 16] [--samples 100] [--rounds-measured 3]
                                [--out FILE.jsonl]

Fashion-MNIST images, `workers x samples` of them, handed to repgossip as a user would: as tensors,
and as a torch Dataset whose random transform (a 2-pixel-padded random crop and a horizontal flip,
drawn from torch's global generator, as torchvision's RandomCrop and RandomHorizontalFlip draw)
runs item by item; that Dataset read once (`reread_data=never`: the transforms frozen) and read anew
for every training batch (`reread_data=auto`); and the tensors with the built-in batched
augmentation (`augment=true`). Rounds of every variant are timed in turn, in this one process, one
thread, so a disturbance falls on all alike; medians over the measured rounds after a warm-up.
The two Dataset variants train on data of the same kind (cropped and flipped images), so their
ratio is what reading anew costs; the tensors' column adds what the images themselves change.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
import torch.nn.functional as F
from common import header, one_line_errors, output_file, positive_int, row, save
from torch.utils.data import Dataset

from repgossip.bench import run_round, timed
from repgossip.config import build_config
from repgossip.data.sources import load_fmnist
from repgossip.experiment import Experiment, Supplied, build_experiment
from repgossip.threads import single_threaded

COLUMNS = ("variant", "s_per_round", "over_tensors", "over_read_once")
ONCE = "Dataset read once (reread_data=never)"
PAD = 2


def crop_and_flip(x: torch.Tensor) -> torch.Tensor:
    """One image (channels, height, width): padded, cropped back at a random offset, flipped with
    probability 1/2, every draw from torch's global generator."""
    height, width = x.shape[1:]
    i, j = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
    x = F.pad(x, (PAD, PAD, PAD, PAD))[:, i : i + height, j : j + width]
    return x.flip(-1) if torch.rand(()) < 0.5 else x


class Images(Dataset):
    """(image, label) items, the image passed through `transform` at every read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.transform = x, y, crop_and_flip

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.x[i]), int(self.y[i])


def experiments(args: argparse.Namespace) -> dict[str, Experiment]:
    data = load_fmnist()
    n = args.workers * args.samples
    x, y = torch.from_numpy(data.x_train[:n]), torch.from_numpy(data.y_train[:n])
    test = torch.from_numpy(data.x_test[: n // 4]), torch.from_numpy(data.y_test[: n // 4])
    base: dict[str, Any] = {"dataset": "python:tuple", "model": args.model, "workers": args.workers}
    variants = {
        "tensors": ({}, (x, y)),
        ONCE: ({"reread_data": "never"}, Images(x, y)),
        "Dataset read anew (reread_data=auto)": ({}, Images(x, y)),
        "tensors, augment=true (batched)": ({"augment": True}, (x, y)),
    }
    return {
        name: build_experiment(
            build_config({**base, **keys}), supplied=Supplied(data=(train, test))
        )
        for name, (keys, train) in variants.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--workers", type=positive_int, default=16)
    parser.add_argument("--samples", type=positive_int, default=100)
    parser.add_argument("--rounds-measured", type=positive_int, default=3)
    parser.add_argument("--out", type=output_file, help="append the raw JSON lines here")
    args = parser.parse_args()
    with single_threaded():
        exps = experiments(args)
        seconds: dict[str, list[float]] = {name: [] for name in exps}
        for r in range(args.rounds_measured + 1):
            for name, exp in exps.items():
                elapsed = timed(lambda exp=exp, r=r: run_round(exp, r))
                if r:  # round 0 warms up
                    seconds[name].append(elapsed)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    print(header(COLUMNS))
    for name, median in medians.items():
        values = {"variant": name, "s_per_round": median,
                  "over_tensors": median / medians["tensors"],
                  "over_read_once": median / medians[ONCE]}  # fmt: skip
        print(row(values, COLUMNS), flush=True)
        save({**values, "model": args.model, "workers": args.workers, "samples": args.samples,
              "round_s": seconds[name]}, args.out)  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
