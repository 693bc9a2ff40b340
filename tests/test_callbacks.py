"""The run loop's hooks and the built-in callbacks: what each writes, and in what order."""

import csv
import io
import sys
from pathlib import Path

import pytest

from repgossip.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    PlainLog,
    ProgressBar,
    RunInfo,
    StopRun,
    TensorBoardLogger,
    default_callbacks,
    short_postfix,
)
from repgossip.errors import UsageError


def info(start_round: int = 0, rounds: int = 30, out: Path | None = None) -> RunInfo:
    return RunInfo(config=None, out=out, start_round=start_round, rounds=rounds)


def rec(round_: int, acc: float = 0.5, **extra) -> dict:
    return {"round": round_, "wall_s": 0.1 * round_, "train_loss": 1.0 / (round_ + 1),
            "test_acc_mean": acc, **extra}  # fmt: skip


class Recorder(Callback):
    def __init__(self, name: str, log: list, fail_on: str | None = None) -> None:
        self.name, self.log, self.fail_on = name, log, fail_on

    def _note(self, hook: str) -> None:
        self.log.append((self.name, hook))
        if hook == self.fail_on:
            raise RuntimeError(f"{self.name} failed in {hook}")

    def on_run_start(self, info):
        self._note("start")

    def on_evaluation(self, record):
        self._note("eval")

    def on_round_end(self, round_done):
        self._note("round")

    def on_run_end(self, summary):
        self._note("end")

    def close(self):
        self._note("close")


# ---------------------------------------------------------------- Callback and CallbackList


def test_base_callback_hooks_do_nothing():
    callback = Callback()
    callback.on_run_start(info())
    callback.on_evaluation(rec(0))
    callback.on_round_end(1)
    callback.on_run_end({})
    callback.close()


def test_callback_list_dispatches_every_hook_in_order():
    log: list = []
    callbacks = CallbackList([Recorder("a", log), Recorder("b", log)])
    callbacks.on_run_start(info())
    callbacks.on_evaluation(rec(0))
    callbacks.on_round_end(1)
    callbacks.on_run_end({})
    callbacks.close()
    hooks = ["start", "eval", "round", "end", "close"]
    assert log == [(name, hook) for hook in hooks for name in "ab"]


def test_callback_list_propagates_a_user_error_and_stops_there():
    log: list = []
    callbacks = CallbackList([Recorder("a", log, fail_on="eval"), Recorder("b", log)])
    with pytest.raises(RuntimeError, match="a failed in eval"):
        callbacks.on_evaluation(rec(0))
    assert log == [("a", "eval")]


def test_callback_list_closes_all_even_when_one_close_fails():
    log: list = []
    callbacks = CallbackList([Recorder("a", log, fail_on="close"), Recorder("b", log)])
    with pytest.raises(RuntimeError, match="a failed in close"):
        callbacks.close()
    assert log == [("a", "close"), ("b", "close")]


class Stopper(Callback):
    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def on_evaluation(self, record):
        raise StopRun(self.reason)

    def close(self):
        raise StopRun("too late")


def test_callback_list_keeps_the_first_stop_request_and_calls_every_callback():
    log: list = []
    callbacks = CallbackList([Stopper("first"), Recorder("a", log), Stopper("second")])
    callbacks.on_evaluation(rec(0))  # no exception: the loop reads stop_reason
    assert callbacks.stop_reason == "first" and log == [("a", "eval")]
    callbacks.close()  # a stop request from close is no failure
    assert log == [("a", "eval"), ("a", "close")]
    unnamed = CallbackList([Stopper()])
    unnamed.on_evaluation(rec(0))
    assert unnamed.stop_reason == "Stopper stopped the run"


def test_run_info_without_a_run_has_no_workers_to_read():
    with pytest.raises(UsageError, match="belongs to no run"):
        info().worker_model(0)


# ---------------------------------------------------------------- ProgressBar and PlainLog


def test_short_postfix_matches_the_bar_of_each_kind_of_run():
    assert short_postfix(rec(5, acc=0.8125)) == "acc=0.812 loss=0.167"
    regression = {"round": 3, "train_loss": 0.04421, "subspace_dist": 0.25}
    assert short_postfix(regression) == "subspace=0.250 loss=0.0442"
    assert short_postfix({"round": 1, "train_loss": 2.0, "note": "x"}) == "loss=2.0000"


def test_progress_bar_shows_rounds_and_the_last_evaluation(capsys):
    bar = ProgressBar(total=10, initial=2, enabled=True)
    bar.on_evaluation(rec(5, acc=0.8125))
    bar.on_round_end(5)
    assert bar.bar.n == 5  # to the absolute round, from the resumed start
    bar.close()
    err = capsys.readouterr().err
    assert "5/10" in err and "acc=0.812 loss=0.167" in err


def test_disabled_progress_bar_writes_nothing(capsys):
    bar = ProgressBar(total=10, initial=0, enabled=False)
    bar.on_evaluation(rec(1))
    bar.on_round_end(1)
    bar.close()
    assert capsys.readouterr().err == ""


def test_plain_log_writes_one_line_per_evaluation():
    stream = io.StringIO()
    log = PlainLog(stream)
    log.on_run_start(info(rounds=30))
    log.on_evaluation({"round": 5, "wall_s": 3.21, "train_loss": 0.44213, "test_acc_mean": 0.8125})
    log.on_round_end(5)  # writes nothing
    log.on_evaluation({"round": 6, "wall_s": 4.0, "train_loss": 0.04, "subspace_dist": 1.5e-6})
    assert stream.getvalue().splitlines() == [
        "round 5/30  test_acc_mean=0.8125  train_loss=0.4421  wall_s=3.2",
        "round 6/30  subspace_dist=1.5e-06  train_loss=0.04  wall_s=4.0",
    ]


def test_plain_log_without_run_start_and_default_stream(capsys):
    log = PlainLog()
    log.on_evaluation({"round": 2, "train_loss": 1.0, "note": "text is skipped"})
    assert capsys.readouterr().err == "round 2  train_loss=1\n"


class FakeStderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    "progress, tty, expected",
    [
        (None, True, [ProgressBar]),
        (None, False, [PlainLog]),
        (True, False, [ProgressBar]),
        (True, True, [ProgressBar]),
        (False, True, []),
        (False, False, []),
    ],
)
def test_default_callbacks(monkeypatch, progress, tty, expected):
    monkeypatch.setattr(sys, "stderr", FakeStderr(tty))
    callbacks = default_callbacks(progress, total=10, initial=3)
    assert [type(c) for c in callbacks] == expected
    for callback in callbacks:
        if isinstance(callback, ProgressBar):
            assert (callback.bar.total, callback.bar.n, callback.bar.disable) == (10, 3, False)
        callback.close()


# ---------------------------------------------------------------- CSVLogger


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_csv_logger_header_from_first_record_flushed_per_row(tmp_path):
    path = tmp_path / "sub" / "metrics.csv"
    logger = CSVLogger(path)
    logger.on_run_start(info())
    logger.on_evaluation(rec(0))
    assert len(read_csv(path)[1]) == 1  # on disk before close
    logger.on_evaluation({"round": 5, "train_loss": 0.25, "extra": 1})  # no wall_s, acc; extra key
    logger.close()
    fields, rows = read_csv(path)
    assert fields == ["round", "wall_s", "train_loss", "test_acc_mean"]
    assert rows[0] == {"round": "0", "wall_s": "0.0", "train_loss": "1.0", "test_acc_mean": "0.5"}
    assert rows[1] == {"round": "5", "wall_s": "", "train_loss": "0.25", "test_acc_mean": ""}


def test_csv_logger_keeps_the_columns_of_the_log_without_per_worker_lists(tmp_path):
    logger = CSVLogger(tmp_path / "metrics.csv")
    logger.on_evaluation(rec(0, per_worker_acc=[0.5, 1.0], per_worker_test_loss=[0.1, 0.2]))
    logger.close()
    fields, rows = read_csv(tmp_path / "metrics.csv")
    assert fields == ["round", "wall_s", "train_loss", "test_acc_mean"] and len(rows) == 1


def test_csv_logger_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.csv"
    first = CSVLogger(path)
    first.on_run_start(info())
    for r in (0, 5, 10, 15):
        first.on_evaluation(rec(r, acc=0.1))
    first.close()
    with open(path, "a") as handle:
        handle.write("garbled,row\n")  # e.g. a torn last line

    resumed = CSVLogger(path)
    resumed.on_run_start(info(start_round=10))
    for r in (15, 20):
        resumed.on_evaluation(rec(r, acc=0.9))
    resumed.close()
    fields, rows = read_csv(path)
    assert fields == ["round", "wall_s", "train_loss", "test_acc_mean"]
    assert [row["round"] for row in rows] == ["0", "5", "10", "15", "20"]
    assert [row["test_acc_mean"] for row in rows] == ["0.1", "0.1", "0.1", "0.9", "0.9"]


def test_csv_logger_fresh_run_replaces_an_old_file(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("round,old\n7,x\n")
    logger = CSVLogger(path)
    logger.on_run_start(info(start_round=0))
    logger.on_evaluation(rec(0))
    logger.close()
    fields, rows = read_csv(path)
    assert fields[0:2] == ["round", "wall_s"] and [r["round"] for r in rows] == ["0"]


# ---------------------------------------------------------------- TensorBoardLogger


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {
        tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


def test_tensorboard_logger_writes_numeric_scalars_by_round(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.on_run_start(info())
    logger.on_evaluation(rec(0, acc=0.25, note="not a number", flag=True))
    logger.on_evaluation(rec(5, acc=0.75))
    logger.close()
    got = scalars(tmp_path / "tb")
    assert set(got) == {"wall_s", "train_loss", "test_acc_mean"}
    assert got["test_acc_mean"] == [(0, 0.25), (5, 0.75)]
    assert got["train_loss"] == [(0, 1.0), (5, round(1 / 6, 6))]


def test_tensorboard_logger_resume_purges_events_past_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    first = TensorBoardLogger(tmp_path)
    first.on_run_start(info())
    for r in (5, 10, 15):
        first.on_evaluation(rec(r, acc=0.1))
    first.close()
    resumed = TensorBoardLogger(tmp_path)
    resumed.on_run_start(info(start_round=10))
    resumed.on_evaluation(rec(15, acc=0.9))
    resumed.close()
    assert scalars(tmp_path)["test_acc_mean"] == [(5, 0.1), (10, 0.1), (15, 0.9)]


def test_tensorboard_logger_without_the_package_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    with pytest.raises(UsageError, match=r"pip install 'repgossip\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)


# ---------------------------------------------------------------- EarlyStopping


def evaluations(stopper: EarlyStopping, values: list[float], key: str = "test_acc_mean") -> int:
    """The round at which `stopper` stops on these evaluations (one per round), else -1."""
    stopper.on_run_start(info())
    for round_, value in enumerate(values):
        try:
            stopper.on_evaluation({"round": round_, key: value})
        except StopRun as request:
            assert f"(round {round_ - stopper.patience})" in request.reason  # the best one's
            return round_
    return -1


def test_early_stopping_counts_evaluations_without_improvement():
    assert evaluations(EarlyStopping(patience=2), [0.1, 0.3, 0.3, 0.2, 0.9]) == 3
    assert evaluations(EarlyStopping(patience=2), [0.1, 0.3, 0.3, 0.4, 0.4]) == -1
    assert evaluations(EarlyStopping(patience=1, min_delta=0.15), [0.1, 0.2, 0.5]) == 1
    # losses get smaller: "min" is the default for them
    assert (
        evaluations(EarlyStopping(2, "test_loss_mean"), [1.0, 0.5, 0.6, 0.7], "test_loss_mean") == 3
    )
    assert (
        evaluations(EarlyStopping(2, "train_loss", mode="max"), [1.0, 0.5, 0.4], "train_loss") == 2
    )


def test_early_stopping_starts_afresh_with_each_run():
    stopper = EarlyStopping(patience=2)
    assert evaluations(stopper, [0.9, 0.1]) == -1
    assert evaluations(stopper, [0.2, 0.3]) == -1  # 0.9 of the last run is forgotten


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"patience": 0}, "patience must be an integer >= 1, got 0"),
        ({"patience": 2.5}, "patience must be an integer >= 1, got 2.5"),
        ({"mode": "up"}, "mode must be 'max' or 'min', got 'up'"),
        ({"min_delta": -1}, "min_delta must be a number >= 0, got -1"),
    ],
)
def test_early_stopping_refuses_bad_settings(kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        EarlyStopping(**kwargs)


def test_early_stopping_on_a_metric_the_run_does_not_log_names_the_valid_ones():
    with pytest.raises(
        UsageError, match="no metric 'test_acc_p10'; valid: train_loss, subspace_dist"
    ):
        EarlyStopping(metric="test_acc_p10").on_evaluation(
            {"round": 0, "train_loss": 1.0, "subspace_dist": 0.5}
        )


def test_early_stopping_watches_the_tasks_headline_metric_by_default():
    stopper = EarlyStopping(patience=1)
    assert evaluations(stopper, [0.5, 0.4], "test_loss_mean") == -1  # regression: a lower loss
    assert stopper.watched == ("test_loss_mean", "min")
    assert evaluations(stopper, [0.5, 0.4], "test_acc_mean") == 1  # the next run: classification
    assert stopper.watched == ("test_acc_mean", "max")
