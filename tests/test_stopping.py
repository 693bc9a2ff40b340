"""Callbacks that act: `raise repgossip.StopRun(reason)` from any hook ends a run early and keeps it
as a finished run; callbacks see each evaluation's per-worker metrics and read workers' models;
`repgossip.EarlyStopping` is the ready-made stopper."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import torch
from stoppers import StopAt
from test_api import WORKERS, bn_model, tensors

import repgossip
from repgossip import Callback, EarlyStopping, StopRun
from repgossip.cli import main
from repgossip.runfolder import read_checkpoint

# rounds 2 and 4 are evaluated, round 4 checkpointed: a stop elsewhere must add both
SETTINGS = {"rounds": 5, "eval_every": 2, "checkpoint_every": 4, "lr": 0.05, "head_epochs": 1,
            "body_epochs": 1}  # fmt: skip


def run(**kwargs):
    given = {**SETTINGS, "model": bn_model, "data": tensors(), "graph": nx.cycle_graph(WORKERS),
             **kwargs}  # fmt: skip
    return repgossip.run(**given)


def logged_rounds(out: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_s", "wire_bytes")}


@pytest.mark.parametrize(
    "hook, at, logged",
    [
        ("on_run_start", 0, [0]),
        ("on_evaluation", 0, [0]),
        ("on_evaluation", 2, [0, 2]),
        ("on_round_end", 3, [0, 2, 3]),  # round 3 is evaluated for the summary
    ],
)
def test_stop_run_from_a_hook_ends_the_run_as_a_finished_one(tmp_path, hook, at, logged):
    out = tmp_path / "run"
    stopper = StopAt(at, hook, reason="enough")
    result = run(out=out, callbacks=[stopper])
    assert result.summary["rounds"] == at and result.summary["stopped_early"] == "enough"
    assert json.loads((out / "summary.json").read_text()) == result.summary
    assert read_checkpoint(out)["round"] == at
    assert logged_rounds(out) == logged == [r["round"] for r in result.history]
    assert ("on_run_end", at) in stopper.calls and ("close", at) in stopper.calls
    assert not any(r > at for _, r in stopper.calls)  # no round trained past the stop


@pytest.mark.parametrize("hook", ["on_run_end", "close"])
def test_stop_run_after_the_last_round_changes_nothing(tmp_path, hook):
    result = run(out=tmp_path / "run", callbacks=[StopAt(0, hook)])
    assert result.summary["rounds"] == 5 and "stopped_early" not in result.summary
    assert read_checkpoint(tmp_path / "run")["round"] == 5


def test_a_stop_after_the_last_round_is_no_early_stop():
    result = run(callbacks=[StopAt(5, "on_round_end")])
    assert result.summary["rounds"] == 5 and "stopped_early" not in result.summary


def test_every_callback_still_sees_the_hook_that_asked_to_stop(tmp_path):
    """A stopper listed before a logger must not cost the logger the last record."""
    csv = tmp_path / "metrics.csv"
    run(callbacks=[StopAt(2, "on_evaluation"), repgossip.CSVLogger(csv)])
    assert [line.split(",")[0] for line in csv.read_text().splitlines()] == ["round", "0", "2"]


def test_a_stopped_run_resumes_to_its_configured_rounds_with_the_same_numbers(tmp_path):
    whole = run(out=tmp_path / "whole")
    run(out=tmp_path / "part", callbacks=[StopAt(3, "on_round_end")])
    resumed = run(out=tmp_path / "part", resume=True)
    assert without_time(resumed.summary) == without_time(whole.summary)
    assert "stopped_early" not in json.loads((tmp_path / "part" / "summary.json").read_text())
    assert logged_rounds(tmp_path / "part") == [0, 2, 3, 4, 5]  # round 3: where it stopped
    for w in range(WORKERS):
        a, b = whole.worker_state(w), resumed.worker_state(w)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_command_line_takes_a_callback_that_stops_and_exits_0(tmp_path, capsys):
    out = tmp_path / "cli"
    sets = ["dataset=synthetic", "workers=4", "samples_per_worker=20", "rounds=4", "topology=ring"]
    argv = [
        "run",
        "--quiet",
        "--callback",
        "stoppers:at_round_2",
        "--set",
        *sets,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 rounds" in printed and "stopped early: two rounds are enough" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["stopped_early"] == "two rounds are enough"
    assert read_checkpoint(out)["round"] == 2
    assert main(["run", "--quiet", "--out", str(out)]) == 2  # a finished run: --resume or --force
    assert main(["run", "--quiet", "--resume", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 4 and "stopped_early" not in summary


@pytest.mark.parametrize(
    "ref, needle",
    [
        ("stoppers", "package.module:name"),
        ("stoppers:missing", "has no 'missing'"),
        ("stoppers:not_a_callback", "got 42"),
        ("nosuchmodule:x", "no module 'nosuchmodule'"),
    ],
)
def test_a_bad_callback_on_the_command_line_is_one_line(tmp_path, capsys, ref, needle):
    argv = ["run", "--quiet", "--callback", ref, "--set", "dataset=synthetic", "rounds=1",
            "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_the_command_line_takes_a_callback_instance():
    import stoppers

    from repgossip.callbacks import callback_from_ref

    assert callback_from_ref("stoppers:stop_now") is stoppers.stop_now
    assert isinstance(callback_from_ref("stoppers:StopAt"), StopAt)
    assert isinstance(callback_from_ref("repgossip.callbacks:EarlyStopping"), EarlyStopping)


class Watcher(Callback):
    """Keeps every record, and at `at` every worker's model copy."""

    def __init__(self, at: int = 5) -> None:
        self.at, self.records, self.models, self.info = at, [], {}, None

    def on_run_start(self, info):
        self.info = info

    def on_evaluation(self, record):
        self.records.append(record)

    def on_round_end(self, round_done):
        if round_done == self.at:
            self.models = {w: self.info.worker_model(w) for w in self.info.worker_ids}


def test_callbacks_get_per_worker_metrics_that_the_log_does_not(tmp_path):
    watcher = Watcher()
    result = run(out=tmp_path / "run", callbacks=[watcher])
    assert [r["round"] for r in watcher.records] == [0, 2, 4, 5]
    for record in watcher.records:
        assert len(record["per_worker_acc"]) == len(record["per_worker_test_loss"]) == WORKERS
    last = watcher.records[-1]
    assert last["per_worker_acc"] == result.summary["per_worker_acc"]
    assert last["per_worker_test_loss"] == result.summary["per_worker_test_loss"]
    assert sum(last["per_worker_acc"]) / WORKERS == pytest.approx(last["test_acc_mean"])
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert not any("per_worker_acc" in r for r in logged + result.history)
    last["per_worker_acc"][0] = -1.0  # a copy: the summary keeps its numbers
    assert result.summary["per_worker_acc"][0] >= 0


def test_worker_model_is_a_copy_of_the_workers_current_model():
    watcher = Watcher(at=5)
    result = run(callbacks=[watcher])
    assert sorted(watcher.models) == list(range(WORKERS))
    for worker, model in watcher.models.items():
        assert isinstance(model, torch.nn.Module) and not model.training
        state, expected = model.state_dict(), result.worker_state(worker)
        assert set(state) == set(expected)
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    model = watcher.models[1]
    with torch.no_grad():
        model.head.weight.add_(1.0)  # a copy: the run's worker is untouched
    assert not torch.equal(model.head.weight, result.worker_state(1)["head.weight"])
    assert torch.equal(result.worker_model(1).head.weight, result.worker_state(1)["head.weight"])
    x = tensors()[2][1]
    assert torch.equal(watcher.models[2](x), result.worker_model(2)(x))  # the module computes


def test_worker_model_of_another_worker_is_refused():
    class Asker(Callback):
        def on_run_start(self, info):
            info.worker_model(WORKERS)

    with pytest.raises(repgossip.UsageError, match=f"worker {WORKERS} is not among"):
        run(callbacks=[Asker()])


def test_early_stopping_stops_when_the_metric_stops_improving(tmp_path):
    # nothing improves on round 0's accuracy by a whole 1.0: the 2nd evaluation after it stops
    stopper = EarlyStopping(patience=2, min_delta=1.0)
    result = run(out=tmp_path / "run", rounds=8, eval_every=1, callbacks=[stopper])
    assert result.summary["rounds"] == 2
    assert result.summary["stopped_early"].startswith("test_acc_mean has not improved")
    assert read_checkpoint(tmp_path / "run")["round"] == 2


def test_stop_run_is_exported_and_keeps_its_reason():
    assert "StopRun" in repgossip.__all__ and "EarlyStopping" in repgossip.__all__
    assert StopRun("why").reason == "why" and StopRun().reason == ""
