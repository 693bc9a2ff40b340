"""The run folder: claiming it safely, writing it atomically, checkpoints in and out.

Contract: `config.yaml`, `metrics.jsonl`, `summary.json`, `checkpoint.pt`, `provenance.json`. A folder
that holds anything is never overwritten unless asked (`resume` continues it, `force` replaces it),
and `force` replaces only folders repgossip wrote, once the new run is under way. Every file is
replaced atomically, so a crash at any moment leaves the last good version; a checkpoint carries its
run's config, a digest of its data and a checksum of its payload, so it resumes only the run that
wrote it, intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repgossip.config import RESUMABLE_KEYS, Config, changed_keys, load_resolved
from repgossip.errors import StorageError, UsageError
from repgossip.faults import maybe_crash_midwrite

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE = (
    "config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"
)  # fmt: skip
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


MARKER_FILE = ".repgossip"  # "run" or "sweep": what wrote this folder, so --force knows it
MAX_NAME_BYTES = 255  # longest file name most file systems take


def check_path(out: Path) -> None:
    """Refuse in one line a path the file system cannot take, or one that is not a folder."""
    long = [part for part in out.parts if len(part.encode()) > MAX_NAME_BYTES]
    if long:
        raise UsageError(
            f"output path has a name of {len(long[0].encode())} bytes ({long[0][:40]!r}...); "
            f"file systems take at most {MAX_NAME_BYTES}"
        )
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"output path '{out}' exists and is not a folder")
    except OSError as err:
        raise UsageError(f"cannot use output path '{out}': {err.strerror or err}") from None


PLOT_NAMES = ("curves.png", "curves.pdf", "curves.svg")
TENSORBOARD_DIR = "tensorboard"
RUN_NAMES = frozenset(
    (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE, "provenance.json", MARKER_FILE,
     LOCK_FILE, TENSORBOARD_DIR, *PLOT_NAMES)
)  # fmt: skip
SWEEP_NAMES = frozenset(
    ("summary.csv", "summary_by_config.csv", "summary.md", MARKER_FILE, LOCK_FILE, *PLOT_NAMES)
)


def _kind(folder: Path) -> str:
    marker = folder / MARKER_FILE
    try:
        return marker.read_text().strip() if marker.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return ""


def foreign_entries(folder: Path) -> list[str]:
    """What in `folder` repgossip did not write: a run folder holds only the run's files; a sweep
    folder its tables, plots and run folders. Empty when the folder is wholly ours."""
    kind = _kind(folder) or ("sweep" if (folder / "summary.csv").is_file() else "run")
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name.endswith(".tmp") or entry.name in (
            RUN_NAMES if kind == "run" else SWEEP_NAMES
        ):
            continue
        if kind == "sweep" and entry.is_dir() and not entry.is_symlink() and is_ours(entry):
            continue
        foreign.append(entry.name)
    return foreign


def is_ours(folder: Path) -> bool:
    """Whether `folder` is a run or sweep folder that holds only what repgossip wrote: marked, or
    (written before markers) holding a config.yaml or summary.csv and nothing foreign. A folder
    with anything else in it is never replaced."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    known = _kind(folder) or any((folder / name).is_file() for name in (CONFIG_FILE, "summary.csv"))
    return bool(known) and not foreign_entries(folder)


def has_content(folder: Path) -> bool:
    """Whether `folder` holds anything besides a lock file left by a run (an empty folder the user
    made, or one a run claimed and gave back, is free to use)."""
    return any(entry.name != LOCK_FILE for entry in folder.iterdir())


def _is_replaceable(folder: Path) -> bool:
    """A run folder with no finished round (stopped before round 1 was evaluated or any checkpoint
    was written) and nothing else in it: a plain rerun may replace it, as there is nothing to
    lose and nothing to resume."""
    if _kind(folder) != "run" or (folder / CHECKPOINT_FILE).exists() or not is_ours(folder):
        return False
    return all(r["round"] == 0 for r in read_metrics(folder / METRICS_FILE))


def _stale_replacement(out: Path) -> Path | None:
    """A folder a killed --force moved aside and never put back or deleted."""
    stale = sorted(out.parent.glob(f".{out.name}.replaced-*")) if out.parent.is_dir() else []
    return stale[0] if stale else None


def _not_ours(folder: Path) -> str | None:
    if is_ours(folder):
        return None
    foreign = foreign_entries(folder) if folder.is_dir() else []
    telltale = _kind(folder) or any((folder / n).is_file() for n in (CONFIG_FILE, "summary.csv"))
    if foreign and telltale:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return f"it holds files repgossip did not write ({shown})"
    return "it is not a repgossip folder"


def _protected(folder: Path) -> str | None:
    """Why `folder` must never be removed, or None."""
    here, target = Path.cwd().resolve(), folder.resolve()
    if target == here or target in here.parents:
        return "it is the working directory or one of its parents"
    if target == Path.home().resolve() or target.parent == target:
        return "it is the home or root folder"
    return None


def check_output(out: Path, *, keep: bool, force: bool) -> None:
    """Refuse a non-empty `out` unless it is kept (`keep`, for resuming) or may be replaced:
    `force` on a folder that holds only what repgossip wrote (never another folder, the working
    directory or its parents), or a run folder with no finished round."""
    check_path(out)
    stale = _stale_replacement(out)
    if stale is not None:
        raise UsageError(
            f"'{stale}' holds the folder a killed --force was replacing; put it back "
            f"(mv '{stale}' '{out}') or delete it, then run again"
        )
    if out.is_symlink() and (force or keep):
        raise UsageError(f"'{out}' is a symbolic link; give the folder it points to")
    if not out.is_dir() or not has_content(out) or keep:
        return
    if force or _is_replaceable(out):
        reason = _protected(out) or _not_ours(out)
        if reason:
            raise UsageError(f"will not replace '{out}': {reason}; choose another --out")
        return
    raise UsageError(
        f"output folder '{out}' is not empty; pass --resume to continue it or --force to overwrite it"
    )


class FolderClaim:
    """Makes `out` the folder of this run, replacing an old one only once the new run is safe.

    `open()` locks `out`, moves an old folder that is being replaced aside (next to it, hidden),
    creates `out` and locks it too. `commit()`, once the new run has trained and evaluated a round
    (or checkpointed), deletes the old folder. If the run fails before that, `close()` puts the old
    folder back: a bad config or a crash in the first round never costs the results that were
    there.
    """

    def __init__(self, out: Path, *, keep: bool, force: bool, kind: str = "run") -> None:
        self.out, self.keep, self.force, self.kind = out, keep, force, kind
        self.aside: Path | None = None
        self.created = False  # `out` did not exist, or was empty: undo by removing what we wrote
        self.existed = False
        self.committed = False
        self._lock = contextlib.ExitStack()

    def open(self) -> None:
        check_output(self.out, keep=self.keep, force=self.force)
        self.existed = self.out.is_dir()
        if self.existed:  # a folder another process writes is neither resumed nor replaced
            self._lock.enter_context(locked(self.out))
        try:
            if not self.keep and self.out.is_dir() and has_content(self.out):
                self.aside = self.out.with_name(f".{self.out.name}.replaced-{os.getpid()}")
                shutil.rmtree(self.aside, ignore_errors=True)
                os.replace(self.out, self.aside)
            self.created = not self.out.exists() or not has_content(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self.close()
            raise UsageError(
                f"cannot use output folder '{self.out}': {err.strerror or err}"
            ) from None
        if self.aside is not None or not self.existed:  # a new folder: lock it too
            self._lock.enter_context(locked(self.out))
        if not (self.out / MARKER_FILE).is_file():
            atomic_write(self.out / MARKER_FILE, f"{self.kind}\n".encode())

    def commit(self) -> None:
        """The new run has a record: the old folder is no longer needed."""
        if not self.committed and self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
        self.committed = True

    def close(self) -> None:
        """Release the lock; before a commit, undo what `open` did."""
        self._lock.close()
        if self.committed:
            return
        if self.aside is not None:
            shutil.rmtree(self.out, ignore_errors=True)
            os.replace(self.aside, self.out)
        elif self.created:
            shutil.rmtree(self.out, ignore_errors=True)
            if self.existed:
                self.out.mkdir()  # as the user had it: there, and empty

    def __enter__(self) -> FolderClaim:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def claim_output(out: Path, *, keep: bool, force: bool, kind: str = "sweep") -> None:
    """Make `out` ours at once (a sweep, whose points were all checked first), replacing an old
    folder only where `check_output` allows."""
    claim = FolderClaim(out, keep=keep, force=force, kind=kind)
    claim.open()
    claim.commit()
    claim.close()


def resumable_config(out: Path, cfg: Config, algorithm: type[Any] | None = None) -> None:
    """Refuse to resume `out` with a config whose results would differ from the saved run's,
    comparing resolved configs (`config.saved_config`), so a key added since the folder was
    written is not a difference. A run folder without a checkpoint resumes from round 0.
    `algorithm` is the class an API caller handed over."""
    if not (out / CONFIG_FILE).is_file():
        raise UsageError(f"cannot resume: '{out}' holds no {CONFIG_FILE}; start a new run there")
    saved = load_resolved(out / CONFIG_FILE, algorithm, current=cfg)
    refuse_changes(saved, cfg, f"resume '{out}'")


def refuse_changes(saved: Config, cfg: Config, what: str) -> None:
    """One line naming the first key whose change would make a continued run differ."""
    changed = changed_keys(saved, cfg)
    if changed:
        key = changed[0]
        raise UsageError(
            f"cannot {what} with a changed '{key}' ({getattr(saved, key)!r} -> "
            f"{getattr(cfg, key)!r}); only {', '.join(RESUMABLE_KEYS)} may change"
        )


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary file, fsync, rename, fsync the folder: a crash at any moment leaves the
    old file or the new one, never a torn one. A write that fails (a full disk) removes the
    temporary file, keeps the old file, and raises StorageError in one line."""
    tmp = path.with_name(path.name + ".tmp")
    try:
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
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StorageError(_cannot_write(path, err)) from None


def _cannot_write(path: Path, err: OSError) -> str:
    return (
        f"cannot write '{path}': {err.strerror or err}; the last good checkpoint is kept, "
        "--resume continues once the problem is fixed"
    )


# ---------------------------------------------------------------- checkpoints

CHECKSUM_KEY = "checksum"


def payload_checksum(state: dict[str, Any]) -> str:
    """sha256 over a checkpoint's counters and every tensor's bytes, in a fixed order: a flipped
    bit anywhere in the data is caught on load."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k != CHECKSUM_KEY):
        _hash_value(digest, key, state[key])
    return digest.hexdigest()


def _hash_value(digest: Any, key: str, value: Any) -> None:
    digest.update(key.encode())
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8).data)
    elif isinstance(value, dict):
        for inner in sorted(value):
            _hash_value(digest, f"{key}/{inner}", value[inner])
    else:
        digest.update(repr(value).encode())


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes, sealed with the checksum of its payload."""
    buffer = io.BytesIO()
    torch.save({**state, CHECKSUM_KEY: payload_checksum(state)}, buffer)
    return buffer.getvalue()


# What built the run's plug-ins: {kind: {module: sha256 of its source file}}. Optional: releases up
# to 0.2.0 did not record it, and their checkpoints still resume (unchecked on this count).
PLUGINS_KEY = "plugins"


def _is_code_record(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(kind, str)
        and isinstance(digests, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items())
        for kind, digests in value.items()
    )


# (key, accepted types, what it must be) of the fields every checkpoint has
_FIELDS = (
    ("round", (int,), "a round number >= 0"),
    ("wall_s", (int, float), "seconds >= 0"),
    ("bytes_sent", (int,), "a byte count >= 0"),
    ("params", (torch.Tensor,), "a tensor"),
    ("momentum", (torch.Tensor,), "a tensor"),
    ("rows", (dict,), "a mapping of row sets"),
    ("config", (str,), "the run's resolved config"),
    ("data_digest", (str,), "the digest of the run's data"),
    (CHECKSUM_KEY, (str,), "the payload's checksum"),
)


def read_checkpoint(out: Path) -> dict[str, Any]:
    """A checkpoint's tensors and counters, checked field by field and against its checksum.
    `weights_only=True`: a checkpoint is data, and a file that asks to run code is refused unread."""
    path = out / CHECKPOINT_FILE
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or malicious: one line, no traceback
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot read checkpoint '{path}': {reason}") from None
    if not isinstance(state, dict):
        raise UsageError(f"'{path}' is not a repgossip checkpoint (it holds no mapping)")
    if "params" in state and "config" not in state:
        raise UsageError(
            f"'{path}' was written by repgossip 0.1, which did not record the run's config and "
            "data with it, so it cannot be resumed safely; run it again"
        )
    for key, types, what in _FIELDS:
        value = state.get(key)
        bad = not isinstance(value, types) or isinstance(value, bool)
        if not bad and isinstance(value, (int, float)):
            bad = not (math.isfinite(value) and value >= 0)
        if bad:
            raise UsageError(
                f"'{path}' is not a repgossip checkpoint of this version: '{key}' must be {what}, "
                f"got {type(value).__name__}"
            )
    if not all(isinstance(t, torch.Tensor) for t in state["rows"].values()):
        raise UsageError(f"'{path}' is not a repgossip checkpoint: 'rows' must hold tensors")
    if PLUGINS_KEY in state and not _is_code_record(state[PLUGINS_KEY]):
        raise UsageError(
            f"'{path}' is not a repgossip checkpoint of this version: '{PLUGINS_KEY}' must map "
            "each plug-in to its modules' sha256 digests"
        )
    if payload_checksum(state) != state[CHECKSUM_KEY]:
        raise UsageError(
            f"checkpoint '{path}' is corrupt (its checksum does not match its data); restore a "
            "good copy, or start the run again without --resume"
        )
    return state


# ---------------------------------------------------------------- metrics


def read_metrics(path: Path, up_to_round: int | None = None) -> list[dict[str, Any]]:
    """The evaluation records of a metrics.jsonl, skipping lines that are not whole records (a
    full disk or a crash can leave a torn last line)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        record = _record(line)
        if record is not None and (up_to_round is None or record["round"] <= up_to_round):
            records.append(record)
    return records


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("round"), int)
    return record if ok else None


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one record and fsync it; a failed write is cut back off, so the log stays whole."""
    line = (json.dumps(record) + "\n").encode()
    with open(path, "ab") as handle:
        size = handle.tell()
        try:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):
                handle.truncate(size)
            raise StorageError(_cannot_write(path, err)) from None
