"""What the scripts in benchmarks/ share: one `repgossip bench` process, and a Markdown row."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


def fail(message: str) -> NoReturn:
    """End the script with one line and exit code 2, as repgossip and argparse do."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def child(*argv: str) -> str:
    """The standard output of `python ARGV...`, run in a process of its own; a failure ends this
    script with the child's own last line (its one-line error), not a CalledProcessError."""
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"{argv[0]} exited {done.returncode}"]
        fail(re.sub(r"^[\w.-]+: error: ", "", lines[-1]))  # the child's own name goes
    return done.stdout


def bench(*argv: str) -> dict:
    """`repgossip bench ARGV...` in a process of its own; its JSON object. Callers run these one
    after the other, never side by side: they would time each other."""
    return json.loads(child("-m", "repgossip", "bench", *argv))


def one_line_errors(main: Callable[[], None]) -> None:
    """Run a script's `main`, a repgossip error (a bad `--set`, a config it refuses) ending it in
    one line with exit code 2 instead of a traceback."""
    from repgossip.errors import RepgossipError

    try:
        main()
    except RepgossipError as err:
        fail(str(err))


def output_file(text: str) -> Path:
    """An argparse type for `--out FILE`: its folder must exist, checked before any work."""
    path = Path(text)
    if not path.parent.is_dir() or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a file in an existing folder")
    return path


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
