"""Tests for `repgossip plot`: damaged logs, folders that mix tasks, the output path (the file
written is the file named, a path it cannot take is one line, exit 2, and a write that fails one
line, exit 5), and the seeds of one
configuration drawn as a mean and a band. Most runs are written by hand, as plot reads nothing but
metrics.jsonl (and config.yaml to tell seeds apart); the seeded sweep is a real tiny one."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
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


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("name", ["curves.png", "curves.svg"])
def test_a_write_that_fails_is_a_storage_error_with_exit_5(tmp_path, capsys, name):
    """A full disk (here /dev/full behind the path) or a read-only folder is a storage failure,
    exit 5 as for a run's files, not bad input (2): the path itself was fine."""
    run = write_run(tmp_path / "run", "subspace_dist")
    target = tmp_path / name
    target.symlink_to("/dev/full")  # opens, and every write fails with ENOSPC
    code = main(["plot", str(run), "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 5, err
    assert err.count("\n") == 1 and str(target) in err and "No space left" in err, err


# ---------------------------------------------------------------- seeds: a mean and a band

PDF_MAGIC = b"%PDF"
TINY = ["dataset=synthetic", "workers=4", "rounds=2", "samples_per_worker=20"]


@pytest.fixture(scope="module")
def seeded_sweep(tmp_path_factory) -> Path:
    """A real tiny sweep of 2 algorithms x 3 seeds."""
    out = tmp_path_factory.mktemp("plots") / "S"
    argv = ["sweep", "--quiet", "--grid", "seed=0,1,2", "algorithm=deprl,local",
            "--set", *TINY, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def figure_of(folder: Path, metric: str, **options):
    from repgossip.plots import draw, find_runs

    return draw(folder, find_runs(folder), (metric,), **options)


def test_seeds_are_drawn_as_their_mean_and_a_std_band(seeded_sweep):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    fig = figure_of(seeded_sweep, "train_loss", x="bytes_sent")
    try:
        (ax,) = fig.axes
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"algorithm=deprl (n=3)", "algorithm=local (n=3)"}
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2
        assert "std" in ax.get_legend().get_title().get_text()
        assert ax.get_xlabel() == "bytes sent"
        seeds = [read_jsonl(seeded_sweep / f"seed-{s}__algorithm-deprl" / "metrics.jsonl")
                 for s in range(3)]  # fmt: skip
        loss = np.array([[r["train_loss"] for r in records] for records in seeds])
        sent = np.array([[r["bytes_sent"] for r in records] for records in seeds])
        line = lines["algorithm=deprl (n=3)"]
        np.testing.assert_allclose(line.get_ydata(), loss.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(line.get_xdata(), sent.mean(axis=0), rtol=1e-12)
        edges = np.concatenate([p.vertices[:, 1] for p in bands[0].get_paths()])
        spread = loss.std(axis=0, ddof=1)
        assert edges.max() == pytest.approx((loss.mean(axis=0) + spread).max(), rel=1e-9)
    finally:
        plt.close(fig)


def test_a_minmax_band_spans_the_seeds(seeded_sweep):
    import matplotlib.pyplot as plt

    fig = figure_of(seeded_sweep, "subspace_dist", band="minmax")
    try:
        ax = fig.axes[0]
        assert "min to max" in ax.get_legend().get_title().get_text()
        values = np.array([[r["subspace_dist"] for r in read_jsonl(p / "metrics.jsonl")]
                           for p in sorted(seeded_sweep.glob("*__algorithm-local"))])  # fmt: skip
        edges = np.concatenate([p.vertices[:, 1] for p in ax.collections[1].get_paths()])
        assert (edges.min(), edges.max()) == pytest.approx((values.min(), values.max()))
    finally:
        plt.close(fig)


def test_runs_without_repeated_configs_are_plain_lines_named_by_folder(tmp_path):
    import matplotlib.pyplot as plt

    write_run(tmp_path / "sweep" / "a", "subspace_dist")
    write_run(tmp_path / "sweep" / "b", "subspace_dist")
    fig = figure_of(tmp_path / "sweep", "subspace_dist", x="wall_s")
    try:
        ax = fig.axes[0]
        assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
        assert not ax.collections and ax.get_legend().get_title().get_text() == ""
        assert ax.get_xlabel() == "wall time (s)"
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    ("extra", "written", "magic"),
    [((), "curves.png", PNG_MAGIC), (("--format", "pdf"), "curves.pdf", PDF_MAGIC),
     (("--format", "pdf", "--out", "{dir}/x.png"), "x.png", PNG_MAGIC)],
    ids=["default-png", "format-pdf", "out-suffix-decides"],
)  # fmt: skip
def test_plot_with_seeds_and_bytes_on_x_writes_a_print_resolution_file(
    seeded_sweep, tmp_path, capsys, extra, written, magic
):
    extra = tuple(e.replace("{dir}", str(tmp_path)) for e in extra)
    assert main(["plot", str(seeded_sweep), "--x", "bytes_sent", *extra]) == 0
    target = Path(capsys.readouterr().out.strip().removeprefix("wrote "))
    assert target.name == written
    data = target.read_bytes()
    assert data[: len(magic)] == magic
    if magic == PNG_MAGIC:  # 3 panels of 4.5 x 3.6 inches at 300 dpi
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (3 * 4.5 * 300, 3.6 * 300)
    target.unlink()


@pytest.mark.parametrize(
    ("flag", "value"), [("--x", "epoch"), ("--format", "jpg"), ("--band", "iqr")]
)
def test_an_invalid_x_format_or_band_is_one_line(tmp_path, capsys, flag, value):
    run = write_run(tmp_path / "run", "subspace_dist")
    one_line_error(main(["plot", str(run), flag, value]), capsys.readouterr().err, flag, value)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize(
    ("option", "needle"), [({"x": "epoch"}, "x axis"), ({"fmt": "jpg"}, "format"),
                           ({"band": "iqr"}, "band")],
)  # fmt: skip
def test_the_library_refuses_an_unknown_option(tmp_path, option, needle):
    from repgossip.errors import UsageError
    from repgossip.plots import plot_runs

    run = write_run(tmp_path / "run", "subspace_dist")
    with pytest.raises(UsageError, match=needle):
        plot_runs(run, **option)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_a_run_that_diverged_in_its_first_round_plots_without_warnings(tmp_path, capsys):
    """Its log holds round 0 only, where the consensus distance is exactly 0: nothing a log
    scale can show, so that panel stays linear instead of a matplotlib warning."""
    run = tmp_path / "run"
    run.mkdir()
    first = {"round": 0, "wall_s": 0.0, "train_loss": 3.4, "test_loss_mean": 2.7,
             "consensus_dist": 0.0, "bytes_sent": 0}  # fmt: skip
    (run / "metrics.jsonl").write_text(json.dumps(first) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
