"""Hooks the run loop calls on the writer process (rank 0): progress, logs, and user code.

The loop knows nothing about terminals, CSV or TensorBoard: it calls `on_run_start`, then
`on_evaluation` with every metrics.jsonl record and `on_round_end` after every round, then
`on_run_end` with the summary when the run succeeds, and `close` always (in a `finally`), so a
crashed run still flushes what it logged. Users subclass `Callback` and override what they need.
"""

from __future__ import annotations

import csv
import io
import numbers
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from repgossip.errors import UsageError
from repgossip.runfolder import TENSORBOARD_DIR, atomic_write, make_folder, record_entry


@dataclass(frozen=True)
class RunInfo:
    config: Any  # the resolved repgossip.config.Config (has .rounds, .to_dict())
    out: Path | None  # the run folder, or None when the run writes no folder
    start_round: int  # 0 for a fresh run; the checkpoint's round when resumed
    rounds: int  # the last round of this session


class Callback:
    """Base class with no-op hooks; users subclass it and override what they need."""

    def on_run_start(self, info: RunInfo) -> None:
        """Before the first round (and before the round-0 evaluation of a fresh run)."""

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        """Every metrics.jsonl record: `round`, `wall_s`, `train_loss`, ... (mostly numbers)."""

    def on_round_end(self, round_done: int) -> None:
        """After round `round_done` (1-based) was trained, evaluated if due, and checkpointed."""

    def on_run_end(self, summary: Mapping[str, Any]) -> None:
        """Only when the run succeeds, with the summary.json contents."""

    def close(self) -> None:
        """Always, also after an exception: release files and terminals here."""


class CallbackList(Callback):
    """Dispatches each hook to every callback in order; a callback's exception propagates."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks: list[Callback] = list(callbacks)

    def on_run_start(self, info: RunInfo) -> None:
        for callback in self.callbacks:
            callback.on_run_start(info)

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_evaluation(record)

    def on_round_end(self, round_done: int) -> None:
        for callback in self.callbacks:
            callback.on_round_end(round_done)

    def on_run_end(self, summary: Mapping[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_run_end(summary)

    def close(self) -> None:
        """Close every callback even if one fails (so the others still flush), then raise the
        first failure."""
        first: BaseException | None = None
        for callback in self.callbacks:
            try:
                callback.close()
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
    """The evaluation records as CSV. The header is the first record's keys: later keys are
    dropped and missing ones left empty, so every row lines up with the header."""

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
            self._open("w", list(record)).writeheader()
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


def default_callbacks(progress: bool | None, total: int, initial: int) -> list[Callback]:
    """What a run shows by default: a bar on a terminal, plain lines elsewhere (a bar in a log
    file is one endless line), nothing when `progress` is False. `progress=True` forces the bar."""
    if progress is False:
        return []
    if progress or sys.stderr.isatty():
        return [ProgressBar(total, initial, enabled=True)]
    return [PlainLog()]
