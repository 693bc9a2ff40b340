"""The distributed engine under real torchrun launches on loopback (gloo): the same numbers as the
one-process engine for 1, 2 and 4 ranks and for two "nodes", bytes on the wire as counted, clean
failure when a rank dies or hangs, and resumption on fewer ranks or by torchrun's own restart."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repgossip.cli import main
from repgossip.config import build_config
from repgossip.faults import RANK_FAULT_ENV
from repgossip.runfolder import read_checkpoint
from repgossip.runner import run_experiment

from launch import ENV, assert_same_numbers, summary, torchrun

FMNIST = Path("/usr/share/datasets/fashion-mnist")
# stationarity=true: its gradient sums must be bitwise the same on any process layout too
SYNTHETIC = ["dataset=synthetic", "workers=8", "samples_per_worker=40", "rounds=4", "topology=torus",
             "checkpoint_every=1", "stationarity=true"]  # fmt: skip
FMNIST_SMALL = [
    "workers=5",
    "samples_per_worker=40",
    "rounds=2",
    "topology=ring",
    "stationarity=true",
]


def sim_summary(tmp_path: Path, sets: list[str], name: str = "sim") -> dict:
    cfg = build_config(dict(s.split("=", 1) for s in sets))
    run_experiment(cfg, tmp_path / name, progress=False)
    return summary(tmp_path / name)


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_ranks_give_the_numbers_of_one_process_on_synthetic(tmp_path, ranks):
    done = torchrun(ranks, tmp_path / "dist", *SYNTHETIC)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_numbers(summary(tmp_path / "dist"), sim_summary(tmp_path, SYNTHETIC))
    metrics = (tmp_path / "dist" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in metrics] == [0, 1, 2, 3, 4]


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed (make data)")
def test_two_ranks_give_the_numbers_of_one_process_on_fmnist(tmp_path):
    done = torchrun(2, tmp_path / "dist", *FMNIST_SMALL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_numbers(summary(tmp_path / "dist"), sim_summary(tmp_path, FMNIST_SMALL))


def test_wire_bytes_match_bytes_sent_with_one_worker_per_rank(tmp_path):
    """With one worker per rank every worker-to-neighbour message crosses processes exactly once."""
    sets = ["dataset=synthetic", "workers=3", "samples_per_worker=20", "rounds=3", "topology=ring"]
    done = torchrun(3, tmp_path / "dist", *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "dist" / "summary.json").read_text())
    assert data["wire_bytes"] == data["bytes_sent"] > 0


def test_wire_bytes_are_fewer_when_neighbours_share_a_rank(tmp_path):
    sets = ["dataset=synthetic", "workers=8", "samples_per_worker=20", "rounds=2", "topology=ring"]
    done = torchrun(2, tmp_path / "dist", *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "dist" / "summary.json").read_text())
    # a ring cut into two blocks: only the two boundary pairs talk across ranks
    per_message = data["bytes_sent"] // (2 * 8 * 2)
    assert data["wire_bytes"] == 2 * 2 * 2 * per_message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_loopback_give_the_numbers_of_one_process(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    launches = []
    for node in (0, 1):
        launch = ["--nnodes", "2", "--node-rank", str(node), "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", endpoint, "--rdzv-id", "loopback"]  # fmt: skip
        argv = [sys.executable, "-m", "torch.distributed.run", *launch, "--nproc-per-node", "1",
                "-m", "repgossip", "run", "--quiet", "--set", "engine=dist", *SYNTHETIC,
                "--out", str(tmp_path / "dist")]  # fmt: skip
        launches.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        )
    outputs = [p.communicate(timeout=240) for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs[0][1][-2000:]
    assert_same_numbers(summary(tmp_path / "dist"), sim_summary(tmp_path, SYNTHETIC))


def test_a_dead_rank_stops_the_run_and_fewer_ranks_resume_it_exactly(tmp_path):
    out = tmp_path / "dist"
    began = time.monotonic()
    crashed = torchrun(
        4, out, *SYNTHETIC, "dist_timeout_s=30", env={**ENV, RANK_FAULT_ENV: "1:2:kill"}
    )
    assert crashed.returncode != 0
    assert time.monotonic() - began < 90
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["round"] == 2
    resumed = torchrun(2, out, *SYNTHETIC, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_numbers(summary(out), sim_summary(tmp_path, SYNTHETIC))
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3, 4]


def test_a_hung_rank_ends_the_run_with_a_clear_error_within_the_timeout(tmp_path):
    began = time.monotonic()
    hung = torchrun(2, tmp_path / "dist", *SYNTHETIC, "dist_timeout_s=8",
                    env={**ENV, RANK_FAULT_ENV: "1:2:hang"})  # fmt: skip
    assert hung.returncode != 0
    assert time.monotonic() - began < 90
    assert "repgossip: error: rank 0:" in hung.stderr


def test_torchrun_restarts_resume_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "dist"
    done = torchrun(2, out, *SYNTHETIC, launch=["--standalone", "--max-restarts", "1"],
                    env={**ENV, RANK_FAULT_ENV: "1:3:kill"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_numbers(summary(out), sim_summary(tmp_path, SYNTHETIC))


def test_a_callback_on_rank_0_stops_every_rank_after_the_same_round(tmp_path):
    """Callbacks run on rank 0; its StopRun reaches every rank, so all leave the loop together
    (a rank that went on would wait for its peers and fail after dist_timeout_s)."""
    out = tmp_path / "dist"
    stopped = torchrun(2, out, *SYNTHETIC, "dist_timeout_s=30", args=["--callback",
                       "stoppers:at_round_2"], cwd=Path(__file__).parent)  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "stopped early: two rounds are enough" in stopped.stdout
    data = json.loads((out / "summary.json").read_text())
    assert data["rounds"] == 2 and data["stopped_early"] == "two rounds are enough"
    assert read_checkpoint(out)["round"] == 2
    assert [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        0, 1, 2
    ]  # fmt: skip
    assert main(["run", "--quiet", "--resume", "--out", str(out), "--set", "engine=sim"]) == 0
    assert_same_numbers(summary(out), sim_summary(tmp_path, SYNTHETIC))


def test_bench_under_torchrun_reports_from_rank_0_only(tmp_path):
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "repgossip", "bench", "--rounds-measured", "2",
            "--set", "engine=dist", "dataset=synthetic", "workers=4"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = done.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["ranks"] == 2 and result["rounds_measured"] == 2
    assert 0 <= result["comm_share"] <= 1 and result["s_per_round"] > 0
