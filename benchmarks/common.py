"""What the scripts in benchmarks/ share: one `repgossip bench` process, and a Markdown row."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def bench(*argv: str) -> dict:
    """`repgossip bench ARGV...` in a process of its own; its JSON object. Callers run these one
    after the other, never side by side: they would time each other."""
    done = subprocess.run(
        [sys.executable, "-m", "repgossip", "bench", *argv], capture_output=True, text=True
    )
    if done.returncode:  # pass on repgossip's own one-line error, not a CalledProcessError
        lines = done.stderr.strip().splitlines() or [f"repgossip bench exited {done.returncode}"]
        raise SystemExit(lines[-1])
    return json.loads(done.stdout)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1, refused in the parser's one line otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def save(result: dict, out: Path | None) -> None:
    """Append the raw JSON line to `out`, so that a table can be checked against it."""
    if out is not None:
        with open(out, "a") as handle:
            handle.write(json.dumps(result) + "\n")


def header(columns: tuple[str, ...]) -> str:
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def row(values: dict, columns: tuple[str, ...]) -> str:
    cells = [
        f"{values[c]:.4g}" if isinstance(values[c], float) else str(values[c]) for c in columns
    ]
    return "| " + " | ".join(cells) + " |"
