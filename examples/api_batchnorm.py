"""DePRL on your own network, tensors and graph, through the Python API alone.

The model has BatchNorm and Dropout: each worker keeps its own BatchNorm running statistics (they
are private state, like the head, unless `share_bn_stats=true`), and dropout masks come from each
worker's own random stream. The run is interrupted after 3 rounds and resumed to 6; the resumed
workers' states equal those of an uninterrupted 6-round run.

    python examples/api_batchnorm.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import networkx as nx
import torch
from torch import nn

import repgossip

WORKERS, CLASSES, FEATURES = 8, 4, 12


class Net(nn.Module):
    """A representation with BatchNorm and Dropout, and a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        (features,) = input_shape
        self.body = nn.Sequential(
            nn.Linear(features, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2)
        )
        self.head = nn.Linear(32, num_classes)


def make_data(seed: int = 0):
    """Per-worker tensors: each worker sees two of the four classes, shifted by its own offset."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLASSES, FEATURES, generator=gen) * 2
    splits: list[list[torch.Tensor]] = [[], [], [], []]
    for worker in range(WORKERS):
        classes = torch.tensor([worker % CLASSES, (worker + 1) % CLASSES])
        offset = torch.randn(FEATURES, generator=gen)
        for part in (0, 2):  # train, test
            y = classes[torch.randint(0, 2, (40,), generator=gen)]
            x = centers[y] + offset + torch.randn(40, FEATURES, generator=gen)
            splits[part].append(x)
            splits[part + 1].append(y)
    return tuple(splits)


def main(out: Path) -> None:
    data = make_data()
    graph = nx.cycle_graph(WORKERS)
    config = {"algorithm": "deprl", "rounds": 6, "lr": 0.05, "head_epochs": 2, "body_epochs": 1}
    whole = repgossip.run(config, model=Net, data=data, graph=graph, out=out / "whole")
    first = repgossip.run({**config, "rounds": 3}, model=Net, data=data, graph=graph,
                          out=out / "resumed")  # fmt: skip
    assert first.summary["rounds"] == 3
    resumed = repgossip.run(config, model=Net, data=data, graph=graph, out=out / "resumed",
                            resume=True)  # fmt: skip

    means = [whole.worker_state(w)["body.1.running_mean"] for w in range(WORKERS)]
    distinct = len({tuple(m.tolist()) for m in means})
    print(f"test_acc_mean after {whole.summary['rounds']} rounds: "
          f"{whole.summary['test_acc_mean']:.4f}")  # fmt: skip
    print(f"workers with their own BatchNorm running means: {distinct} of {WORKERS}")
    assert distinct == WORKERS, "each worker's BatchNorm statistics should be its own"
    for w in range(WORKERS):
        a, b = whole.worker_state(w), resumed.worker_state(w)
        assert all(torch.equal(a[k], b[k]) for k in a), f"worker {w} differs after resume"
    print("a run interrupted after 3 rounds and resumed equals the uninterrupted run, bit for bit")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
