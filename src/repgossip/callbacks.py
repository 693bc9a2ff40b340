"""Hooks the run loop calls on the writer process (rank 0): progress, logs, and user code.

The loop knows nothing about terminals, CSV or TensorBoard: it calls `on_run_start`, then
`on_evaluation` with every metrics.jsonl record (plus the per-worker lists) and `on_round_end` after
every round, then `on_run_end` with the summary when the run succeeds, and `close` always (in a
`finally`), so a crashed run still flushes what it logged. Users subclass `Callback` and override
what they need. A callback that decides the run is done raises `StopRun(reason)`: the loop finishes
that round (evaluation and checkpoint at it) and ends the run as a finished one, on every rank.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

from repgossip.errors import RepgossipError, UsageError, described, user_code_failed
from repgossip.registry import import_object, is_plugin_ref
from repgossip.runfolder import TENSORBOARD_DIR, atomic_write, make_folder, record_entry
from repgossip.text import shown

if TYPE_CHECKING:
    import torch

PER_WORKER_KEYS = ("per_worker_test_loss", "per_worker_acc")  # in on_evaluation, not in the log


class StopRun(Exception):  # noqa: N818  (a request, not an error: the run ends as a success)
    """Raised from any hook to end the run after the current round and keep it as a finished run:
    the round is evaluated and checkpointed, summary.json says `stopped_early: reason`, the CLI
    exits 0, and `--resume` continues it to its configured rounds. From `on_run_end` or `close`,
    when the run is over anyway, it changes nothing."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = str(reason)


@dataclass(frozen=True)
class RunInfo:
    """What `on_run_start` receives; keep it to read workers' models from later hooks."""

    config: Any  # the resolved repgossip.config.Config (has .rounds, .to_dict())
    out: Path | None  # the run folder, or None when the run writes no folder
    start_round: int  # 0 for a fresh run; the checkpoint's round when resumed
    rounds: int  # the last round of this session
    experiment: Any = field(default=None, repr=False, compare=False)  # the live run, if any

    @property
    def worker_ids(self) -> tuple[int, ...]:
        """The workers this process holds: all of them in one process, rank 0's block under
        engine=dist (where callbacks run)."""
        return tuple(self._run().population.worker_ids)

    def worker_model(self, worker: int) -> torch.nn.Module:
        """A copy of worker `worker`'s evaluated model with its current parameters and buffers,
        in eval mode; changing it changes nothing in the run."""
        return self._run().worker_model(worker)

    def worker_state(self, worker: int) -> dict[str, torch.Tensor]:
        """A copy of that model's state_dict (as `RunResult.worker_state`)."""
        return self._run().worker_state(worker)

    def _run(self) -> Any:
        if self.experiment is None:
            raise UsageError("this RunInfo belongs to no run: it has no workers to read")
        return self.experiment


class Callback:
    """Base class with no-op hooks; users subclass it and override what they need."""

    def on_run_start(self, info: RunInfo) -> None:
        """Before the first round (and before the round-0 evaluation of a fresh run)."""

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        """Every metrics.jsonl record: `round`, `wall_s`, `train_loss`, ... (numbers), plus the
        lists `per_worker_test_loss` and `per_worker_acc` (classification), one entry per worker,
        which metrics.jsonl does not hold. A copy: changing it changes nothing."""

    def on_round_end(self, round_done: int) -> None:
        """After round `round_done` (1-based) was trained, evaluated if due, and checkpointed."""

    def on_run_end(self, summary: Mapping[str, Any]) -> None:
        """Only when the run succeeds, with the summary.json contents."""

    def close(self) -> None:
        """Always, also after an exception: release files and terminals here."""


class CallbackList(Callback):
    """Dispatches each hook to every callback in order. A callback's exception propagates, except
    StopRun: every callback still gets the hook, and the first request is kept in `stop_reason`
    for the loop to act on."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks: list[Callback] = list(callbacks)
        self.stop_reason: str | None = None

    def _each(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(*args)
            except StopRun as request:
                if self.stop_reason is None:
                    self.stop_reason = (
                        request.reason or f"{type(callback).__name__} stopped the run"
                    )

    def on_run_start(self, info: RunInfo) -> None:
        self._each("on_run_start", info)

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        self._each("on_evaluation", record)

    def on_round_end(self, round_done: int) -> None:
        self._each("on_round_end", round_done)

    def on_run_end(self, summary: Mapping[str, Any]) -> None:
        self._each("on_run_end", summary)

    def close(self) -> None:
        """Close every callback even if one fails (so the others still flush), then raise the
        first failure (a StopRun here is none: the run is over)."""
        first: BaseException | None = None
        for callback in self.callbacks:
            try:
                callback.close()
            except StopRun:
                pass
            except Exception as err:
                first = first or err
        if first is not None:
            raise first


def short_postfix(record: Mapping[str, Any]) -> str:
    """The progress bar's few characters: the headline metric and the training loss."""
    parts = []
    if _is_number(record.get("test_acc_mean")):
        parts.append(f"acc={record['test_acc_mean']:.3f}")
    elif _is_number(record.get("subspace_dist")):
        parts.append(f"subspace={record['subspace_dist']:.3f}")
    if _is_number(record.get("train_loss")):
        digits = 3 if parts and parts[0].startswith("acc") else 4
        parts.append(f"loss={record['train_loss']:.{digits}f}")
    return " ".join(parts)


class ProgressBar(Callback):
    """A tqdm bar in rounds, for a terminal; disabled, it draws nothing."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, initial=initial, disable=not enabled, unit="round", dynamic_ncols=True
        )

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        self.bar.set_postfix_str(short_postfix(record))

    def on_round_end(self, round_done: int) -> None:
        # to the absolute round, not +1: a skipped hook must not leave the bar behind for good
        self.bar.update(round_done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


HEADLINE_KEYS = ("test_acc_mean", "subspace_dist", "train_loss")


class PlainLog(Callback):
    """One plain line per evaluation, for a stderr that is not a terminal (SLURM, nohup,
    notebooks), where a tqdm bar would write carriage-return noise or nothing useful."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream  # None: sys.stderr at write time, so a redirected stderr is followed
        self.total: int | None = None

    def on_run_start(self, info: RunInfo) -> None:
        self.total = info.rounds

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        stream = self.stream or sys.stderr
        stream.write(self.line(record) + "\n")
        stream.flush()

    def line(self, record: Mapping[str, Any]) -> str:
        """e.g. `round 5/30  test_acc_mean=0.8125  train_loss=0.4421  wall_s=3.2`."""
        where = f"round {record.get('round', '?')}" + (f"/{self.total}" if self.total else "")
        parts = [where] + [
            f"{k}={record[k]:.4g}" for k in HEADLINE_KEYS if _is_number(record.get(k))
        ]
        if _is_number(record.get("wall_s")):
            parts.append(f"wall_s={record['wall_s']:.1f}")
        return "  ".join(parts)


class CSVLogger(Callback):
    """The evaluation records as CSV, as metrics.jsonl holds them (no per-worker lists). The header
    is the first record's keys: later keys are dropped and missing ones left empty, so every row
    lines up with the header."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.handle: IO[str] | None = None
        self.writer: csv.DictWriter | None = None

    def on_run_start(self, info: RunInfo) -> None:
        if info.start_round > 0 and self.path.is_file():
            self._keep_up_to(info.start_round)

    def _keep_up_to(self, start_round: int) -> None:
        """A resumed run re-logs the rounds after its checkpoint: drop the interrupted session's
        rows past it, so no round appears twice. Rewritten atomically: a crash here loses none."""
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames, list(reader)
        if not fields or "round" not in fields:
            return  # not ours to keep: the first record starts a fresh file
        kept = io.StringIO()
        writer = csv.DictWriter(kept, fields, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in rows if _row_round(r) <= start_round)
        atomic_write(self.path, kept.getvalue().encode())
        self._open("a", list(fields))

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fields = [k for k in record if k not in PER_WORKER_KEYS]  # the columns of the log
            self._open("w", fields).writeheader()
        assert self.writer is not None and self.handle is not None
        self.writer.writerow(record)
        self.handle.flush()  # a crashed or killed run keeps every row logged so far

    def _open(self, mode: str, fields: list[str]) -> csv.DictWriter:
        # open for the whole run, closed in close(): a `with` block cannot span the hooks
        handle = open(self.path, mode, newline="")  # noqa: SIM115
        self.handle = handle
        self.writer = csv.DictWriter(handle, fields, restval="", extrasaction="ignore")
        return self.writer

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle, self.writer = None, None


def _row_round(row: Mapping[str, Any]) -> float:
    """A CSV row's round; infinite for a garbled row, so that it is never kept."""
    try:
        return float(row.get("round") or "inf")
    except ValueError:
        return float("inf")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class TensorBoardLogger(Callback):
    """Every numeric key of every evaluation as a scalar, at step `round`. A resumed run purges
    the interrupted session's events past the checkpoint, so curves do not fold back on
    themselves."""

    def __init__(self, logdir: str | Path) -> None:
        try:
            import tensorboard  # noqa: F401  (torch's writer imports it lazily, and late)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError(
                "tensorboard=true needs the tensorboard package: pip install 'repgossip[tensorboard]'"
            ) from None
        self.logdir = Path(logdir)
        self.summary_writer_class = SummaryWriter
        self.writer: Any = None

    def on_run_start(self, info: RunInfo) -> None:
        self._open(purge=info.start_round + 1 if info.start_round > 0 else None)

    def _open(self, purge: int | None = None) -> None:
        """Start the writer in `logdir`, made if missing; in a run folder, the event file it
        creates is recorded as the run's (so --force removes it, and nothing else there)."""
        make_folder(self.logdir, TENSORBOARD_DIR)
        before = set(os.listdir(self.logdir))
        self.writer = self.summary_writer_class(str(self.logdir), purge_step=purge)
        for name in sorted(set(os.listdir(self.logdir)) - before):
            record_entry(self.logdir / name, made=True)

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            self._open()
        step = int(record["round"])
        for key, value in record.items():
            if key != "round" and _is_number(value):
                self.writer.add_scalar(key, float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EarlyStopping(Callback):
    """Stops the run (StopRun) when `metric` has not improved by more than `min_delta` for
    `patience` evaluations in a row. `metric` defaults to the task's headline: `test_acc_mean`
    for classification, `test_loss_mean` for regression. `mode` "max" or "min" says which way is
    better; by default "min" for a loss or distance (`*loss*`, `*dist*`), else "max". It counts the
    evaluations of this session: a resumed run starts counting afresh."""

    def __init__(
        self,
        patience: int = 5,
        metric: str | None = None,
        mode: str | None = None,
        min_delta: float = 0.0,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise UsageError(f"EarlyStopping: patience must be an integer >= 1, got {patience!r}")
        if mode not in (None, "max", "min"):
            raise UsageError(f"EarlyStopping: mode must be 'max' or 'min', got {mode!r}")
        if not _is_number(min_delta) or not min_delta >= 0:
            raise UsageError(f"EarlyStopping: min_delta must be a number >= 0, got {min_delta!r}")
        self.patience, self.min_delta, self.metric, self.mode = patience, min_delta, metric, mode
        self.on_run_start(None)

    def on_run_start(self, info: RunInfo | None) -> None:
        self.watched: tuple[str, str] | None = None  # (metric, mode), from the first evaluation
        self.best, self.best_round, self.waited = math.nan, 0, 0

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        metric, mode = self.watched or self._watch(record)
        value = float(record[metric])
        better = value > self.best + self.min_delta if mode == "max" else (
            value < self.best - self.min_delta
        )  # fmt: skip
        if better or math.isnan(self.best):
            self.best, self.best_round, self.waited = value, int(record["round"]), 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            raise StopRun(
                f"{metric} has not improved on {self.best:.4g} (round {self.best_round}) for "
                f"{self.patience} evaluations"
            )

    def _watch(self, record: Mapping[str, Any]) -> tuple[str, str]:
        """The metric and the better direction, by the first record of a run."""
        metric = self.metric or ("test_acc_mean" if "test_acc_mean" in record else "test_loss_mean")
        if not _is_number(record.get(metric)):
            numeric = [k for k, v in record.items() if _is_number(v) and k != "round"]
            raise UsageError(
                f"EarlyStopping: the evaluations have no metric {metric!r}; valid: "
                f"{', '.join(numeric)}"
            )
        mode = self.mode or ("min" if "loss" in metric or "dist" in metric else "max")
        self.watched = (metric, mode)
        return self.watched


def callback_from_ref(ref: str) -> Callback:
    """The callback `package.module:name` names, for `repgossip run --callback`: a Callback
    instance, or a Callback subclass or function called without arguments to make one."""
    if not is_plugin_ref(ref):
        raise UsageError(f"--callback takes package.module:name, got {shown(ref)}")
    found = import_object(ref, "callback")
    made = found
    if (isinstance(found, type) and issubclass(found, Callback)) or (
        callable(found) and not isinstance(found, (type, Callback))
    ):
        try:
            made = found()
        except RepgossipError:
            raise
        except Exception as err:
            raise user_code_failed(
                f"callback '{ref}': calling it raised {described(err)}", err
            ) from None
    if not isinstance(made, Callback):
        what = shown(found) + ("" if made is found else f", which returned {shown(made)}")
        raise UsageError(
            f"callback '{ref}' must be a repgossip.Callback instance or subclass, or a function "
            f"returning one; got {what}"
        )
    return made


def default_callbacks(progress: bool | None, total: int, initial: int) -> list[Callback]:
    """What a run shows by default: a bar on a terminal, plain lines elsewhere (a bar in a log
    file is one endless line), nothing when `progress` is False. `progress=True` forces the bar."""
    if progress is False:
        return []
    if progress or sys.stderr.isatty():
        return [ProgressBar(total, initial, enabled=True)]
    return [PlainLog()]
