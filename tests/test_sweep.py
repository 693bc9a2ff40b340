"""Tests for `repgossip sweep`: every grid point checked before the folder is touched, resume
against the whole saved config, failed points recorded without stopping the rest, distinct short
folder names, one-line refusals of a malformed grid, and the sweep folder's lock. Each sweep uses
the synthetic task with tiny settings, so each point takes well under a second."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from repgossip.cli import main
from repgossip.errors import UsageError
from repgossip.runfolder import LOCK_FILE, locked

TINY = ["dataset=synthetic", "workers=4", "rounds=3", "samples_per_worker=20"]
RING4 = "0 1\n1 2\n2 3\n3 0\n"


def sweep_argv(out: Path, grid: list[str], *extra: str, flags: tuple[str, ...] = ()) -> list[str]:
    """argv of a quiet tiny sweep of `grid` into `out`; `extra` pairs override TINY."""
    grids = [x for key in grid for x in ("--grid", key)]
    return ["sweep", "--quiet", *grids, "--set", *TINY, *extra, "--out", str(out), *flags]


def one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, lines
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` by relative path (the empty lock file aside)."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE)
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def summary_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def finished_sweep(tmp_path, capsys) -> Path:
    out = tmp_path / "S"
    assert main(sweep_argv(out, ["algorithm=deprl,local"])) == 0
    capsys.readouterr()
    return out


# ---------------------------------------------------------------- 1: validate every point first


@pytest.mark.parametrize(
    ("grid", "extra", "needles"),
    [
        (["workers=5"], ("topology=torus",), ("torus", "5")),
        (["topology={tmp}/edges3.txt"], (), ("edges3.txt", "4")),
        (["topology=ring,{tmp}/missing.txt"], (), ("missing.txt",)),
    ],
    ids=["torus-of-5", "edge-list-of-3-nodes", "second-point-missing-file"],
)
def test_force_sweep_with_a_point_that_cannot_be_built_keeps_the_folder(
    finished_sweep, tmp_path, capsys, grid, extra, needles
):
    (tmp_path / "edges3.txt").write_text("0 1\n1 2\n2 0\n")
    before = snapshot(finished_sweep)
    grid = [g.replace("{tmp}", str(tmp_path)) for g in grid]
    code = main(sweep_argv(finished_sweep, grid, *extra, flags=("--force",)))
    one_line_error(code, capsys.readouterr().err, *needles)
    assert snapshot(finished_sweep) == before


# ---------------------------------------------------------------- 2: resume compares the config


def test_resume_refuses_a_point_run_with_another_config_unless_forced(tmp_path, capsys):
    out = tmp_path / "S"
    assert main(sweep_argv(out, ["algorithm=deprl"], "lr=0.01")) == 0
    capsys.readouterr()
    before = snapshot(out)

    code = main(sweep_argv(out, ["algorithm=deprl"], "lr=0.05", flags=("--resume",)))
    one_line_error(code, capsys.readouterr().err, "algorithm-deprl", "'lr'", "--force")
    assert snapshot(out) == before

    assert main(sweep_argv(out, ["algorithm=deprl"], "lr=0.05", flags=("--resume", "--force"))) == 0
    assert "[sweep] algorithm-deprl" in capsys.readouterr().out  # rerun, not reused
    saved = yaml.safe_load((out / "algorithm-deprl" / "config.yaml").read_text())
    assert saved["lr"] == pytest.approx(0.05)
    old = json.loads(before["algorithm-deprl/summary.json"])
    new = json.loads((out / "algorithm-deprl" / "summary.json").read_text())
    assert new["train_loss"] != old["train_loss"]
    assert float(summary_rows(out)[0]["train_loss"]) == pytest.approx(new["train_loss"], rel=1e-3)


def test_resume_reuses_an_identical_point_and_extends_a_raised_rounds(finished_sweep, capsys):
    summary = finished_sweep / "algorithm-deprl" / "summary.json"
    before = summary.read_bytes()
    assert main(sweep_argv(finished_sweep, ["algorithm=deprl,local"], flags=("--resume",))) == 0
    assert "[sweep]" not in capsys.readouterr().out  # nothing ran again
    assert summary.read_bytes() == before

    grid = ["algorithm=deprl,local"]
    assert main(sweep_argv(finished_sweep, grid, "rounds=4", flags=("--resume",))) == 0
    capsys.readouterr()
    assert json.loads(summary.read_text())["rounds"] == 4
    assert [int(row["rounds"]) for row in summary_rows(finished_sweep)] == [4, 4]


def test_resume_refuses_fewer_rounds_than_a_point_ran(finished_sweep, capsys):
    before = snapshot(finished_sweep)
    code = main(
        sweep_argv(finished_sweep, ["algorithm=deprl,local"], "rounds=2", flags=("--resume",))
    )
    one_line_error(code, capsys.readouterr().err, "algorithm-deprl", "'rounds'")
    assert snapshot(finished_sweep) == before


# ---------------------------------------------------------------- 3: a failing point is recorded


def test_a_diverging_point_is_marked_failed_and_the_others_still_run(tmp_path, capsys):
    out = tmp_path / "S"
    code = main(sweep_argv(out, ["lr=1e10,0.01"]))
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "Traceback" not in captured.err
    failures = captured.err.splitlines()
    assert len(failures) == 1 and "lr-1e10" in failures[0] and "diverged" in failures[0]
    rows = summary_rows(out)
    assert [row["lr"] for row in rows] == ["1e10", "0.01"]  # one row per point, grid order
    assert rows[0]["status"].startswith("failed: training diverged")
    assert "\n" not in rows[0]["status"]
    assert rows[0]["train_loss"] == "" and rows[0]["subspace_dist"] == ""
    assert rows[1]["status"] == "ok" and float(rows[1]["train_loss"]) > 0
    assert (out / "lr-0.01" / "summary.json").is_file()
    table = (out / "summary.md").read_text()
    assert "| failed: training diverged" in table and "| ok |" in table
    assert "failed" in captured.out  # the printed table shows the status too


# ---------------------------------------------------------------- 4: distinct, short folder names


def test_points_whose_names_would_collide_get_their_own_folders(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    one, two = tmp_path / "x" / "y.txt", tmp_path / "x_y.txt"
    one.write_text(RING4)
    two.write_text("0 1\n1 2\n2 3\n3 0\n0 2\n")
    out = tmp_path / "S"
    assert main(sweep_argv(out, [f"topology={one},{two}"])) == 0
    capsys.readouterr()
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2
    topologies = {yaml.safe_load((f / "config.yaml").read_text())["topology"] for f in folders}
    assert topologies == {str(one), str(two)}
    assert [row["topology"] for row in summary_rows(out)] == [str(one), str(two)]


def test_a_300_character_value_gives_a_short_folder_name(tmp_path, capsys):
    deep = tmp_path / ("a" * 100) / ("b" * 100) / ("c" * 100)
    deep.mkdir(parents=True)
    edges = deep / "ring.txt"
    edges.write_text(RING4)
    assert len(str(edges)) > 300
    out = tmp_path / "S"
    assert main(sweep_argv(out, [f"topology={edges}"])) == 0
    capsys.readouterr()
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert len(folder.name) <= 100 and folder.name.startswith("topology-")
    assert summary_rows(out)[0]["status"] == "ok"


def test_run_names_are_injective_short_and_readable():
    from repgossip.grid import run_names

    long_a, long_b = {"topology": "a" * 299 + "1"}, {"topology": "a" * 299 + "2"}
    points = [{"topology": "/x/y.txt"}, {"topology": "/x_y.txt"}, long_a, long_b, {"lr": "0.1"}]
    names = run_names(points)
    assert len(set(names)) == len(names)
    assert all(len(n) <= 100 and "/" not in n for n in names)
    assert names[4] == "lr-0.1"  # an ordinary value keeps the plain key-value form
    assert names[0].startswith("topology-_x_y.txt")
    assert run_names([{"topology": "/x/y.txt"}])[0] != run_names([{"topology": "/x_y.txt"}])[0]


# ---------------------------------------------------------------- 5: a malformed grid


@pytest.mark.parametrize(
    ("grid", "needles"),
    [
        (["lr=0.1", "lr=0.2"], ("'lr'", "--grid lr=")),
        (["lr=,"], ("lr",)),
        (["lr="], ("lr",)),
        (["lr=0.1,,0.2"], ("lr", "empty")),
        (["lr=0.1,0.1"], ("0.1", "twice")),
        (["lr=0.1,0.10"], ("lr-0.1", "lr-0.10")),
    ],
    ids=["repeated-key", "no-values", "nothing-after-equals", "empty-value", "duplicate-value",
         "same-config"],
)  # fmt: skip
def test_malformed_grid_is_one_line_and_writes_nothing(tmp_path, capsys, grid, needles):
    out = tmp_path / "S"
    one_line_error(main(sweep_argv(out, grid)), capsys.readouterr().err, *needles)
    assert not out.exists()


# ---------------------------------------------------------------- 6: one writer per sweep folder


@pytest.mark.parametrize("flag", ["--resume", "--force"])
def test_a_sweep_folder_being_written_is_refused(finished_sweep, capsys, flag):
    before = snapshot(finished_sweep)
    with locked(finished_sweep):  # another process writing it, as far as flock can tell
        code = main(sweep_argv(finished_sweep, ["algorithm=deprl,local"], flags=(flag,)))
    one_line_error(code, capsys.readouterr().err, str(finished_sweep), "another")
    assert snapshot(finished_sweep) == before
    assert main(sweep_argv(finished_sweep, ["algorithm=deprl,local"], flags=("--resume",))) == 0


# ---------------------------------------------------------------- 7: seeds aggregate per config

RESULTS = ("test_acc_mean", "test_acc_p10", "test_acc_min", "subspace_dist", "train_loss",
           "consensus_dist", "bytes_sent")  # fmt: skip


def by_config_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary_by_config.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def seeds_of(rows: list[dict[str, str]], **config: str) -> list[dict[str, str]]:
    return [r for r in rows if all(r[k] == v for k, v in config.items())]


def test_seeds_aggregate_to_numpy_mean_and_sample_std_per_config(tmp_path, capsys):
    out = tmp_path / "S"
    grid = ["seed=0,1,2", "algorithm=deprl,local"]
    assert main(sweep_argv(out, grid, "rounds=2")) == 0
    printed = capsys.readouterr().out
    runs, configs = summary_rows(out), by_config_rows(out)
    assert len(runs) == 6 and [c["algorithm"] for c in configs] == ["deprl", "local"]
    present = [c for c in RESULTS if c in configs[0]]
    assert {"subspace_dist", "train_loss", "consensus_dist", "bytes_sent"} <= set(present)
    for config in configs:
        seeds = seeds_of(runs, algorithm=config["algorithm"])
        assert (config["n"], config["failed"]) == ("3", "0")
        for column in present:
            values = np.array([float(r[column]) for r in seeds])
            assert float(config[column]) == pytest.approx(values.mean(), rel=1e-12, abs=1e-300)
            std = float(config[f"{column}_std"])
            assert std == pytest.approx(values.std(ddof=1), rel=1e-9, abs=1e-300)
    table = (out / "summary.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| algorithm | n | status | subspace_dist")
    assert len([line for line in lines if line.startswith("| deprl")]) == 1
    assert " ± " in lines[2] and "ddof=1" in table
    assert table in printed  # the printed table is summary.md's


def test_a_failed_seed_is_counted_and_left_out_of_the_mean(tmp_path, capsys, monkeypatch):
    import repgossip.sweep
    from repgossip.errors import DivergenceError

    real = repgossip.sweep.run_experiment

    def seed_1_diverges(cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise DivergenceError("training diverged (made up for seed 1)")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(repgossip.sweep, "run_experiment", seed_1_diverges)
    out = tmp_path / "S"
    assert main(sweep_argv(out, ["seed=0,1,2"], "rounds=2")) == 3
    capsys.readouterr()
    runs = summary_rows(out)
    assert [r["status"].split(":")[0] for r in runs] == ["ok", "failed", "ok"]
    (config,) = by_config_rows(out)
    assert (config["n"], config["failed"]) == ("2", "1")
    kept = np.array([float(runs[i]["train_loss"]) for i in (0, 2)])
    assert float(config["train_loss"]) == pytest.approx(kept.mean(), rel=1e-12)
    assert float(config["train_loss_std"]) == pytest.approx(kept.std(ddof=1), rel=1e-9)
    assert "| 2 | 1 of 3 failed |" in (out / "summary.md").read_text()


def test_by_config_leaves_out_what_has_no_mean_or_std():
    from repgossip.tables import by_config, config_table

    rows = [
        {"lr": "0.1", "seed": "0", "status": "ok", "train_loss": 1.0},
        {"lr": "0.2", "seed": "0", "status": "failed: diverged"},
        {"lr": "0.2", "seed": "1", "status": "ok", "train_loss": 3.0},
    ]
    configs = by_config(rows, ["lr", "seed"])
    assert configs == [
        {"lr": "0.1", "n": 1, "failed": 0, "train_loss": 1.0, "train_loss_std": None},
        {"lr": "0.2", "n": 1, "failed": 1, "train_loss": 3.0, "train_loss_std": None},
    ]
    assert "| 0.2 | 1 | 1 of 2 failed | 3 |" in config_table(configs, ["lr", "seed"])


def test_without_seed_in_the_grid_the_tables_are_per_run(tmp_path, capsys):
    out = tmp_path / "S"
    assert main(sweep_argv(out, ["seed=0,1"], "rounds=2")) == 0
    assert (out / "summary_by_config.csv").is_file()
    assert main(sweep_argv(out, ["lr=0.01,0.02"], "rounds=2", flags=("--resume",))) == 0
    capsys.readouterr()
    assert not (out / "summary_by_config.csv").exists()  # an earlier grid's table is not kept
    lines = (out / "summary.md").read_text().splitlines()
    assert lines[0].startswith("| lr | status |") and len(lines) == 4
    assert "±" not in "".join(lines)


def test_a_seeded_sweep_folder_can_be_replaced_with_force(tmp_path, capsys):
    out = tmp_path / "S"
    assert main(sweep_argv(out, ["seed=0,1"], "rounds=2")) == 0
    assert main(sweep_argv(out, ["seed=0,1"], "rounds=2", flags=("--force",))) == 0
    capsys.readouterr()


# ---------------------------------------------------------------- 8: --jobs


def without_wall_time(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def test_jobs_2_gives_the_tables_of_jobs_1_failed_points_included(tmp_path, capsys):
    grid = ["lr=1e10,0.01", "seed=0,1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(sweep_argv(one, grid, "rounds=2")) == 3
    capsys.readouterr()
    assert main(sweep_argv(two, grid, "rounds=2", flags=("--jobs", "2"))) == 3
    captured = capsys.readouterr()
    rows = summary_rows(two)
    assert without_wall_time(rows) == without_wall_time(summary_rows(one))
    assert [r["status"].split(":")[0] for r in rows] == ["failed", "failed", "ok", "ok"]
    assert by_config_rows(two) == by_config_rows(one)
    assert by_config_rows(two)[0]["failed"] == "2"
    finished = [line for line in captured.out.splitlines() if line.startswith("[sweep ")]
    assert sorted(line.split("]")[0] for line in finished) == [f"[sweep {k}/4" for k in "1234"]
    failures = captured.err.splitlines()
    assert len(failures) == 2 and all("lr-1e10" in f and "diverged" in f for f in failures)


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_a_bad_jobs_is_one_line(tmp_path, capsys, jobs):
    out = tmp_path / "S"
    code = main(sweep_argv(out, ["seed=0,1"], flags=("--jobs", jobs)))
    one_line_error(code, capsys.readouterr().err, "--jobs")
    assert not out.exists()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def running(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie waiting to be reaped has ended)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def ended_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not running(pids)


def default_sigint() -> None:
    """SIGINT's default disposition in a child: a shell that starts the tests in the background
    without job control (`make test &` in a script) hands them SIGINT ignored, which Python
    then leaves ignored, so no signal test would mean anything."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_parallel_sweep(out: Path, seeds: str, rounds: int) -> tuple[subprocess.Popen, list[int]]:
    """A `--jobs 2` sweep of `seeds` in its own session, once both its workers are inside a
    run, and its worker processes (not multiprocessing's resource tracker)."""
    argv = sweep_argv(out, [f"seed={seeds}"], f"rounds={rounds}", flags=("--jobs", "2"))
    proc = subprocess.Popen([sys.executable, "-m", "repgossip", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_sigint)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("seed-*/metrics.jsonl"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # both workers are inside a run
    workers = [
        p for p in children(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert len(workers) == 2, workers
    return proc, workers


def kill_all(proc: subprocess.Popen) -> None:
    """Clean-up, after the checks: whatever is left in the sweep's process group (the sweep,
    workers it left behind)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
@pytest.mark.parametrize("whom", ["terminal", "parent"])
def test_ctrl_c_stops_a_parallel_sweep_in_one_line_and_leaves_no_process(tmp_path, whom):
    """`terminal`: SIGINT to the whole process group, as Ctrl-C sends it; `parent`: to the
    sweep's process alone (kill -INT)."""
    out = tmp_path / "S"
    proc, workers = start_parallel_sweep(out, "0,1,2", 1000000)
    try:
        if whom == "terminal":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert ended_within(workers, 10)
    finally:
        kill_all(proc)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["repgossip: interrupted; continue with --resume"]
    assert not (out / "seed-2").exists()  # the third point never started


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_workers_die_with_a_killed_sweep_and_an_immediate_resume_completes(tmp_path, capsys):
    """SIGKILL to the sweep's process alone (an OOM kill, `kill -9`): its workers must not run on
    unseen, holding their points' locks, and then wait on a dead pipe forever."""
    out = tmp_path / "S"
    proc, _ = start_parallel_sweep(out, "0,1", 600)
    try:
        kids = children(proc.pid)  # the workers and multiprocessing's resource tracker
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)  # not communicate(): workers left behind would hold its pipes
        assert ended_within(kids, 5), f"left running: {running(kids)}"
    finally:
        kill_all(proc)
    argv = sweep_argv(out, ["seed=0,1"], "rounds=600", flags=("--jobs", "2", "--resume"))
    assert main(argv) == 0, capsys.readouterr().err
    assert [(r["status"], r["rounds"]) for r in summary_rows(out)] == [("ok", "600")] * 2


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_worker_killed_by_a_signal_ends_the_sweep_with_128_plus_the_signal(tmp_path):
    """A worker the OOM killer takes: the sweep stops in one line with the shell's code for a
    command killed by SIGKILL (137), as study/run.py counts it, not an undocumented 1."""
    out = tmp_path / "S"
    proc, workers = start_parallel_sweep(out, "0,1,2", 1000000)
    try:
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        assert ended_within(workers, 10)
    finally:
        kill_all(proc)
    assert proc.returncode == 128 + signal.SIGKILL, err
    lines = err.splitlines()
    assert len(lines) == 1 and "SIGKILL" in lines[0] and "--resume" in lines[0], lines


# ---------------------------------------------------------------- paired differences


def _row(algorithm: str, seed: int, acc: float, status: str = "ok", topology: str = "ring"):
    return {"topology": topology, "algorithm": algorithm, "seed": seed, "status": status,
            "test_acc_mean": acc, "test_acc_p10": acc - 0.1}  # fmt: skip


def test_paired_differences_are_taken_seed_by_seed_over_the_seeds_both_ran():
    from repgossip.tables import paired_differences, paired_table

    keys = ["topology", "algorithm", "seed"]
    rows = [
        _row("deprl", 0, 0.80), _row("deprl", 1, 0.70), _row("deprl", 2, 0.90),
        _row("local", 0, 0.78), _row("local", 1, 0.71), _row("local", 2, 0.0, "failed: diverged"),
        _row("deprl", 0, 0.5, topology="star"), _row("local", 0, 0.6, topology="star"),
    ]  # fmt: skip
    ring, star = paired_differences(rows, keys, ("algorithm", "deprl"))
    assert ring["topology"] == "ring" and ring["algorithm"] == "local" and ring["seeds"] == 2
    assert ring["test_acc_mean_diff"] == pytest.approx((0.02 - 0.01) / 2)
    assert ring["test_acc_mean_diff_std"] == pytest.approx(statistics.stdev([0.02, -0.01]))
    assert ring["test_acc_mean_positive"] == "1/2"
    assert star["seeds"] == 1 and star["test_acc_mean_diff_std"] is None
    assert star["test_acc_mean_positive"] == "0/1"
    table = paired_table([ring, star], keys, ("algorithm", "deprl"))
    assert "| ring | local | 2 | 0.005 ± 0.021 | 1/2 |" in table
    assert "deprl - algorithm: test_acc_mean" in table.splitlines()[0]


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ("deprl", None),
        ("algorithm=deprl", None),
        ("fedavg", "the grid gives algorithm=deprl,local"),
        ("seed=0", "not a grid key other than seed"),
        ("topology=ring", "not a grid key other than seed"),
    ],
)
def test_paired_with_names_a_grid_value_and_needs_seeds(given, needle):
    from repgossip.tables import check_reference

    grid = {"algorithm": ["deprl", "local"], "seed": ["0", "1"]}
    if needle is None:
        assert check_reference(given, grid) == ("algorithm", "deprl")
        with pytest.raises(UsageError, match="needs seed"):
            check_reference(given, {"algorithm": ["deprl", "local"]})
    else:
        with pytest.raises(UsageError, match=needle):
            check_reference(given, grid)


def test_a_sweep_writes_its_paired_table_and_removes_it_when_not_asked(tmp_path, capsys):
    out = tmp_path / "S"
    argv = sweep_argv(out, ["algorithm=deprl,local", "seed=0,1"], flags=("--paired-with", "deprl"))
    assert main(argv) == 0
    printed = capsys.readouterr().out  # synthetic: a regression, so the loss is compared
    assert "deprl - algorithm: test_loss_mean" in printed and "test_acc_mean >" not in printed
    lines = (out / "summary_paired.csv").read_text().splitlines()
    header = "algorithm,seeds,test_loss_mean_diff,test_loss_mean_diff_std,test_loss_mean_positive"
    assert lines[0] == header and lines[1].startswith("local,2,")
    assert "deprl - algorithm" in (out / "summary.md").read_text()
    again = sweep_argv(out, ["algorithm=deprl,local", "seed=0,1"], flags=("--resume",))
    assert main(again) == 0
    assert not (out / "summary_paired.csv").exists()
    assert "deprl - algorithm" not in (out / "summary.md").read_text()
    bad = sweep_argv(tmp_path / "T", ["algorithm=deprl,local"], flags=("--paired-with", "deprl"))
    assert main(bad) == 2
    assert not (tmp_path / "T").exists()


def test_an_algorithms_parameter_goes_to_the_points_that_run_it(tmp_path, capsys):
    out = tmp_path / "S"
    argv = sweep_argv(out, ["algorithm=deprl,ditto"], "ditto_lambda=0.5")
    assert main(argv) == 0
    saved = {p.name: yaml.safe_load((p / "config.yaml").read_text()) for p in out.glob("alg*")}
    assert (
        saved["algorithm-ditto"]["ditto_lambda"] == 0.5
        and "ditto_lambda" not in saved["algorithm-deprl"]
    )
    capsys.readouterr()
    assert main(sweep_argv(tmp_path / "T", ["seed=0,1"], "density=0.3")) == 2
    assert "density is a parameter of a component" in capsys.readouterr().err
    # at its default it asks for nothing: a base config shared by sweeps of several components
    assert main(sweep_argv(tmp_path / "U", ["partition=dirichlet"], "classes_per_worker=2")) == 0
    assert main(sweep_argv(tmp_path / "V", ["partition=dirichlet"], "classes_per_worker=5")) == 2


def test_sigint_to_another_thread_interrupts_the_wait_on_workers():
    """The kernel may hand SIGINT to any thread of the sweep (the pool has helper threads); the
    main thread must still raise KeyboardInterrupt soon, not when a point ends (an untimed wait
    stays asleep until then)."""
    from concurrent.futures import ThreadPoolExecutor

    from repgossip.sweep import completed

    helper = threading.Thread(target=time.sleep, args=(30,), daemon=True)
    helper.start()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # see default_sigint
    with ThreadPoolExecutor(1) as pool:
        release = threading.Event()
        future = pool.submit(release.wait, 30)
        timer = threading.Timer(0.3, signal.pthread_kill, (helper.ident, signal.SIGINT))
        timer.start()
        start = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                list(completed({future: 0}))
            assert time.monotonic() - start < 5
        finally:
            release.set()
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
