"""What a model's forward and backward cost in plain PyTorch at the local batch size against a big
batch, with no repgossip code in the loop: the floor under a round made of small per-worker batches.

    python benchmarks/kernels.py [--model vgg11] [--samples 256] [--threads 2] [--channels-last]

Times `--samples` samples of training steps (train mode, cross-entropy, backward) three ways: batch
16 in one thread; batch 16 in `--threads` threads side by side, each on its own copy of the model
(how repgossip runs workers); batch 128 with `--threads` intra-op threads (how `bench`'s bound
runs). Each is timed after one warm-up pass; the best of three repeats is printed.
"""

from __future__ import annotations

import argparse
import copy
import threading
import time

import torch
from common import one_line_errors, positive_int

from repgossip.architectures import build_model
from repgossip.footprint import IMAGE_SETS

SMALL, BIG = 16, 128


def steps(
    model: torch.nn.Module,
    batch: int,
    count: int,
    shape: tuple[int, ...],
    layout: torch.memory_format = torch.contiguous_format,
) -> None:
    x = torch.randn(batch, *shape).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))
    for _ in range(count):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()


def best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def side_by_side(
    models: list[torch.nn.Module], count: int, shape: tuple[int, ...], layout: torch.memory_format
) -> None:
    threads = [
        threading.Thread(target=steps, args=(m, SMALL, count, shape, layout)) for m in models
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg11")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(IMAGE_SETS))
    parser.add_argument("--samples", type=positive_int, default=256)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="images and weights NHWC")
    args = parser.parse_args()
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    data = IMAGE_SETS[args.dataset]
    model = build_model(args.model, data.shape, data.classes).train().to(memory_format=layout)
    copies = [copy.deepcopy(model) for _ in range(args.threads)]
    torch.set_num_threads(1)
    one = best_of(lambda: steps(model, SMALL, args.samples // SMALL, data.shape, layout))
    per_thread = args.samples // SMALL // args.threads
    parallel = best_of(lambda: side_by_side(copies, per_thread, data.shape, layout))
    torch.set_num_threads(args.threads)
    big = best_of(lambda: steps(model, BIG, args.samples // BIG, data.shape, layout))
    layout = ", channels last" if args.channels_last else ""
    print(
        f"{args.model}, {args.samples} samples of training steps{layout}, torch {torch.__version__}:"
    )
    print(f"  batch {SMALL}, 1 thread:                       {one:.3f} s")
    print(f"  batch {SMALL}, {args.threads} threads side by side:        {parallel:.3f} s")
    print(f"  batch {BIG}, {args.threads} intra-op threads:            {big:.3f} s")
    print(f"  small side by side / big: {parallel / big:.2f}")


if __name__ == "__main__":
    one_line_errors(main)
