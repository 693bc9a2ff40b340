"""What one gossip step costs: seconds and peak memory to plan and mix a round, per topology.

    python benchmarks/gossip.py [--workers 10000] [--topologies ring star] [--params 40]
                                [--chunk-bits 24 20 16]

Each topology runs in a process of its own (peak memory is per process): the round plan is built
(graph, W, slots), then every worker's block of `--params` float32 values is mixed once, and the
result is checked against the sparse matrix product W @ X. One JSON object per line.

With `--chunk-bits`, each topology instead times the mixing step as an engine runs it (snapshot,
then mixing in place) with 2**B rows' elements mixed at a time (`CHUNK_ELEMENTS`), the
median of 5 steps for each B, the chunk sizes taken in turn: one JSON object per chunk size.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
from common import child, one_line_errors, positive_int

from repgossip import gossip
from repgossip.engines.base import Engine
from repgossip.gossip import GossipSchedule, mix_rows
from repgossip.topology import build_graph

REPEATS = 5


def measure(topology: str, workers: int, params: int) -> dict:
    began = time.perf_counter()
    plan = GossipSchedule(build_graph(topology, workers), "metropolis").round_plan(0)
    planned = time.perf_counter()
    x = torch.randn(workers, params, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(x)
    mix_rows(np.arange(workers), plan.slots, lambda ids, cols: x[torch.from_numpy(ids), cols], out)
    mixed = time.perf_counter()
    expected = plan.mixing.sparse() @ x.double().numpy()
    return {
        "topology": topology,
        "workers": workers,
        "edges": plan.graph.num_edges,
        "plan_s": round(planned - began, 4),
        "mix_s": round(mixed - planned, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "max_abs_error": float(np.abs(out.double().numpy() - expected).max()),
    }


def chunk_sizes(topology: str, workers: int, params: int, bits: list[int]) -> list[dict]:
    """Median seconds of an in-place mixing step (the one-process engine's snapshot and mix) for
    each chunk size 2**b, the sizes taken in turn so that outside load falls on all alike."""
    plan = GossipSchedule(build_graph(topology, workers), "metropolis").round_plan(0)
    engine = Engine(workers)
    block = torch.randn(workers, params, generator=torch.Generator().manual_seed(0))
    seconds: dict[int, list[float]] = {b: [] for b in bits}
    for _ in range(REPEATS + 1):  # the first pass warms up
        for b in bits:
            gossip.CHUNK_ELEMENTS = 1 << b
            began = time.perf_counter()
            mix_rows(
                engine.local_workers(), plan.slots, engine.fetch_neighbours(block, plan), block
            )
            seconds[b].append(time.perf_counter() - began)
    return [
        {"topology": topology, "workers": workers, "params": params, "chunk_bits": b,
         "mix_s": round(float(np.median(seconds[b][1:])), 4)}
        for b in bits
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=positive_int, default=10_000)
    parser.add_argument("--topologies", nargs="+", default=["ring", "star"])
    parser.add_argument("--params", type=positive_int, default=40)
    parser.add_argument("--chunk-bits", type=int, nargs="+", metavar="B")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: measure this one
    args = parser.parse_args()
    if args.chunk_bits and not all(0 <= b <= 40 for b in args.chunk_bits):
        parser.error(f"--chunk-bits must be between 0 and 40, got {args.chunk_bits}")
    if args.one and args.chunk_bits:
        for line in chunk_sizes(args.one, args.workers, args.params, args.chunk_bits):
            print(json.dumps(line))
        return
    if args.one:
        print(json.dumps(measure(args.one, args.workers, args.params)))
        return
    for topology in args.topologies:
        argv = [__file__, "--one", topology, "--workers", str(args.workers),
                "--params", str(args.params)]  # fmt: skip
        argv += ["--chunk-bits", *map(str, args.chunk_bits)] if args.chunk_bits else []
        print(child(*argv), end="")


if __name__ == "__main__":
    one_line_errors(main)
