"""Tests for `repgossip plot`: damaged logs, folders that mix tasks, and the output path (the file
written is the file named, and a path it cannot write is one line, exit 2). The runs are written by
hand: plot reads nothing but metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repgossip.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, metric: str, rounds: int = 3, tail: bytes = b"") -> Path:
    """A run folder whose metrics.jsonl has `metric` (and the common keys) for rounds 0..rounds."""
    folder.mkdir(parents=True)
    records = [
        {"round": r, "wall_s": 0.1 * r, "train_loss": 1.0 / (r + 1), "test_loss_mean": 1.0,
         "consensus_dist": 0.5 / (r + 1), "bytes_sent": 100 * r, metric: 0.5 + 0.1 * r}
        for r in range(rounds + 1)
    ]  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    (folder / "metrics.jsonl").write_bytes(text + tail)
    return folder


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, lines
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize(
    "tail",
    [b'{"round": 4, "wall_s": 0.4, "train_lo', b"\xff\xfe\x00garbage\n", b"[1, 2]\n"],
    ids=["torn-last-line", "garbled-bytes", "not-a-record"],
)
def test_an_unreadable_line_is_skipped_with_one_warning(tmp_path, capsys, tail):
    run = write_run(tmp_path / "sweep" / "a", "subspace_dist", tail=tail)
    write_run(tmp_path / "sweep" / "b", "subspace_dist")
    assert main(["plot", str(tmp_path / "sweep")]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.splitlines()
    assert len(warnings) == 1 and str(run / "metrics.jsonl") in warnings[0], warnings
    assert (tmp_path / "sweep" / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_a_folder_mixing_tasks_plots_what_each_run_has(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep / "synthetic", "subspace_dist")
    write_run(sweep / "fmnist", "test_acc_mean")
    assert main(["plot", str(sweep)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert (sweep / "curves.png").read_bytes()[:8] == PNG_MAGIC
    warnings = captured.err.splitlines()
    assert any("test_acc_mean" in w and "synthetic" in w for w in warnings), warnings
    assert any("subspace_dist" in w and "fmnist" in w for w in warnings), warnings

    assert main(["plot", str(sweep), "--metrics", "test_acc_mean"]) == 0
    capsys.readouterr()


def test_out_in_a_missing_folder_is_one_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", "subspace_dist")
    target = tmp_path / "missing" / "curves.png"
    one_line_error(main(["plot", str(run), "--out", str(target)]), capsys.readouterr().err,
                   str(tmp_path / "missing"))  # fmt: skip
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("name", "written", "magic"),
    [("x", "x.png", PNG_MAGIC), ("x.pdf", "x.pdf", b"%PDF"), ("x.SVG", "x.SVG", b"<?xml")],
)
def test_the_printed_path_is_the_file_written(tmp_path, capsys, monkeypatch, name, written, magic):
    write_run(tmp_path / "run", "subspace_dist")
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "run", "--out", name]) == 0
    printed = capsys.readouterr().out.strip().removeprefix("wrote ")
    assert printed == written
    assert (tmp_path / printed).read_bytes()[: len(magic)] == magic
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", written])


def test_an_unknown_image_format_is_one_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", "subspace_dist")
    target = tmp_path / "x.foo"
    code = main(["plot", str(run), "--out", str(target)])
    one_line_error(code, capsys.readouterr().err, "x.foo", "png", "pdf", "svg")
    assert not target.exists()
