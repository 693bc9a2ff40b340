"""The run folder: claiming it safely, writing it atomically, checkpoints in and out.

Contract (DESIGN.md section 4): `config.yaml`, `metrics.jsonl`, `summary.json`, `checkpoint.pt`. A
folder that holds anything is never overwritten unless asked (`resume` continues it, `force` clears
it). Every file is replaced atomically, so a crash at any moment leaves the last good version.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from repgossip.config import RESUMABLE_KEYS, Config, build_config, changed_keys, read_yaml
from repgossip.errors import UsageError
from repgossip.faults import maybe_crash_midwrite

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE = (
    "config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"
)  # fmt: skip
CHECKPOINT_KEYS = ("round", "params", "momentum", "wall_s", "bytes_sent")
LOCK_FILE = ".lock"  # held (flock) by the one process writing a run or sweep folder


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock while the block runs: a second process that tries to write the same
    run or sweep folder gets a one-line UsageError instead of writing every round twice.

    The lock is an advisory flock on `folder/.lock`, released by the kernel when the process
    dies, so a killed run never leaves a stale lock behind. `folder` must exist.
    """
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115  # held open for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(
                f"'{folder}' is being written by another repgossip process; wait for it to end"
            ) from None
        yield
    finally:
        handle.close()


def check_output(out: Path, *, keep: bool, force: bool) -> None:
    """Refuse a non-empty `out` unless it is kept (`keep`, for resuming) or may be cleared (`force`)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (keep or force):
        raise UsageError(
            f"output folder '{out}' is not empty; pass --resume to continue it or --force to overwrite it"
        )


def claim_output(out: Path, *, keep: bool, force: bool) -> None:
    """Make `out` ours, clearing it if `force` and not `keep`. Call once nothing can fail any more."""
    check_output(out, keep=keep, force=force)
    try:
        if force and not keep and out.is_dir():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot use output folder '{out}': {err.strerror or err}") from None


def resumable_config(out: Path, cfg: Config) -> None:
    """Refuse to resume `out` with a config whose results would differ from the saved run's."""
    if not (out / CHECKPOINT_FILE).is_file() or not (out / CONFIG_FILE).is_file():
        raise UsageError(f"cannot resume: '{out}' holds no {CHECKPOINT_FILE} and {CONFIG_FILE}")
    saved = build_config(read_yaml(out / CONFIG_FILE))
    changed = changed_keys(saved, cfg)
    if changed:
        key = changed[0]
        raise UsageError(
            f"cannot resume with a changed '{key}' ({getattr(saved, key)!r} -> {getattr(cfg, key)!r}); "
            f"only {', '.join(RESUMABLE_KEYS)} may change"
        )


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary file, fsync, rename, fsync the folder: a crash at any moment leaves the
    old file or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        maybe_crash_midwrite(path, handle, payload)
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read_checkpoint(out: Path) -> dict[str, Any]:
    """A checkpoint's tensors and counters. `weights_only=True`: a checkpoint is data, and a file
    that asks to run code is refused unread."""
    path = out / CHECKPOINT_FILE
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or malicious: one line, no traceback
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot read checkpoint '{path}': {reason}") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise UsageError(
            f"'{path}' is not a repgossip checkpoint (needs {', '.join(CHECKPOINT_KEYS)})"
        )
    return state


def read_metrics(path: Path, up_to_round: int | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if up_to_round is None or r["round"] <= up_to_round]


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
