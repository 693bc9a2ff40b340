"""Tests for the `repgossip` command line: errors, output folders, run, resume,
topology, sweep and plot. Runs use the synthetic task with tiny settings so each takes under a second.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from repgossip.cli import main

TINY = ["dataset=synthetic", "workers=4", "rounds=3", "samples_per_worker=20"]
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

METRIC_KEYS = {
    "round",
    "wall_s",
    "train_loss",
    "test_loss_mean",
    "consensus_dist",
    "bytes_sent",
    "subspace_dist",
}
SUMMARY_KEYS = METRIC_KEYS | {
    "per_worker_test_loss",
    "spectral_gap",
    "rounds",
    "params_shared",
    "params_private",
}


def tiny_run(out: Path, *extra: str) -> list[str]:
    """argv of a sub-second synthetic run into `out`; `extra` pairs override TINY."""
    return ["run", "--quiet", "--set", *TINY, *extra, "--out", str(out)]


def call(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in-process, for fixtures that cannot use capsys."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def read_metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    line = lines[0].strip()
    assert line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# ---------------------------------------------------------------- bad input: one line, exit 2


@dataclass(frozen=True)
class Bad:
    argv: tuple[str, ...]  # "{tmp}" is replaced by the test's tmp_path
    needles: tuple[str, ...] = ()  # must all appear in the one stderr line; () -> NEEDLES[id]
    run_out: bool = True  # a `run` command: append `--out {tmp}/out` and check it stays clean
    files: tuple[tuple[str, str], ...] = ()  # (name, text) created in tmp_path first
    out_exists: bool = False  # create `{tmp}/out` as an empty folder first


def _run(*pairs: str, **kwargs) -> Bad:
    return Bad(("run", "--quiet", "--set", *TINY, *pairs), **kwargs)


no_fmnist = pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason=f"{FMNIST_DIR} not present")

BAD_INPUTS = [
    pytest.param(_run("algorithm=nosuch"), id="unknown-algorithm"),
    pytest.param(_run("dataset=nosuch"), id="unknown-dataset"),
    pytest.param(_run("model=nosuch"), id="unknown-model"),
    pytest.param(_run("eval_model=mean"), id="unknown-eval-model"),
    pytest.param(_run("algorithm=local", "eval_model=average"), id="eval-average-of-local"),
    pytest.param(_run("topology=nosuch"), id="unknown-topology"),
    pytest.param(_run("mixing=nosuch"), id="unknown-mixing"),
    pytest.param(_run("partition=nosuch"), id="unknown-partition"),
    pytest.param(_run("engine=nosuch"), id="unknown-engine"),
    pytest.param(_run("device=nosuch"), id="unknown-device"),
    pytest.param(_run("device=cuda:x"), id="device-bad-index"),
    pytest.param(
        _run("device=cuda:7"),
        id="device-missing-gpu",
        marks=pytest.mark.skipif(
            __import__("torch").cuda.device_count() > 7, reason="this machine has an 8th GPU"
        ),
    ),
    pytest.param(_run("wokers=4"), id="unknown-key"),
    pytest.param(_run("workers=abc"), id="workers-not-int"),
    pytest.param(_run("workers=0"), id="workers-0"),
    pytest.param(_run("rounds=-1"), id="rounds-negative"),
    pytest.param(_run("batch_size=0"), id="batch-size-0"),
    pytest.param(_run("lr=0"), id="lr-0"),
    pytest.param(_run("lr=-1"), id="lr-negative"),
    pytest.param(_run("alpha=0"), id="alpha-0"),
    pytest.param(_run("edge_prob=1.5"), id="edge-prob-above-1"),
    pytest.param(_run("link_failure_prob=1"), id="link-failure-1"),
    pytest.param(_run("momentum=1.0"), id="momentum-1"),
    pytest.param(_run("head_steps=2", "head_epochs=1"), id="steps-and-epochs"),
    pytest.param(_run("algorithm=fedavg", "topology=ring"), id="fedavg-on-ring"),
    pytest.param(_run("model=cnn"), id="model-does-not-fit-dataset"),
    pytest.param(_run("rank=30", "dim=20"), id="rank-above-dim"),
    pytest.param(_run("lr=nan"), id="lr-nan"),
    pytest.param(_run("weight_decay=nan"), id="weight-decay-nan"),
    pytest.param(_run("topology={tmp}/missing_edges.txt"), id="edge-list-missing"),
    pytest.param(_run("topology={tmp}/edges3.txt"), id="edge-list-wrong-nodes"),
    pytest.param(_run("topology={tmp}/split4.txt"), id="edge-list-disconnected"),
    pytest.param(_run("topology={tmp}/garbled.txt"), id="edge-list-malformed"),
    pytest.param(_run("worker_dropout_prob=1"), id="dropout-1"),
    pytest.param(
        _run("topology=erdos_renyi", "edge_prob=0.001", "workers=40"), id="graph-never-connected"
    ),
    pytest.param(
        _run("algorithm=fedavg", "dataset=synthetic", "workers=200000"),
        id="graph-too-big-for-memory",
    ),
    pytest.param(
        Bad(("run", "--quiet", "--set", "workers=70000", "rounds=1", "samples_per_worker=none")),
        id="more-workers-than-samples",
        marks=no_fmnist,
    ),
    pytest.param(
        Bad(
            (
                "run",
                "--quiet",
                "--set",
                "workers=4",
                "rounds=1",
                "samples_per_worker=20",
                "partition=shards",
                "classes_per_worker=11",
            ),
            ("classes_per_worker", "11"),
        ),
        id="classes-per-worker-11",
        marks=no_fmnist,
    ),  # fmt: skip
    pytest.param(
        Bad(("run", "--quiet", "--config", "{tmp}/nope.yaml"), ("nope.yaml",)),
        id="config-missing",
    ),
    pytest.param(
        Bad(("run", "--quiet", "--config", "{tmp}/broken.yaml"), ("broken.yaml",)),
        id="config-broken-yaml",
    ),
    pytest.param(
        Bad(("run", "--quiet", "--config", "{tmp}/list.yaml"), ("list.yaml",)),
        id="config-is-a-list",
    ),
    pytest.param(Bad(("run", "--set", "workers"), ("workers", "=")), id="set-without-equals"),
    pytest.param(
        Bad(("run", "--quiet", "--resume"), ("resume", "out"), out_exists=True),
        id="resume-empty-folder",
    ),
    pytest.param(
        Bad(("topology", "nosuch", "--workers", "4"), ("nosuch", "ring"), run_out=False),
        id="topology-unknown",
    ),
    pytest.param(
        Bad(("topology", "ring", "--workers", "0"), ("workers", "0"), run_out=False),
        id="topology-workers-0",
    ),
    pytest.param(
        Bad(
            ("topology", "ring", "--workers", "4", "--set", "mixing=nosuch"),
            ("nosuch",),
            run_out=False,
        ),
        id="topology-bad-mixing",
    ),  # fmt: skip
    pytest.param(Bad(("nosuch",), ("nosuch", "run"), run_out=False), id="unknown-command"),
    pytest.param(
        Bad(
            ("sweep", "--grid", "wokers=2,4", "--out", "{tmp}/sweep"),
            ("wokers", "workers"),
            run_out=False,
        ),
        id="sweep-unknown-grid-key",
    ),  # fmt: skip
    pytest.param(Bad(("plot", "{tmp}/nothing"), ("nothing",), run_out=False), id="plot-none"),
]

# What each bad value must show (besides the value-specific needles set in Bad itself).
NEEDLES = {
    "unknown-algorithm": ("nosuch", "deprl"),
    "unknown-dataset": ("nosuch", "synthetic"),
    "unknown-model": ("nosuch", "linear"),
    "unknown-eval-model": ("'mean'", "own, average"),
    "eval-average-of-local": ("eval_model=average", "'local'", "use own"),
    "unknown-topology": ("nosuch", "ring"),
    "unknown-mixing": ("nosuch", "metropolis"),
    "unknown-partition": ("nosuch", "dirichlet"),
    "unknown-engine": ("nosuch", "sim"),
    "unknown-device": ("nosuch", "cpu"),
    "device-bad-index": ("cuda:x", "cuda:N"),
    "device-missing-gpu": ("cuda:7", "cpu"),
    "unknown-key": ("wokers", "workers"),
    "workers-not-int": ("workers", "abc"),
    "workers-0": ("workers", "0"),
    "rounds-negative": ("rounds", "-1"),
    "batch-size-0": ("batch_size", "0"),
    "lr-0": ("lr", "0"),
    "lr-negative": ("lr", "-1"),
    "alpha-0": ("alpha", "0"),
    "edge-prob-above-1": ("edge_prob", "1.5"),
    "link-failure-1": ("link_failure_prob", "1"),
    "momentum-1": ("momentum", "1.0"),
    "steps-and-epochs": ("head_steps", "head_epochs"),
    "fedavg-on-ring": ("fedavg", "ring", "complete"),
    "model-does-not-fit-dataset": ("cnn", "synthetic", "linear"),
    "rank-above-dim": ("rank", "30", "20"),
    "lr-nan": ("lr", "nan"),
    "weight-decay-nan": ("weight_decay", "nan"),
    "edge-list-missing": ("missing_edges.txt",),
    "edge-list-wrong-nodes": ("edges3.txt", "3", "4"),
    "edge-list-disconnected": ("disconnected",),
    "edge-list-malformed": ("garbled.txt", "line 2"),
    "dropout-1": ("worker_dropout_prob", "1"),
    "graph-never-connected": ("edge_prob", "0.001"),
    "graph-too-big-for-memory": ("'complete'", "200000", "GiB", "sparser"),
    "more-workers-than-samples": ("70000",),
}

SETUP_FILES = {
    "edges3.txt": "0 1\n1 2\n2 0\n",
    "split4.txt": "0 1\n2 3\n",
    "garbled.txt": "0 1\n1 two\n",
    "broken.yaml": "workers: [1, 2\nlr: 0.1\n",
    "list.yaml": "- workers\n- lr\n",
}


def _prepare(case: Bad, tmp_path: Path) -> tuple[list[str], Path]:
    for name, text in SETUP_FILES.items():
        (tmp_path / name).write_text(text)
    out = tmp_path / "out"
    if case.out_exists:
        out.mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    if case.run_out:
        argv += ["--out", str(out)]
    return argv, out


CASES = BAD_INPUTS


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, request):
    argv, _ = _prepare(case, tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    needles = case.needles if case.needles else NEEDLES[request.node.callspec.id]
    assert_one_line_error(code, captured.err, *needles)


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].run_out])
def test_bad_input_leaves_no_partial_output(case, tmp_path, capsys):
    argv, out = _prepare(case, tmp_path)
    assert main(argv) == 2
    capsys.readouterr()
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_every_table_case_has_needles():
    for param in BAD_INPUTS:
        assert param.values[0].needles or param.id in NEEDLES, param.id


def test_resume_without_out_is_refused(capsys):
    code = main(["run", "--resume", "--set", *TINY])
    assert_one_line_error(code, capsys.readouterr().err, "--resume", "--out")


# ---------------------------------------------------------------- output folder protection


def test_non_empty_out_is_not_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code = main(tiny_run(out))
    assert_one_line_error(code, capsys.readouterr().err, str(out), "--force", "--resume")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"

    code = main([*tiny_run(out), "--force"])  # --force replaces only what repgossip wrote
    assert_one_line_error(code, capsys.readouterr().err, str(out), "not a repgossip folder")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    run = tmp_path / "run"
    assert main(tiny_run(run)) == 0
    first = (run / "metrics.jsonl").read_text()
    assert main([*tiny_run(run), "--force", "--set", "seed=1"]) == 0
    capsys.readouterr()
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= names
    assert (run / "metrics.jsonl").read_text() != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.replaced")]


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    code = main(tiny_run(target))
    assert_one_line_error(code, capsys.readouterr().err, str(target))
    assert target.read_text() == "x"


# ---------------------------------------------------------------- a finished run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code, stdout, stderr = call(tiny_run(out))
    assert code == 0, stderr
    return out, stdout


def test_run_writes_the_contract_files(finished_run):
    out, stdout = finished_run
    assert {p.name for p in out.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
    }
    assert not list(out.glob("*.tmp"))
    assert str(out) in stdout


def test_run_config_yaml_is_fully_resolved(finished_run):
    out, _ = finished_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset"] == "synthetic"
    assert (saved["workers"], saved["rounds"], saved["samples_per_worker"]) == (4, 3, 20)
    assert saved["model"] == "linear"
    assert saved["lr"] == pytest.approx(0.01)
    assert saved["momentum"] == 0.0
    assert (saved["head_epochs"], saved["body_epochs"]) == (3, 1)


def test_run_metrics_has_every_round_with_contract_keys(finished_run):
    out, _ = finished_run
    records = read_metrics(out)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for record in records:
        assert set(record) >= METRIC_KEYS, METRIC_KEYS - set(record)
        assert "test_acc_mean" not in record  # regression task: subspace_dist instead
        assert all(math.isfinite(record[k]) for k in METRIC_KEYS)
        assert 0.0 <= record["subspace_dist"] <= 1.0 + 1e-9
    assert records[0]["bytes_sent"] == 0
    sent = [r["bytes_sent"] for r in records]
    assert sent == sorted(sent) and sent[-1] > 0  # cumulative
    walls = [r["wall_s"] for r in records]
    assert walls == sorted(walls)


def test_run_summary_has_contract_keys(finished_run):
    out, _ = finished_run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS, SUMMARY_KEYS - set(summary)
    assert len(summary["per_worker_test_loss"]) == 4
    assert summary["rounds"] == 3
    assert summary["round"] == 3
    assert 0.0 < summary["spectral_gap"] <= 1.0
    assert summary["params_shared"] > 0 and summary["params_private"] > 0
    last = read_metrics(out)[-1]
    for key in METRIC_KEYS - {"wall_s"}:
        assert summary[key] == pytest.approx(last[key])


def test_set_pairs_and_repeated_flag_all_take_effect(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("workers: 6\nlr: 0.03\nseed: 9\nbatch_size: 4\n")
    out = tmp_path / "out"
    argv = [
        "run", "--quiet", "--config", str(base),
        "--set", "dataset=synthetic", "workers=4", "rounds=1", "samples_per_worker=20", "seed=1",
        "--set", "seed=5", "lr=0.02",
        "--set", "batch_size=8",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["workers"] == 4  # --set beats the file
    assert saved["seed"] == 5  # the later --set wins
    assert saved["lr"] == pytest.approx(0.02)
    assert saved["batch_size"] == 8  # the third flag counts too
    assert (saved["rounds"], saved["samples_per_worker"]) == (1, 20)


# ---------------------------------------------------------------- resume


def test_resume_extends_a_finished_run_and_refuses_a_changed_lr(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(tiny_run(out, "rounds=2")) == 0
    assert [r["round"] for r in read_metrics(out)] == [0, 1, 2]

    assert main(["run", "--quiet", "--resume", "--set", "rounds=4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert [r["round"] for r in read_metrics(out)] == [0, 1, 2, 3, 4]
    assert json.loads((out / "summary.json").read_text())["rounds"] == 4
    assert yaml.safe_load((out / "config.yaml").read_text())["rounds"] == 4

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["run", "--quiet", "--resume", "--set", "rounds=6", "lr=0.5", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "'lr'")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_with_fewer_rounds_keeps_folder_consistent(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(tiny_run(out, "rounds=4")) == 0
    code = main(["run", "--quiet", "--resume", "--set", "rounds=2", "--out", str(out)])
    capsys.readouterr()
    if code == 2:  # refusing is fine
        return
    saved = yaml.safe_load((out / "config.yaml").read_text())["rounds"]
    assert saved == json.loads((out / "summary.json").read_text())["rounds"]
    assert saved == read_metrics(out)[-1]["round"]


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, capsys):
    split, whole = tmp_path / "split", tmp_path / "whole"
    assert main(tiny_run(split, "rounds=2")) == 0
    assert main(["run", "--quiet", "--resume", "--set", "rounds=3", "--out", str(split)]) == 0
    assert main(tiny_run(whole, "rounds=3")) == 0
    capsys.readouterr()
    a, b = read_metrics(split), read_metrics(whole)
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in METRIC_KEYS - {"wall_s"}:
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["round"], key)


# ---------------------------------------------------------------- topology


def test_topology_ring_prints_one_json_object(capsys):
    assert main(["topology", "ring", "--workers", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["workers"] == 8
    assert info["edges"] == 8
    assert info["connected"] is True
    assert info["doubly_stochastic"] is True
    expected = 1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 8))
    assert info["spectral_gap"] == pytest.approx(expected, abs=1e-9)


def test_topology_takes_set_and_edge_list_files(tmp_path, capsys):
    edges = tmp_path / "square.txt"
    edges.write_text("# a 4-cycle\n0 1\n1 2\n2 3\n3 0\n")
    assert main(["topology", str(edges), "--workers", "4", "--set", "mixing=max_degree"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["workers"], info["edges"], info["mixing"]) == (4, 4, "max_degree")
    assert info["connected"] is True and info["doubly_stochastic"] is True


# ---------------------------------------------------------------- sweep and plot


def test_sweep_then_plot(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep", "--quiet", "--grid", "algorithm=deprl,local",
        "--set", "dataset=synthetic", "workers=4", "rounds=2", "samples_per_worker=20",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "deprl" in capsys.readouterr().out
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["algorithm"] for row in rows] == ["deprl", "local"]
    for row in rows:
        assert row["subspace_dist"] and row["train_loss"]
        assert int(row["rounds"]) == 2
    assert float(rows[1]["bytes_sent"]) == 0  # local never communicates
    md = (out / "summary.md").read_text().splitlines()
    assert len(md) == 4 and md[0].startswith("| algorithm")
    for row in rows:
        assert len(read_metrics(out / f"algorithm-{row['algorithm']}")) == 3

    assert main(["plot", str(out)]) == 0
    capsys.readouterr()
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 1
    assert pngs[0].read_bytes()[:8] == PNG_MAGIC

    target = tmp_path / "one.png"
    assert main(["plot", str(out / "algorithm-deprl"), "--out", str(target)]) == 0
    assert target.read_bytes()[:8] == PNG_MAGIC


def test_plot_unknown_metric_is_one_line(tmp_path, capsys, finished_run):
    out, _ = finished_run
    code = main(["plot", str(out), "--metrics", "nosuch", "--out", str(tmp_path / "x.png")])
    assert_one_line_error(code, capsys.readouterr().err, "nosuch", "train_loss")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- the real console path


def _console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "repgossip", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_console_bad_input_exits_2_without_traceback(tmp_path):
    proc = _console("run", "--set", "workers=abc", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, "workers", "abc")
    assert list(tmp_path.iterdir()) == []  # no runs/ folder created


def test_console_topology_succeeds(tmp_path):
    proc = _console("topology", "ring", "--workers", "8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["edges"] == 8


def test_missing_fmnist_files_say_how_to_get_them(tmp_path, capsys, monkeypatch):
    from repgossip.data import sources

    monkeypatch.setattr(sources, "FMNIST_DIRS", (str(tmp_path / "nowhere"),))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    argv = [
        "run",
        "--quiet",
        "--set",
        "rounds=1",
        f"data_dir={tmp_path / 'empty'}",
        "--out",
        str(out),
    ]
    assert_one_line_error(main(argv), capsys.readouterr().err, "dataset-fashion-mnist", "data_dir")
    assert not out.exists()


def test_an_output_folder_that_cannot_be_created_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["run", "--quiet", "--set", *TINY, "--out", str(blocker / "sub")]
    assert_one_line_error(main(argv), capsys.readouterr().err, "sub")
