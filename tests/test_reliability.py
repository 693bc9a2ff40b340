"""Crashes, faults and hostile files: a run survives SIGKILL at any moment, resumes exactly, stops
cleanly on divergence, keeps learning with links and workers down, and never runs a file's code."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from repgossip.cli import main
from repgossip.config import build_config
from repgossip.faults import FAULT_ENV
from repgossip.gossip import GossipSchedule, mix_rows
from repgossip.metrics import consensus_distance
from repgossip.runfolder import CHECKPOINT_FILE
from repgossip.runner import run_experiment
from repgossip.topology import build_graph

# Slow enough (about 0.2 s a round) to be killed mid-way, small enough for CI.
CRASHABLE = ["dataset=synthetic", "workers=6", "samples_per_worker=200", "rounds=24",
             "checkpoint_every=5", "seed=3"]  # fmt: skip


def cli(out: Path, *extra: str, resume: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "repgossip", "run", "--quiet", "--set", *CRASHABLE, *extra]
    return argv + ["--out", str(out)] + (["--resume"] if resume else [])


def rounds_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line)["round"] for line in lines if line.strip()]


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def assert_same_run(resumed: Path, whole: Path) -> None:
    """Bit-for-bit the same numbers; every round logged exactly once."""
    a, b = (json.loads((d / "summary.json").read_text()) for d in (resumed, whole))
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b
    records = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert without_time(records) == without_time(reference)
    assert [r["round"] for r in records] == list(range(25))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(cli(out), check=True, capture_output=True)
    return out


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_numbers(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(rounds_logged(out)) < 13 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(rounds_logged(out))
    assert 12 <= killed_at < 24, "the run must be killed mid-way for this test to mean anything"
    resumed = subprocess.run(cli(out, resume=True), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


def test_sigkill_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path, uninterrupted):
    out = tmp_path / "run"
    env = {**os.environ, FAULT_ENV: f"{CHECKPOINT_FILE}:2"}  # dies halfway through round 10's write
    crashed = subprocess.run(cli(out), env=env, capture_output=True)
    assert crashed.returncode == -signal.SIGKILL
    assert (out / (CHECKPOINT_FILE + ".tmp")).is_file()  # the torn write is there ...
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)  # ... and did not touch this
    assert state["round"] == 5
    assert max(rounds_logged(out)) == 10  # evaluations after the checkpoint are replayed
    resumed = subprocess.run(cli(out, resume=True), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


def _diverge(out: Path, capsys, checkpoint_every: int) -> tuple[str, int]:
    """A run that diverges (lr 0.2 on the noiseless synthetic task): its one-line error and the
    round it names."""
    argv = ["run", "--quiet", "--set", "dataset=synthetic", "workers=4", "rounds=40",
            f"checkpoint_every={checkpoint_every}", "lr=0.2", "noise=0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "diverged in round" in err and "worker" in err
    assert err.endswith("; rerun with --force)")
    return err, int(err.split("round ")[1].split(":")[0])


def test_divergence_stops_with_the_round_and_worker_and_keeps_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    err, diverged_round = _diverge(out, capsys, checkpoint_every=1)
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert state["round"] == diverged_round - 1
    assert torch.isfinite(state["params"]).all()
    assert "keeps its config, metrics so far and its last checkpoint" in err


def test_a_run_that_diverges_before_any_checkpoint_keeps_its_record(tmp_path, capsys):
    # A divergence is a result: the folder stays, with the rounds evaluated before it, and says so.
    out = tmp_path / "run"
    err, diverged_round = _diverge(out, capsys, checkpoint_every=40)
    assert "the run folder keeps its config, metrics so far and no checkpoint yet" in err
    assert rounds_logged(out) == list(range(diverged_round))  # every round before it
    assert (out / "config.yaml").is_file() and not (out / CHECKPOINT_FILE).exists()


def test_a_force_that_diverges_in_its_first_round_puts_the_replaced_folder_back(tmp_path, capsys):
    # Before its first trained round a new run has no record: the old folder comes back (after
    # one, --force has done what was asked, and the new record stays: the test above).
    out = tmp_path / "run"
    good = [
        "run",
        "--quiet",
        "--set",
        "dataset=synthetic",
        "workers=4",
        "rounds=2",
        "--out",
        str(out),
    ]
    assert main(good) == 0
    before = (out / "summary.json").read_bytes()
    bad = ["run", "--quiet", "--force", "--set", "dataset=synthetic", "workers=4", "rounds=40",
           "lr=5", "--out", str(out)]  # fmt: skip
    assert main(bad) == 3
    assert "the folder it was replacing is back" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_checkpoint_is_refused_without_running_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    tiny = ["--set", "dataset=synthetic", "workers=3", "rounds=2", "samples_per_worker=10"]
    assert main(["run", "--quiet", *tiny, "--out", str(out)]) == 0
    (out / CHECKPOINT_FILE).write_bytes(pickle.dumps({"round": _Payload()}))
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--quiet", "--resume", "--set", "rounds=3", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot read checkpoint" in err and "\n" not in err
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["--set", "dataset=synthetic", "workers=3", "rounds=2", "samples_per_worker=10"]
    assert main(["run", "--quiet", *tiny, "--out", str(out)]) == 0
    data = (out / CHECKPOINT_FILE).read_bytes()
    (out / CHECKPOINT_FILE).write_bytes(data[: len(data) // 3])
    assert main(["run", "--quiet", "--resume", "--set", "rounds=3", "--out", str(out)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("failure", [0.3, 0.5])
def test_gossip_still_reaches_consensus_with_links_down(failure):
    adj = build_graph("torus", 16)
    schedule = GossipSchedule(adj, "metropolis", link_failure_prob=failure, seed=1)
    x = torch.randn(16, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    distances = [consensus_distance(x)]
    for r in range(60):
        before = x.clone()
        mix_rows(
            np.arange(16),
            schedule.round_plan(r).slots,
            lambda i, cols, b=before: b[torch.from_numpy(i), cols],
            x,
        )
        distances.append(consensus_distance(x))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(distances, distances[1:], strict=False))
    assert distances[-1] < 1e-3 * distances[0]


@pytest.mark.parametrize("faults", [{"link_failure_prob": 0.3}, {"worker_dropout_prob": 0.3}])
def test_deprl_still_learns_with_faults(tmp_path, faults):
    cfg = build_config({"dataset": "synthetic", "dim": 10, "rank": 2, "head_steps": 5, "body_steps": 2,
                        "lr": 0.1, "topology": "exponential", "workers": 8, "samples_per_worker": 50,
                        "batch_size": 25, "noise": 0.1, "rounds": 30, **faults})  # fmt: skip
    summary = run_experiment(cfg, tmp_path / "run", progress=False).summary
    assert summary["subspace_dist"] < 0.2
