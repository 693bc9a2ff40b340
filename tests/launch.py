"""Launching `repgossip run` under torchrun from tests, and reading what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(
    nproc: int, out: Path, *sets: str, launch=(), env=None, timeout=240, resume=False, cwd=None,
    args=(),
):  # fmt: skip
    """`torchrun ... -m repgossip run ARGS --set engine=dist SETS --out OUT`, as a finished
    process."""
    argv = [sys.executable, "-m", "torch.distributed.run", *(launch or ["--standalone"]),
            "--nproc-per-node", str(nproc), "-m", "repgossip", "run", "--quiet", *args,
            "--set", "engine=dist", *sets, "--out", str(out)] + (["--resume"] if resume else [])  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env or ENV, cwd=cwd
    )


def summary(out: Path) -> dict:
    """summary.json without the keys that differ between equal runs (time, wire bytes)."""
    data = json.loads((out / "summary.json").read_text())
    data.pop("wall_s")
    data.pop("wire_bytes")
    return data


def assert_same_numbers(dist_summary: dict, sim: dict) -> None:
    """Every number bit for bit: workers, losses, accuracies and the aggregates, which are summed
    in one fixed order whatever the process layout."""
    assert dist_summary == sim
