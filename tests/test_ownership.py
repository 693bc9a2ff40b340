"""Nothing lost, whatever the spelling: an output path is resolved once, before any check, and
every check and write uses that path; --force and the clean-up of a failed run remove exactly what
repgossip wrote (listed in the folder's manifest), as the kind it wrote. Each test reproduced a
loss of the previous version: `--out newdir/..` emptied the working directory when its run failed,
`precious/x/..` overwrote a finished run or sweep without --force, and --force removed a folder
`my_notes.tmp/`, another experiment's files under `tensorboard/`, a folder named `curves.png`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import repgossip
import repgossip.runner as runner
from repgossip.cli import main
from repgossip.errors import UsageError
from repgossip.runfolder import LOCK_FILE, MANIFEST_FILE

T = ["dataset=synthetic", "workers=4", "rounds=2", "samples_per_worker=20"]


def run(out: str | Path, *sets: str, flags: tuple[str, ...] = ()) -> int:
    return main(["run", "--quiet", "--set", *T, *sets, "--out", str(out), *flags])


def sweep(out: str | Path, grid: str, flags: tuple[str, ...] = ()) -> int:
    return main(["sweep", "--quiet", "--grid", grid, "--set", *T, "--out", str(out), *flags])


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry below `folder` by relative path: a file's bytes, None for a folder (lock files
    aside: a refused run may leave one, empty)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
        if p.name != LOCK_FILE
    }


def one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    return err


def fail_in_round_1(monkeypatch) -> None:
    """Ctrl-C in the first round, after the folder was claimed and round 0 logged."""

    def interrupted(exp, round_index):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_round", interrupted)


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A user's working directory (a thesis and sources), inside a parent holding a file too."""
    parent = tmp_path / "parent"
    (parent / "work" / "src").mkdir(parents=True)
    (parent / "other.txt").write_text("a neighbour's file")
    (parent / "work" / "thesis.tex").write_text("\\documentclass{article}")
    (parent / "work" / "src" / "main.py").write_text("print('mine')")
    monkeypatch.chdir(parent / "work")
    return parent / "work"


# ---------------------------------------------------------------- 1: one path, resolved first


@pytest.mark.parametrize(
    ("spelling", "named"),
    [("newdir/..", "work"), ("newdir/../", "work"), ("./a/b/../..", "work"),
     ("newdir/../..", "parent"), ("{work}/newdir/..", "work")],
)  # fmt: skip
@pytest.mark.parametrize("flags", [(), ("--force",)], ids=["plain", "force"])
def test_out_through_a_missing_folder_is_the_folder_it_names(
    work, capsys, monkeypatch, spelling, named, flags
):
    before = tree(work.parent)
    fail_in_round_1(monkeypatch)
    assert run(spelling.format(work=work), flags=flags) == 2
    one_line(capsys, str(work if named == "work" else work.parent))
    assert tree(work.parent) == before  # nothing written, nothing removed, no newdir made


@pytest.mark.parametrize("spelling", ["precious/x/..", "precious/x/../", "./precious/x/y/../.."])
def test_out_through_a_missing_folder_never_overwrites_a_finished_run(work, capsys, spelling):
    assert run("precious") == 0
    before = tree(work)
    capsys.readouterr()
    assert run(spelling, "seed=4") == 2
    one_line(capsys, "not empty", "--force")
    assert tree(work) == before


def test_a_sweep_through_a_missing_folder_never_overwrites_a_finished_sweep(work, capsys):
    assert sweep("precious", "lr=0.01,0.02") == 0
    before = tree(work)
    capsys.readouterr()
    assert sweep("precious/x/..", "lr=0.03") == 2
    one_line(capsys, "not empty")
    assert tree(work) == before


def test_the_api_resolves_out_the_same_way(work):
    assert run("precious") == 0
    before = tree(work)
    with pytest.raises(UsageError, match="not empty"):
        repgossip.run(dict(kv.split("=") for kv in T), out="precious/x/..")
    assert tree(work) == before


def test_a_run_through_a_link_to_an_empty_folder_that_fails_leaves_both_as_they_were(
    tmp_path, capsys, monkeypatch
):
    target, link = tmp_path / "scratch" / "run", tmp_path / "link"
    target.mkdir(parents=True)
    link.symlink_to(target)
    fail_in_round_1(monkeypatch)
    assert run(link) == 130
    assert link.is_symlink() and link.resolve() == target
    assert target.is_dir() and not list(target.iterdir())


def test_a_leading_tilde_is_the_home_folder(tmp_path, monkeypatch, capsys):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert run("~/runs/a") == 0
    assert (home / "runs" / "a" / "summary.json").is_file()
    assert not list(work.iterdir())  # no folder called "~" where it is easy to `rm -rf ~`


# ---------------------------------------------------------------- 2: only what we wrote


def _run_with_tensorboard(out: Path) -> int:
    pytest.importorskip("tensorboard")
    return run(out, "tensorboard=true")


@pytest.mark.parametrize(
    ("entry", "make_run"),
    [("my_notes.tmp/notes.txt", run), ("curves.png/figure.svg", run),
     ("tensorboard/events.out.tfevents.1.other-experiment", run),
     ("tensorboard/events.out.tfevents.1.other-experiment", _run_with_tensorboard)],
    ids=["tmp-named-folder", "folder-named-curves.png", "tensorboard-folder-of-another",
         "another-experiment-in-our-tensorboard"],
)  # fmt: skip
def test_force_never_removes_entries_that_only_look_like_ours(tmp_path, capsys, entry, make_run):
    out = tmp_path / "run"
    assert make_run(out) == 0
    (out / entry).parent.mkdir(exist_ok=True)
    (out / entry).write_text("the user's")
    before = tree(out)
    capsys.readouterr()
    assert run(out, "seed=2", flags=("--force",)) == 2
    one_line(capsys, "will not replace", entry.split("/")[0])
    assert tree(out) == before


def test_force_replaces_a_run_with_tensorboard_events_it_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run_with_tensorboard(out) == 0
    old = {p.name for p in (out / "tensorboard").iterdir()}
    assert run(out, "seed=2", "tensorboard=true", flags=("--force",)) == 0
    assert not old & {p.name for p in (out / "tensorboard").iterdir() if p.name != MANIFEST_FILE}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old folder is gone


def test_force_on_a_sweep_never_removes_entries_that_only_look_like_ours(tmp_path, capsys):
    out = tmp_path / "S"
    assert sweep(out, "lr=0.01,0.02") == 0
    (out / "curves.png").mkdir()
    (out / "curves.png" / "mine.txt").write_text("the user's")
    before = tree(out)
    capsys.readouterr()
    assert sweep(out, "lr=0.01,0.02", flags=("--force",)) == 2
    one_line(capsys, "will not replace", "curves.png")
    assert tree(out) == before


def test_the_clean_up_of_a_failed_run_removes_only_what_it_wrote(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def user_adds_a_file_then_interrupted(exp, round_index):
        (out / "notes.txt").write_text("written while the run started")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_round", user_adds_a_file_then_interrupted)
    assert run(out) == 130
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_tensorboard_on_resume_where_tensorboard_is_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out) == 0
    (out / "tensorboard").write_text("the user's")
    before = tree(out)
    capsys.readouterr()
    assert run(out, "rounds=3", "tensorboard=true", flags=("--resume",)) == 2
    one_line(capsys, str(out / "tensorboard"), "is a file")
    assert tree(out) == before


# ---------------------------------------------------------------- folders of earlier releases


def as_previous_release(folder: Path) -> None:
    """What the release before manifests left: the same files, and a marker of the kind only."""
    kind = json.loads((folder / MANIFEST_FILE).read_text().splitlines()[0])["kind"]
    (folder / MANIFEST_FILE).write_text(f"{kind}\n")
    for sub in folder.iterdir():
        if sub.is_dir() and (sub / MANIFEST_FILE).is_file():
            (sub / MANIFEST_FILE).unlink() if kind == "run" else as_previous_release(sub)


def test_force_replaces_a_run_folder_of_the_previous_release(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out) == 0
    as_previous_release(out)
    assert run(out, "seed=2", flags=("--force",)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_force_keeps_a_previous_release_s_tensorboard_folder(tmp_path, capsys):
    """The previous release listed nothing: its tensorboard/ cannot be told from another
    experiment's, so the folder is not replaced."""
    out = tmp_path / "run"
    assert _run_with_tensorboard(out) == 0
    as_previous_release(out)
    before = tree(out)
    capsys.readouterr()
    assert run(out, "seed=2", flags=("--force",)) == 2
    one_line(capsys, "will not replace", "tensorboard")
    assert tree(out) == before


def test_a_resumed_previous_release_folder_keeps_its_files_as_ours(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out) == 0
    as_previous_release(out)
    (out / "notes.txt").write_text("the user's")
    assert run(out, "rounds=3", flags=("--resume",)) == 0
    listed = (out / MANIFEST_FILE).read_text()
    assert '"config.yaml"' in listed and "notes.txt" not in listed
    capsys.readouterr()
    assert run(out, "seed=2", flags=("--force",)) == 2
    one_line(capsys, "(notes.txt)")


def test_force_replaces_a_sweep_folder_of_the_previous_release(tmp_path, capsys):
    out = tmp_path / "S"
    assert sweep(out, "lr=0.01,0.02") == 0
    as_previous_release(out)
    (out / "lr-0.02" / "notes.txt").write_text("the user's")
    capsys.readouterr()
    assert sweep(out, "lr=0.01,0.02", flags=("--force",)) == 2
    one_line(capsys, "(lr-0.02)")
    (out / "lr-0.02" / "notes.txt").unlink()
    assert sweep(out, "lr=0.01,0.02", flags=("--force",)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S"]
    assert os.listdir(out / "lr-0.01")
