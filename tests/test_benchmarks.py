"""The scripts in benchmarks/ still start, parse their arguments and run a tiny case: nothing here
times anything (timings are reported by the scripts, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


def script(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *argv], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_script_starts_and_explains_itself(name: str) -> None:
    done = script(name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_phases_times_each_part_of_a_round() -> None:
    argv = ("--rounds-measured", "2", "--bound", "--set", "workers=4", "samples_per_worker=20")
    done = script("phases.py", *argv)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"phase 0 head", "phase 1 body", "communicate", "round"} <= set(result)
    assert result["bound phase 0 head"] > 0 and result["bound phase 1 body"] > 0
    assert result["phase 0 head"] + result["phase 1 body"] <= result["round"]


def test_gossip_chunk_sizes_are_timed_one_line_each() -> None:
    argv = ("--workers", "8", "--params", "100", "--topologies", "ring", "--chunk-bits", "4", "12")
    done = script("gossip.py", *argv)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["chunk_bits"] for line in lines] == [4, 12]


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed"
)
def test_reread_times_each_way_of_handing_over_data() -> None:
    argv = ("--model", "mlp", "--workers", "2", "--samples", "8", "--rounds-measured", "1")
    done = script("reread.py", *argv)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| tensors",
        "| Dataset read once (reread_data=never)",
        "| Dataset read anew (reread_data=auto)",
        "| tensors, augment=true (batched)",
    ]


def test_fake_data_refuses_a_folder_that_holds_something(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    done = script("fake_data.py", "fmnist", str(tmp_path))
    assert done.returncode == 2 and "is not empty" in done.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("name", "argv", "needle"),
    [
        ("gossip.py", ("--workers", "0"), "must be >= 1"),
        ("gossip.py", ("--chunk-bits", "99"), "between 0 and 40"),
        ("gossip.py", ("--workers", "4", "--topologies", "nosuch"), "unknown topology 'nosuch'"),
        ("phases.py", ("--set", "nosuchkey=1"), "unknown config key 'nosuchkey'"),
        ("phases.py", ("--set", "engine=dist"), "times the one-process engine"),
        ("stacking.py", ("--dims", "3", "--rank", "5"), "rank must be <= dim"),
        ("reread.py", ("--model", "nosuch"), "unknown model 'nosuch'"),
        ("scale.py", ("--out", f"{__file__}/no/x.jsonl"), "not a file in an existing folder"),
        ("fake_data.py", ("fmnist", __file__), "is a file, not a folder"),
    ],
)
def test_a_bad_argument_is_one_line_with_exit_code_2(
    name: str, argv: tuple[str, ...], needle: str
) -> None:
    done = script(name, *argv)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith(f"{name}: error: ") and needle in last, last
    assert last.count(": error: ") == 1  # a child's error is passed on, not wrapped twice
