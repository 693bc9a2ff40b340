"""The study's plan and report (study/): every sweep is a valid grid, and the report's reading of
runs (rounds to a target, medians with seeds that never got there, generated blocks) is right."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import yaml

from repgossip.config import build_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "study"))
import plan  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402


def _points(sweep: plan.Sweep) -> list[dict[str, object]]:
    base = yaml.safe_load((plan.CONFIGS / sweep.config).read_text())
    sets = dict(s.split("=", 1) for s in sweep.sets)
    keys, lists = zip(*(g.split("=", 1) for g in sweep.grid), strict=True)
    grids = [v.split(",") for v in lists]
    return [
        base | sets | dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grids)
    ]


@pytest.mark.parametrize("sweep", plan.SWEEPS, ids=lambda s: s.name)
def test_every_point_of_every_sweep_is_a_valid_config(sweep: plan.Sweep) -> None:
    points = _points(sweep)
    assert points
    for point in points:
        build_config(point)  # raises UsageError on any bad key or value


def test_sweep_names_are_unique_and_commands_resume() -> None:
    names = [s.name for s in plan.SWEEPS]
    assert len(names) == len(set(names))
    for sweep in plan.SWEEPS:
        command = sweep.command(jobs=2)
        assert command[:4] == [sys.executable, "-m", "repgossip", "sweep"] and "--resume" in command


def test_rounds_to_target_and_the_median_over_seeds() -> None:
    metrics = [{"round": r, "acc": a} for r, a in enumerate([0.1, 0.5, 0.92, 0.89, 0.95])]
    assert report.first_round(metrics, "acc", lambda v: v >= 0.9) == 2
    assert report.first_round(metrics, "acc", lambda v: v >= 0.99) is None
    assert report._median_reached([5, 3, None]) == 5  # a seed that never got there is infinite
    assert report._median_reached([5, None, None]) is None
    assert report._median_reached([2, 4, 6, 8]) == 5
    assert report._median_reached([2, 4, 6, None]) == 5


def test_fill_replaces_only_its_block() -> None:
    text = "a\n<!-- study:x -->\nold\n<!-- /study:x -->\nb\n<!-- study:y -->\nkeep\n<!-- /study:y -->\n"
    filled = report.fill(text, "x", "new table")
    assert "new table" in filled and "old" not in filled and "keep" in filled
    assert report.fill(filled, "x", "again").count("again") == 1
    with pytest.raises(SystemExit, match="no block"):
        report.fill(text, "z", "t")


def test_runs_are_read_with_failures_counted(tmp_path: Path) -> None:
    for seed, acc in ((0, 0.8), (1, None)):
        folder = tmp_path / "sweep-a" / f"seed-{seed}"
        folder.mkdir(parents=True)
        config = {"algorithm": "deprl", "seed": seed, "reset_momentum": False,
                  "partition": "dirichlet", "alpha": 0.1}  # fmt: skip
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        if acc is not None:
            (folder / "summary.json").write_text(json.dumps({"test_acc_mean": acc}))
    runs = report.load_runs(tmp_path)
    assert len(runs) == 2
    assert report.values(runs, "test_acc_mean") == [0.8]
    assert report.failed_note(runs) == " (1 unfinished)"  # the sweep has not said it failed
    (tmp_path / "sweep-a" / "summary.csv").write_text(
        "algorithm,seed,reset_momentum,alpha,status,test_acc_mean\n"
        "deprl,0,false,0.1,ok,0.8\ndeprl,1,false,0.1,failed: diverged,\n"
    )
    assert report.failed_note(report.load_runs(tmp_path)) == " (1/2 diverged)"
    assert report.mean_std([0.8, 0.6]) == "0.700 ± 0.141"


def test_table_cells_are_read_as_the_config_reads_them(tmp_path: Path) -> None:
    # `none` and `5e1` as typed in a grid: a run that failed is counted failed, not unfinished
    for name, config in (("a", {"gossip_first": None, "lr": 50.0}), ("b", {"lr": 5.0})):
        folder = tmp_path / "sweep-x" / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "sweep-x" / "summary.csv").write_text(
        "gossip_first,lr,status\nnone,5e1,failed: diverged\nnone,5,failed: diverged\n"
    )
    runs = report.load_runs(tmp_path)
    assert report.failed_note(runs) == " (2/2 diverged)"


def test_unreadable_run_folders_are_skipped_with_a_line(tmp_path: Path, capsys) -> None:
    good, empty, torn = (tmp_path / "sweep-a" / n for n in ("good", "empty", "torn"))
    for folder in (good, empty, torn):
        folder.mkdir(parents=True)
    (good / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))
    (empty / "config.yaml").write_text("")
    (torn / "config.yaml").write_text(yaml.safe_dump({"seed": 1}))
    (torn / "summary.json").write_text('{"test_acc_me')
    runs = report.load_runs(tmp_path)
    assert [r.folder.name for r in runs] == ["good"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("skipped ") for line in lines)


HOSTILE_FILES = {
    "summary-not-an-object": ("seed-0/summary.json", b"[1, 2]", "skipped", "not an object"),
    "summary-text-for-a-number": (
        "seed-0/summary.json", b'{"test_acc_mean": "0.8"}', "skipped", "'0.8', not a number",
    ),
    "summary-not-utf8": ("seed-0/summary.json", b'{"a": "\xff"}', "skipped", "not UTF-8"),
    "table-without-status": ("summary.csv", b"seed,test_acc_mean\n0,0.8\n1,\n", "ignored",
                             "no 'status' column"),
    "table-bad-header": ("summary.csv", b"sed,status\n0,ok\n1,failed: x\n", "ignored",
                         "did you mean 'seed'"),
    "table-bad-seed-cell": ("summary.csv", b"seed,status\nzero,ok\n1,failed: x\n", "ignored",
                            "line 2: seed must be an integer, got 'zero'"),
    "table-short-row": ("summary.csv", b"seed,status\n0\n1,failed: x\n", "ignored",
                        "line 2 has 1 cells"),
    "table-not-utf8": ("summary.csv", b"seed,status\n\xff,ok\n", "ignored", "not UTF-8"),
}  # fmt: skip


@pytest.mark.parametrize(("name", "text", "verdict", "needle"), HOSTILE_FILES.values(),
                         ids=HOSTILE_FILES)  # fmt: skip
def test_hostile_summaries_and_tables_are_one_line_each_and_the_report_goes_on(
    tmp_path: Path, capsys, name: str, text: bytes, verdict: str, needle: str
) -> None:
    """A run whose summary.json cannot be read is skipped; a sweep table that cannot be read is
    ignored (its runs without a summary count as unfinished): one line each, no traceback, and
    every generated block is still made from what could be read."""
    sweep = tmp_path / "accuracy-x"
    for seed in (0, 1):
        (sweep / f"seed-{seed}").mkdir(parents=True)
        (sweep / f"seed-{seed}" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    (sweep / "seed-0" / "summary.json").write_text(json.dumps({"test_acc_mean": 0.8}))
    (sweep / name).write_bytes(text)
    runs = report.load_runs(tmp_path)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(verdict) and needle in lines[0], lines
    assert str(sweep / name if verdict == "ignored" else sweep / "seed-0") in lines[0]
    assert len(runs) == (2 if verdict == "ignored" else 1)
    assert report.failed_note(runs) == " (1 unfinished)"
    assert all(report.blocks(runs).values())


def test_a_sweep_killed_by_a_signal_is_a_failure() -> None:
    assert run.exit_code(-9) == 137 and run.exit_code(0) == 0 and run.exit_code(3) == 3


def test_the_noise_block_reads_the_late_rounds_spread(tmp_path: Path) -> None:
    for seed, accs in ((0, (0.5, 0.80, 0.82, 0.78)), (1, (0.5, 0.70, 0.70, 0.70))):
        folder = tmp_path / "noise-ditto" / f"seed-{seed}"
        folder.mkdir(parents=True)
        config = {"algorithm": "ditto", "seed": seed, "last_batch": "drop"}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "summary.json").write_text(json.dumps({"test_acc_mean": accs[-1]}))
        records = [
            {"round": r, "test_acc_mean": a} for r, a in zip((20, 21, 25, 30), accs, strict=True)
        ]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = report.load_runs(tmp_path)
    assert report.late_accuracies(runs[0]) == [0.80, 0.82, 0.78]  # round 20 is before the window
    row = next(line for line in report.noise_block(runs).splitlines() if "| drop |" in line)
    # per seed: mean 0.80 and 0.70, round-to-round std 0.02 and 0
    assert row == "| ditto | drop | 2 | 0.750 ± 0.071 | 0.0100 ± 0.0141 | n/a |"


def test_stationarity_floors_and_their_fitted_slope(tmp_path: Path) -> None:
    """The floor is the mean of the second half's evaluations; the slope is fitted on log-log
    over every seed: floors of c/N give -1 exactly, floors independent of N give 0."""
    for workers in (4, 16, 64):
        for seed in (0, 1):
            folder = tmp_path / "stationarity" / f"w{workers}-s{seed}"
            folder.mkdir(parents=True)
            config = {"dataset": "synthetic", "workers": workers, "topology": "complete",
                      "seed": seed}  # fmt: skip
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
            (folder / "summary.json").write_text(json.dumps({"subspace_dist": 0.1}))
            records = [
                {"round": r, "stationarity_body": (9.0 if r <= 2 else 8.0 / workers),
                 "stationarity_head": (5.0 if r <= 2 else 0.5 + 0.1 * seed)}
                for r in (0, 1, 2, 3, 4)
            ]  # fmt: skip
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = report.load_runs(tmp_path)
    setting = report.STATIONARITY_SETTINGS[0]
    body = report.floors(runs, setting, "stationarity_body")
    assert body == {4: [2.0, 2.0], 16: [0.5, 0.5], 64: [0.125, 0.125]}  # rounds 3 and 4 only
    assert report.fitted_slope(body) == pytest.approx(-1.0)
    head = report.floors(runs, setting, "stationarity_head")
    assert report.fitted_slope(head) == pytest.approx(0.0, abs=1e-12)
    row = report.stationarity_block(runs).splitlines()[-1]
    assert row.startswith("| fitted slope | -1.00 | +0.00 | n/a |")


def _finished_runs(root: Path, sweep: str, accs: dict[tuple[str, int], float]) -> None:
    """A finished run of `sweep` for each (algorithm, seed), with that accuracy."""
    for (algorithm, seed), acc in accs.items():
        folder = root / sweep / f"{algorithm}-{seed}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"algorithm": algorithm, "seed": seed}))
        (folder / "summary.json").write_text(
            json.dumps({"test_acc_mean": acc, "test_acc_p10": acc, "consensus_dist": 0.5})
        )


def test_the_paper_block_pairs_each_algorithm_with_deprl_seed_by_seed(tmp_path: Path) -> None:
    accs = {("deprl", 0): 0.80, ("deprl", 1): 0.70, ("local", 0): 0.75, ("local", 1): 0.72}
    _finished_runs(tmp_path, report.PAPER_SWEEP, accs)
    lines = report.paper_block(report.load_runs(tmp_path)).splitlines()
    deprl = next(line for line in lines if line.startswith("| deprl |"))
    local = next(line for line in lines if line.startswith("| local |"))
    assert deprl.endswith("| reference | reference |")
    # differences 0.05 and -0.02: mean 0.015, sample std 0.0495, one of two above zero
    assert "| +0.015 ± 0.049 (1/2 seeds above 0) |" in local


def test_every_knob_of_the_plan_has_a_label_in_the_report() -> None:
    assert list(report.KNOB_LABELS) == list(plan.PAPER_KNOBS)


def test_the_knobs_block_pairs_each_knob_with_the_recipe_of_its_algorithm(tmp_path: Path) -> None:
    recipe = {("deprl", 0): 0.80, ("deprl", 1): 0.70, ("fedper", 0): 0.9, ("fedper", 1): 0.9}
    _finished_runs(tmp_path, report.PAPER_SWEEP, recipe)
    knob = {("deprl", 0): 0.75, ("deprl", 1): 0.72, ("fedper", 0): 0.95}
    _finished_runs(tmp_path, "paper-knob-no-clipping", knob)
    lines = report.paper_knobs_block(report.load_runs(tmp_path)).splitlines()
    row = lambda algorithm, label: next(  # noqa: E731
        line for line in lines if line.startswith(f"| {algorithm} | {label} |")
    )
    assert "| reference |" in row("deprl", report.RECIPE)
    # the recipe minus the knob, seed by seed: 0.05 and -0.02; FedPer's against its own recipe
    assert "| +0.015 ± 0.049 (1/2 seeds above 0) |" in row("deprl", "no gradient clipping")
    assert "| -0.050 (0/1 seeds above 0) |" in row("fedper", "no gradient clipping")
    assert row("deprl", "no momentum (plain SGD)").startswith(
        "| deprl | no momentum (plain SGD) | 0 |"
    )
    assert not any(line.startswith("| local |") for line in lines)  # in no knob sweep


def test_the_theorem_step_rule_and_its_round_average(tmp_path: Path) -> None:
    """lr = 0.02 sqrt(N/4); the round average is over rounds 0 to K - 1, the last record left out."""
    assert plan.theorem_lr(4) == 0.02 and plan.theorem_lr(256) == 0.16
    for workers in (4, 16):
        for lr in sorted({0.02, plan.theorem_lr(workers)}):
            folder = tmp_path / f"stationarity-step-n{workers}" / f"lr-{lr}"
            folder.mkdir(parents=True)
            config = {"workers": workers, "lr": lr, "seed": 0, "topology": "complete"}
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
            (folder / "summary.json").write_text(json.dumps({"subspace_dist": 0.1}))
            scale = 1.0 if lr == 0.02 else 2.0
            records = [{"round": r, "stationarity_body": scale * v / workers,
                        "stationarity_head": 1.0} for r, v in enumerate((3.0, 1.0, 99.0))]  # fmt: skip
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = report.load_runs(tmp_path)
    fixed = report.step_averages(runs, "fixed", "stationarity_body")
    theorem = report.step_averages(runs, "theorem", "stationarity_body")
    # N = 4: both rules are lr 0.02, the same run; N = 16: the rules are two runs
    assert fixed == {4: [0.5], 16: [0.125]} and theorem == {4: [0.5], 16: [0.25]}
    assert report.fitted_slope(fixed) == pytest.approx(-1.0)
    last = report.step_block(runs).splitlines()[-1]
    assert last.startswith("| fitted slope |  |  | -1.00 | +0.00 | -0.50 | +0.00 |")
    assert "| 16 | 0.04 | 1 / 1 |" in report.step_block(runs)


def test_a_round_average_needs_every_round(tmp_path: Path) -> None:
    folder = tmp_path / "stationarity-step-n4" / "a"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"workers": 4, "lr": 0.02, "seed": 0}))
    (folder / "summary.json").write_text(json.dumps({"subspace_dist": 0.1}))
    records = [{"round": r, "stationarity_body": 1.0} for r in (0, 2, 3)]  # round 1 missing
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run,) = report.load_runs(tmp_path)
    assert report.round_average(run, "stationarity_body") is None
