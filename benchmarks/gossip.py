"""What one gossip step costs: seconds and peak memory to plan and mix a round, per topology.

    python benchmarks/gossip.py [--workers 10000] [--topologies ring star] [--params 40]

Each topology runs in a process of its own (peak memory is per process): the round plan is built
(graph, W, slots), then every worker's block of `--params` float32 values is mixed once, and the
result is checked against the sparse matrix product W @ X. One JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from repgossip.gossip import GossipSchedule, mix_rows
from repgossip.topology import build_graph


def measure(topology: str, workers: int, params: int) -> dict:
    began = time.perf_counter()
    plan = GossipSchedule(build_graph(topology, workers), "metropolis").round_plan(0)
    planned = time.perf_counter()
    x = torch.randn(workers, params, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(x)
    mix_rows(np.arange(workers), plan.slots, lambda ids: x[torch.from_numpy(ids)], out)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--topologies", nargs="+", default=["ring", "star"])
    parser.add_argument("--params", type=int, default=40)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: measure this one
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.workers, args.params)))
        return
    for topology in args.topologies:
        argv = [sys.executable, __file__, "--one", topology, "--workers", str(args.workers),
                "--params", str(args.params)]  # fmt: skip
        print(subprocess.run(argv, capture_output=True, text=True, check=True).stdout, end="")


if __name__ == "__main__":
    main()
