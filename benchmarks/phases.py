"""Where a round's time goes: seconds of each local phase and of communication, per round.

    python benchmarks/phases.py [--rounds-measured 3] [--threads N] [--bound] [--profile 25]
                                [--set key=value ...]

Builds the experiment of the config given by `--set` (the default job without it), runs one
warm-up round, then times `--rounds-measured` rounds of `train_round`, splitting each into its
local phases (`training.train_phase`: "phase 0 head" is the round's first phase, training the head)
and its communication (`Algorithm.communicate`). Prints the median seconds of each, and of the
whole round, as one JSON object. `--bound` adds each phase's part of `repgossip bench`'s compute
bound ("bound phase 1 body"), what that phase could cost, timed after the rounds. `--profile K`
also prints the K functions with the most own time in the measured rounds
(cProfile; it sees the main thread only, so use it with `--threads 1`).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import pstats
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from common import fail, one_line_errors, positive_int

from repgossip import rounds as round_module
from repgossip.bench import Bound, intra_op_threads, run_round, timed
from repgossip.config import build_config, parse_assignments
from repgossip.experiment import Experiment, build_experiment
from repgossip.layout import MAIN_MODEL


def timed_into(seconds: list[float], fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, appending the wall seconds of each call to `seconds`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - began)

    return wrapper


def per_round(seconds: list[float], rounds: int) -> list[float]:
    """Each round's total of a part timed the same number of times every round (a part that runs
    twice a round, such as two head phases, counts their sum)."""
    calls = len(seconds) // rounds
    return [sum(seconds[i * calls : (i + 1) * calls]) for i in range(rounds)]


def bound_parts(exp: Experiment, repeats: int) -> dict[str, float]:
    """Each phase's part of `repgossip bench`'s compute bound (`Bound.phase`): the fastest
    candidate setting's median of `repeats`."""
    bound = Bound(exp)
    parts = {}
    for index, phase in enumerate(exp.algorithm.phases):
        medians = []
        for setting in bound.settings():
            work = functools.partial(bound.phase, phase, setting)
            with intra_op_threads(setting.threads):
                work()  # warm-up
                medians.append(statistics.median(timed(work) for _ in range(repeats)))
        parts[f"bound phase {index} {phase.part}"] = round(min(medians), 4)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds-measured", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, help="torch intra-op threads")
    parser.add_argument("--profile", type=positive_int, metavar="K", help="print the top K")
    parser.add_argument("--bound", action="store_true", help="also time each phase's bound")
    parser.add_argument("--set", nargs="*", default=[], help="config assignments key=value")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(parse_assignments(args.set))
    if cfg.engine != "sim":
        fail(f"engine={cfg.engine}: this script times the one-process engine; under torchrun use "
             "repgossip bench, which reports a distributed round and its communication share")  # fmt: skip
    exp = build_experiment(cfg)
    run_round(exp, 0)  # warm-up: first-call allocations, kernel selection
    per_part: dict[str, list[float]] = defaultdict(list)
    communicate = exp.algorithm.communicate
    exp.algorithm.communicate = timed_into(per_part["communicate"], communicate)  # type: ignore[method-assign]
    train = round_module.train_phase  # what the round calls for each phase

    def train_timed(pop: Any, part: str, budget: Any, rule: Any, round_index: int, phase: int,
                    *rest: Any, **kwargs: Any) -> None:  # fmt: skip
        model = kwargs.get("model", MAIN_MODEL)
        name = f"phase {phase} {part}" + ("" if model == MAIN_MODEL else f" of {model}")
        timed_into(per_part[name], train)(pop, part, budget, rule, round_index, phase, *rest,
                                          **kwargs)  # fmt: skip

    round_module.train_phase = train_timed
    rounds = []
    profiler = cProfile.Profile() if args.profile else None
    for r in range(1, args.rounds_measured + 1):
        began = time.perf_counter()
        if profiler is not None:
            profiler.runcall(run_round, exp, r)
        else:
            run_round(exp, r)
        rounds.append(time.perf_counter() - began)
    result = {
        name: round(statistics.median(per_round(s, len(rounds))), 4) for name, s in per_part.items()
    }
    result["round"] = round(statistics.median(rounds), 4)
    if args.bound:
        result |= bound_parts(exp, args.rounds_measured)
    print(json.dumps(result | {"config": exp.cfg.to_dict()}))
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    one_line_errors(main)
