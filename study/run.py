"""Run the study's sweeps (study/plan.py), part by part; finished points are reused.

python study/run.py                 # every part
python study/run.py accuracy speedup --jobs 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from plan import PARTS, SWEEPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"parts to run (default: all): {', '.join(PARTS)}")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="grid points side by side (default 2)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; valid: {', '.join(PARTS)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    chosen = args.parts or PARTS
    worst = 0
    for sweep in (s for s in SWEEPS if s.part in chosen):
        start = time.perf_counter()
        print(f"[{sweep.part}] {sweep.name}", flush=True)
        code = exit_code(subprocess.call(sweep.command(args.jobs)))
        print(f"[{sweep.part}] {sweep.name}: exit {code}, {time.perf_counter() - start:.0f} s")
        worst = max(worst, code)
    return worst


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it: killed by signal N is 128 + N, not -N (which
    `max` would rank below success)."""
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the sweep has stopped cleanly too; finished points are kept
        print(
            "interrupted: `python study/run.py` again continues where it stopped", file=sys.stderr
        )
        sys.exit(130)
