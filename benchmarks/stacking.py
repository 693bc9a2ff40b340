"""Where stacked training stops paying: seconds per round stacked against worker by worker.

    python benchmarks/stacking.py [--workers 256] [--dims 20 200 500 1000 2000] [--rank 8]

The synthetic task's linear model at growing input dimensions, in this one process: each round is
timed with the whole model trained stacked (repgossip.stacked) and then worker by worker, in turn,
so a disturbance falls on both alike; medians over the measured rounds after a warm-up.
`STACK_MAX_PARAMS` in repgossip/stacked.py is set from what this prints.
"""

from __future__ import annotations

import argparse
import statistics

from common import header, one_line_errors, positive_int, row

from repgossip.bench import run_round, timed
from repgossip.config import build_config
from repgossip.experiment import build_experiment

COLUMNS = ("dim", "model_params", "stacked_s", "loop_s", "loop_over_stacked")


def compare(workers: int, dim: int, rank: int, rounds: int) -> dict:
    cfg = build_config({}, {"dataset": "synthetic", "workers": str(workers), "dim": str(dim),
                            "rank": str(rank)})  # fmt: skip
    exp = build_experiment(cfg)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds + 1):
        for stack in (True, False):
            exp.population.stack_model = stack
            elapsed = timed(lambda r=r: run_round(exp, r))
            if r:  # round 0 warms up
                seconds[stack].append(elapsed)
    stacked, loop = (statistics.median(seconds[s]) for s in (True, False))
    return {"dim": dim, "model_params": exp.population.layout.size, "stacked_s": stacked,
            "loop_s": loop, "loop_over_stacked": loop / stacked}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=positive_int, default=256)
    parser.add_argument("--dims", type=positive_int, nargs="+", default=[20, 200, 500, 1000, 2000])
    parser.add_argument("--rank", type=positive_int, default=8)
    parser.add_argument("--rounds-measured", type=positive_int, default=3)
    args = parser.parse_args()
    print(header(COLUMNS))
    for dim in args.dims:
        print(row(compare(args.workers, dim, args.rank, args.rounds_measured), COLUMNS), flush=True)


if __name__ == "__main__":
    one_line_errors(main)
