"""A user's own model against the built-in path on the same architecture: `repgossip bench` on
the built-in cnn; the same network written as a user's nn.Module (provably head(body(x)), so it
takes the fast path); that network with its logits divided by a temperature (g(head(features)),
still the fast path); and with a skip connection around the head (features added to the logits:
no split is provable, so every head step runs the whole forward).

    python benchmarks/own_model.py [--repeats 3] [--rounds-measured 3] [--set key=value ...]

The three run one after the other, in turn (A B C A B C ...), each `repeats` times, so a drift of
the machine's speed touches all three alike; the table gives each one's median seconds per round
and its ratio to the built-in cnn's median. The user's modules are written to a temporary folder
and named as a plug-in (`model=usercnn:plain`), as a user would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from common import bench, header, one_line_errors, positive_int

USER_MODELS = """
from torch import nn


class CNN(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(512, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class Tempered(CNN):
    def forward(self, x):
        return self.head(self.body(x)) / 2.0


class Skip(CNN):
    def forward(self, x):
        features = self.body(x)
        return self.head(features) + features[:, :10]


def plain(num_classes):
    return CNN(num_classes)


def tempered(num_classes):
    return Tempered(num_classes)


def skip(num_classes):
    return Skip(num_classes)
"""
MODELS = {
    "built-in cnn": "cnn",
    "user cnn": "usercnn:plain",
    "user cnn / T": "usercnn:tempered",
    "user cnn + skip": "usercnn:skip",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--rounds-measured", type=positive_int, default=3)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "usercnn.py").write_text(USER_MODELS)
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")])
        seconds: dict[str, list[float]] = {name: [] for name in MODELS}
        for _ in range(args.repeats):
            for name, model in MODELS.items():
                result = bench("--set", f"model={model}", *args.set,
                               "--rounds-measured", str(args.rounds_measured))  # fmt: skip
                seconds[name].append(result["s_per_round"])
    base = statistics.median(seconds["built-in cnn"])
    print(header(("model", "s_per_round (median)", "min", "max", "ratio to built-in")))
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f} | {max(values):.3f} | "
              f"{median / base:.2f} |")  # fmt: skip


if __name__ == "__main__":
    one_line_errors(main)
