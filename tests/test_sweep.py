"""Tests for `repgossip sweep`: every grid point checked before the folder is touched, resume
against the whole saved config, failed points recorded without stopping the rest, distinct short
folder names, one-line refusals of a malformed grid, and the sweep folder's lock. Each sweep uses
the synthetic task with tiny settings, so each point takes well under a second."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from repgossip.cli import main
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
    from repgossip.sweep import run_names

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
