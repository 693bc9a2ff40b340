"""Would stacking workers' convolutions beat running workers side by side? The cnn's training step
for G workers of batch 16, four ways, in plain PyTorch.

    python benchmarks/conv_stacking.py [--workers 16 64] [--repeats 9]

- `side`: each worker its own step on its own weights, two threads side by side, one intra-op
  thread each (how repgossip trains convolutional bodies);
- `grouped`: one grouped convolution per layer over all G workers (worker g's channels are group
  g), batched matrix products for the linear layers;
- `im2col`: convolutions unfolded into columns and multiplied per worker with one batched product;
- `big`: one model, batches of 128 over the same G x 16 samples (the compute bound's way).

Every way does a forward pass, cross-entropy, backward and an SGD update of its weights; each is
timed in turn, the median of `--repeats`, after one warm-up pass. Prints milliseconds and each
way's ratio to `big`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import one_line_errors, positive_int

BATCH, BIG, THREADS = 16, 128, 2
SHAPES = [(16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (128, 512), (128,), (10, 128), (10,)]


def sgd(params: list[torch.Tensor], loss: torch.Tensor) -> None:
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        torch._foreach_add_(params, grads, alpha=-0.01)


def step(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
    """One worker's (or one big batch's) training step of the cnn on its own weights."""
    w1, b1, w2, b2, w3, b3, w4, b4 = params
    h = F.max_pool2d(F.relu(F.conv2d(x, w1, b1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w2, b2)), 2)
    h = F.relu(F.linear(h.flatten(1), w3, b3))
    sgd(params, F.cross_entropy(F.linear(h, w4, b4), y))


def head(h: torch.Tensor, params: list[torch.Tensor], y: torch.Tensor, workers: int) -> None:
    """The stacked linear layers, the loss (each worker's mean, summed) and the update."""
    *_, w3, b3, w4, b4 = params
    h = F.relu(torch.baddbmm(b3.unsqueeze(1), h, w3.transpose(1, 2)))
    out = torch.baddbmm(b4.unsqueeze(1), h, w4.transpose(1, 2))
    losses = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    sgd(params, losses.view(workers, -1).mean(1).sum())


def ways(workers: int) -> dict[str, Callable[[], None]]:
    gen = torch.Generator().manual_seed(0)
    stacked = [(torch.randn(workers, *s, generator=gen) * 0.05).requires_grad_() for s in SHAPES]
    x = torch.randn(workers, BATCH, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (workers, BATCH), generator=gen)
    own = [[p[g].detach().clone().requires_grad_() for p in stacked] for g in range(workers)]
    single = [p[0].detach().clone().requires_grad_() for p in stacked]

    def side() -> None:
        def run(part: range) -> None:
            torch.set_num_threads(1)
            for g in part:
                step(own[g], x[g], y[g])

        parts = [range(i, workers, THREADS) for i in range(THREADS)]
        threads = [threading.Thread(target=run, args=(part,)) for part in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def grouped() -> None:
        w1, b1, w2, b2 = stacked[:4]
        h = x.transpose(0, 1).reshape(BATCH, workers, 28, 28)
        h = F.max_pool2d(F.relu(F.conv2d(h, w1.flatten(0, 1), b1.flatten(), groups=workers)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, w2.flatten(0, 1), b2.flatten(), groups=workers)), 2)
        head(h.reshape(BATCH, workers, 512).transpose(0, 1), stacked, y, workers)

    def conv_im2col(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        g, n, c, size, _ = h.shape
        cols = F.unfold(h.reshape(g * n, c, size, size), w.shape[-1])
        length, out = cols.shape[-1], size - w.shape[-1] + 1
        cols = cols.view(g, n, -1, length).permute(0, 2, 1, 3).reshape(g, -1, n * length)
        product = torch.baddbmm(b.unsqueeze(2), w.flatten(2), cols)
        return product.view(g, -1, n, out, out).transpose(1, 2)

    def im2col() -> None:
        w1, b1, w2, b2 = stacked[:4]
        h = F.max_pool2d(F.relu(conv_im2col(x, w1, b1).flatten(0, 1)), 2)
        h = h.unflatten(0, (workers, BATCH))
        h = F.max_pool2d(F.relu(conv_im2col(h, w2, b2).flatten(0, 1)), 2)
        head(h.reshape(workers, BATCH, 512), stacked, y, workers)

    def big() -> None:
        for xb, yb in zip(x.flatten(0, 1).split(BIG), y.flatten().split(BIG), strict=True):
            step(single, xb, yb)

    return {"side": side, "grouped": grouped, "im2col": im2col, "big": big}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=positive_int, default=9)
    args = parser.parse_args()
    for workers in args.workers:
        candidates = ways(workers)
        seconds: dict[str, list[float]] = {name: [] for name in candidates}
        for repeat in range(args.repeats + 1):  # the first pass warms up
            for name, fn in candidates.items():
                torch.set_num_threads(THREADS)
                began = time.perf_counter()
                fn()
                if repeat:
                    seconds[name].append(time.perf_counter() - began)
        median = {name: statistics.median(s) for name, s in seconds.items()}
        shown = ", ".join(
            f"{name} {median[name] * 1e3:.1f} ms ({median[name] / median['big']:.2f})"
            for name in candidates
        )
        print(f"{workers} workers x batch {BATCH}: {shown}", flush=True)


if __name__ == "__main__":
    one_line_errors(main)
