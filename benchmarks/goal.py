"""Run `repgossip bench` on the issue's goal config and print a Markdown table of what it printed.

    python benchmarks/goal.py [--rounds-measured 9] [--threads 2 1] [--repeats 1] [--out FILE.jsonl]

Each (threads, repeat) is its own `python -m repgossip bench ... --reference` process, run one after
the other. The raw JSON lines go to --out, so the table in docs/performance.md can be checked
against them.
"""

from __future__ import annotations

import argparse

from common import bench, header, one_line_errors, output_file, positive_int, row, save

GOAL = ["workers=32", "samples_per_worker=200", "partition=shards", "classes_per_worker=2",
        "topology=ring", "batch_size=16", "head_epochs=3", "body_epochs=1"]  # fmt: skip
COLUMNS = ("threads", "s_per_round", "bound_s", "ratio", "reference_s_per_round", "speedup",
           "samples_per_s", "peak_rss_mb", "bound_batch", "bound_threads")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds-measured", type=positive_int, default=9)
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=positive_int, default=1)
    parser.add_argument("--out", type=output_file, help="append the raw JSON lines here")
    args = parser.parse_args()
    print(header(COLUMNS))
    for _ in range(args.repeats):
        for threads in args.threads:
            result = bench("--set", *GOAL, "--reference", "--rounds-measured",
                           str(args.rounds_measured), "--threads", str(threads))  # fmt: skip
            save(result, args.out)
            print(row(result, COLUMNS), flush=True)


if __name__ == "__main__":
    one_line_errors(main)
