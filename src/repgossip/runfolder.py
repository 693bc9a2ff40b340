"""The run folder: claiming it safely, writing it atomically, checkpoints in and out.

Contract: `config.yaml`, `metrics.jsonl`, `summary.json`, `checkpoint.pt`, `provenance.json`. A folder
that holds anything is never overwritten unless asked (`resume` continues it, `force` replaces it),
and `force` replaces only folders repgossip wrote, once the new run is under way. An output path is
resolved once (`resolve_out`), before any check; what repgossip creates in a run or sweep folder is
listed in the folder's manifest (`.repgossip`), and removal (--force, the clean-up of a failed run)
takes exactly those entries, as the kind written, and nothing else. Every file is replaced
atomically, so a crash at any moment leaves the last good version; a checkpoint carries its run's
config, a digest of its data and a checksum of its payload, so it resumes only the run that wrote
it, intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repgossip.config import RESUMABLE_KEYS, Config, changed_keys, load_resolved
from repgossip.errors import StorageError, UsageError, first_line
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
            _lock_without_waiting(handle)
        except OSError:
            raise UsageError(
                f"'{folder}' is being written by another repgossip process; wait for it to end"
            ) from None
        yield
    finally:
        handle.close()


def _lock_without_waiting(handle: io.TextIOWrapper) -> None:
    """An exclusive lock on the open file, or OSError if another process holds one: flock where
    it exists (POSIX), msvcrt's byte lock on Windows. Imported here, not at the top, so that
    `import repgossip` works where either module is missing."""
    try:
        import fcntl
    except ImportError:
        import msvcrt  # type: ignore[import-not-found,unused-ignore]

        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


MAX_NAME_BYTES = 255  # longest file name most file systems take


def resolve_out(out: str | os.PathLike[str], *, link_ok: bool = True) -> Path:
    """The folder `out` names, absolute and with no `~`, `.`, `..` or symbolic link left in it:
    every check and every write of a run or sweep uses this one path, so no spelling can make a
    check look at one folder and the writes land in another.

    Resolved as the kernel will resolve it once the missing folders exist: `new/..` is the folder
    holding `new` (the working directory for `new/..`), whether `new` exists or not, and
    `link/..` the parent of the link's target. A leading `~` is the home folder, as in a shell.
    A symbolic link as the last part is refused where it points nowhere, and with `link_ok`
    False (--force, --resume): the folder to replace or continue is named as itself.
    """
    try:
        spelled = Path(os.path.expanduser(os.fspath(out)))
        check_path(spelled)
        if spelled.name not in ("", ".."):  # "x/." is "x"; "", "." and ".." end in no link
            last = Path(os.path.realpath(spelled.parent)) / spelled.name
            if last.is_symlink() and not (link_ok and last.is_dir()):
                raise UsageError(f"'{out}' is a symbolic link; give the folder it points to")
        return Path(os.path.realpath(spelled))
    except UsageError:
        raise
    except (OSError, ValueError) as err:  # a NUL byte in the name, a loop of links
        raise UsageError(f"cannot use output path {str(out)!r}: {err}") from None


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


# ---------------------------------------------------------------- what is ours: the manifest

MANIFEST_FILE = ".repgossip"  # the folder's kind, then one line per entry repgossip created
MANIFEST_VERSION = 1
FILE, FOLDER, OTHER = "file", "folder", "other"  # OTHER: a symbolic link, a device, a socket
TMP_SUFFIX = ".tmp"  # atomic_write's temporary file, beside the file it replaces
BOOKKEEPING = (MANIFEST_FILE, LOCK_FILE)
PLOT_NAMES = ("curves.png", "curves.pdf", "curves.svg")
TENSORBOARD_DIR = "tensorboard"
# What releases before the manifest wrote (0.2.0: no marker; later: `.repgossip` holding "run" or
# "sweep"). A folder without a manifest is ours only as far as it holds plain files of exactly
# these names, and, in a sweep, run folders that are wholly ours: never a tensorboard/ folder
# (another experiment's event files look the same), never a folder under one of these names.
LEGACY_FILES = {
    "run": (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE, "provenance.json",
            *PLOT_NAMES),
    "sweep": ("summary.csv", "summary_by_config.csv", "summary.md", *PLOT_NAMES),
}  # fmt: skip


@dataclass(frozen=True)
class Owned:
    """What repgossip wrote in a folder: the folder's kind ("run", "sweep", "tensorboard") and
    each entry it created there, by name, as a FILE or a FOLDER (read from the manifest, or
    worked out from the names a release before the manifest wrote)."""

    kind: str
    entries: dict[str, str]


def entry_kind(path: Path) -> str | None:
    """FILE, FOLDER or OTHER, never following a symbolic link; None where nothing is there."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    return FILE if stat.S_ISREG(mode) else FOLDER if stat.S_ISDIR(mode) else OTHER


def owned(folder: Path) -> Owned | None:
    """What repgossip wrote in `folder` (see `Owned`); None where it is not a folder repgossip
    wrote (or not a folder at all: a symbolic link is never ours)."""
    if entry_kind(folder) != FOLDER:
        return None
    return _read_manifest(folder) or _legacy(folder)


def _read_manifest(folder: Path) -> Owned | None:
    """`folder`'s manifest; None where it has none, or only the bare kind an older release wrote.
    A line that is not a whole entry (a torn last line) is skipped: its entry stays foreign."""
    path = folder / MANIFEST_FILE
    if entry_kind(path) != FILE:
        return None
    try:
        lines = path.read_bytes().decode().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    header = _json_line(lines[0]) if lines else None
    if not (isinstance(header, dict) and header.get("repgossip") == MANIFEST_VERSION):
        return None
    entries: dict[str, str] = {}
    for line in lines[1:]:
        entry = _json_line(line)
        listed = isinstance(entry, list) and len(entry) == 2 and entry[0] in (FILE, FOLDER)
        if listed and _plain_name(entry[1]):
            entries.setdefault(entry[1], entry[0])
    return Owned(str(header.get("kind")), entries)


def _json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and not set(name) & {"/", "\0"}


def _legacy(folder: Path) -> Owned | None:
    """What a release before the manifest wrote in `folder` (see LEGACY_FILES); None where it
    has neither that release's marker nor a config.yaml or summary.csv."""
    kind = ""
    if entry_kind(folder / MANIFEST_FILE) == FILE:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            kind = (folder / MANIFEST_FILE).read_bytes().decode().strip()
    if kind not in LEGACY_FILES:
        sweep, run = (entry_kind(folder / n) == FILE for n in ("summary.csv", CONFIG_FILE))
        kind = "sweep" if sweep else "run" if run else ""
    if not kind:
        return None
    entries = {name: FILE for name in LEGACY_FILES[kind] if entry_kind(folder / name) == FILE}
    if kind == "sweep":  # the grid points' run folders
        for sub in sorted(folder.iterdir()):
            inner = owned(sub) if sub.name not in entries else None
            if inner is not None and inner.kind == "run" and not foreign_entries(sub):
                entries[sub.name] = FOLDER
    return Owned(kind, entries)


def _owned_kind(own: Owned, name: str) -> str | None:
    """The kind of entry `name` is ours as, in a folder that holds `own`; None: not ours."""
    if name in BOOKKEEPING:
        return FILE
    if name in own.entries:
        return own.entries[name]
    written = name.removesuffix(TMP_SUFFIX)  # the temporary file of one of our files
    return FILE if written != name and own.entries.get(written) == FILE else None


def foreign_entries(folder: Path) -> list[str]:
    """What in `folder` repgossip did not write, or wrote as another kind (a folder where it
    wrote a file), inside the folders it made too (as 'tensorboard/NAME'). Empty when the folder
    is wholly ours; every entry when it is not a repgossip folder."""
    own = owned(folder) or Owned("", {})
    foreign = []
    for entry in sorted(folder.iterdir()):
        kind, actual = _owned_kind(own, entry.name), entry_kind(entry)
        if kind == FOLDER and actual == FOLDER:
            foreign += [f"{entry.name}/{name}" for name in foreign_entries(entry)]
        elif kind != actual:
            foreign.append(entry.name)
    return foreign


def is_ours(folder: Path) -> bool:
    """Whether `folder` is a run or sweep folder that holds only what repgossip wrote: every
    entry listed in its manifest as the kind it is (or, written before manifests, one of the
    names that release wrote). A folder with anything else in it is never replaced."""
    return owned(folder) is not None and not foreign_entries(folder)


def start_manifest(folder: Path, kind: str, entries: dict[str, str] | None = None) -> None:
    """Make `folder` (just made, or emptied, or written by a release before manifests: then
    `entries` are what that release wrote) one whose entries repgossip records as it creates
    them."""
    lines = [
        {"repgossip": MANIFEST_VERSION, "kind": kind},
        *([k, n] for n, k in (entries or {}).items()),
    ]
    atomic_write(folder / MANIFEST_FILE, "".join(json.dumps(x) + "\n" for x in lines).encode())


def record_entry(path: Path, kind: str = FILE, *, made: bool = False) -> None:
    """Note in the manifest of `path`'s folder, before `path` is created (or, `made`, just after
    a library created it), that it is ours, as a `kind` (FILE or FOLDER). Only where the folder
    has a manifest, and only for a new entry: one that was there (a user's) is never recorded.
    One appended line, fsynced: a crash leaves the entry listed and absent (harmless) or, in a
    torn line, unlisted (then never removed)."""
    manifest = _read_manifest(path.parent) if path.name not in BOOKKEEPING else None
    if manifest is None or path.name in manifest.entries:
        return
    if not made and entry_kind(path) is not None:
        return
    line = (json.dumps([kind, path.name]) + "\n").encode()
    try:
        with open(path.parent / MANIFEST_FILE, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise StorageError(
            f"cannot write '{path.parent / MANIFEST_FILE}': {err.strerror or err}"
        ) from None


_WHAT = {FILE: "a file", FOLDER: "a folder", OTHER: "a link or special file"}


def check_entry(path: Path, kind: str) -> None:
    """Refuse in one line to write a `kind` where something else is (a file named like the
    folder tensorboard=true writes); a symbolic link to a folder is a folder to write into."""
    actual = entry_kind(path)
    if actual is None or actual == kind or (kind == FOLDER and path.is_dir()):
        return
    raise UsageError(
        f"cannot write '{path}': it is {_WHAT[actual]} where repgossip writes {_WHAT[kind]}; "
        "move it away"
    )


def make_folder(path: Path, kind: str) -> None:
    """`path` as a folder to write into (tensorboard/): made where nothing is there, and then,
    inside a folder with a manifest, recorded there with a manifest of its own; a folder that is
    there is used as it is (written into, never owned)."""
    check_entry(path, FOLDER)
    if entry_kind(path) is not None:
        return
    record_entry(path, FOLDER)
    try:
        path.mkdir(parents=True)
    except OSError as err:
        raise StorageError(f"cannot make folder '{path}': {err.strerror or err}") from None
    if _read_manifest(path.parent) is not None:
        start_manifest(path, kind)


def remove_owned(folder: Path) -> None:
    """Remove what repgossip wrote in `folder`, each entry only as the kind it wrote: a file
    unlinked, a folder it made emptied the same way and removed once nothing else is in it;
    the manifest last. Anything else (a user's file, a folder we did not make, a link) stays;
    so does `folder` itself. Best effort: an entry that cannot be removed stays too. Without a
    manifest (a claim that failed before writing one), only the lock file is ours."""
    if entry_kind(folder) != FOLDER:
        return
    own = owned(folder) or Owned("", {})
    for entry in sorted(folder.iterdir(), key=lambda e: (e.name == MANIFEST_FILE, e.name)):
        kind = _owned_kind(own, entry.name)
        if kind is None or kind != entry_kind(entry):
            continue
        if kind == FOLDER:
            remove_owned(entry)
            remove_if_empty(entry)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def remove_file(path: Path) -> None:
    """Remove `path` if it is a file repgossip wrote there (a table an earlier grid left);
    anything else by that name stays."""
    own = owned(path.parent)
    if own is None or _owned_kind(own, path.name) != FILE or entry_kind(path) != FILE:
        return
    try:
        path.unlink()
    except OSError as err:
        raise StorageError(f"cannot remove '{path}': {err.strerror or err}") from None


# ---------------------------------------------------------------- claiming a folder


def has_content(folder: Path) -> bool:
    """Whether `folder` holds anything besides a lock file left by a run (an empty folder the user
    made, or one a run claimed and gave back, is free to use)."""
    return any(entry.name != LOCK_FILE for entry in folder.iterdir())


def _is_replaceable(folder: Path) -> bool:
    """A run folder with no finished round (stopped before round 1 was evaluated or any checkpoint
    was written) and nothing else in it: a plain rerun may replace it, as there is nothing to
    lose and nothing to resume."""
    own = owned(folder)
    if own is None or own.kind != "run" or entry_kind(folder / CHECKPOINT_FILE) is not None:
        return False
    return is_ours(folder) and all(r["round"] == 0 for r in read_metrics(folder / METRICS_FILE))


def _stale_replacement(out: Path) -> Path | None:
    """A folder a killed --force moved aside and never put back or deleted."""
    stale = sorted(out.parent.glob(f".{out.name}.replaced-*")) if out.parent.is_dir() else []
    return stale[0] if stale else None


def _not_ours(folder: Path) -> str | None:
    if is_ours(folder):
        return None
    foreign = foreign_entries(folder) if owned(folder) is not None else []
    if foreign:
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
    """Refuse a non-empty `out` (a path `resolve_out` gave) unless it is kept (`keep`, for
    resuming) or may be replaced: `force` on a folder that holds only what repgossip wrote
    (never another folder, the working directory or its parents), or a run folder with no
    finished round."""
    check_path(out)
    stale = _stale_replacement(out)
    if stale is not None:
        raise UsageError(
            f"'{stale}' holds the folder a killed --force was replacing; put it back "
            f"(mv '{stale}' '{out}') or delete it, then run again"
        )
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
    creates `out` (or takes the empty one there), locks it too and starts its manifest. `commit()`,
    once the new run has trained and evaluated a round (or checkpointed), removes what repgossip
    wrote in the old folder. If the run fails before that, `close()` removes what this run wrote
    and puts the old folder back: a bad config or a crash in the first round never costs the
    results that were there, nor anything else that was in the folder.
    """

    def __init__(self, out: Path, *, keep: bool, force: bool, kind: str = "run") -> None:
        self.out, self.keep, self.force, self.kind = out, keep, force, kind
        self.aside: Path | None = None
        self.created = False  # `out` held nothing of an earlier run: undo by removing what we wrote
        self.made = False  # `out` itself did not exist: undo removes it too, once empty
        self.existed = False
        self.committed = False
        self._lock = contextlib.ExitStack()

    def open(self) -> None:
        check_output(self.out, keep=self.keep, force=self.force)
        self.existed = self.out.is_dir()
        if self.existed:  # a folder another process writes is neither resumed nor replaced
            self._lock.enter_context(locked(self.out))
        try:
            if not self.keep and self.existed and has_content(self.out):
                self.aside = self.out.with_name(f".{self.out.name}.replaced-{os.getpid()}")
                os.replace(self.out, self.aside)
            self.made = not self.out.exists()
            self.created = self.made or not has_content(self.out)
            if self.made:
                record_entry(self.out, FOLDER)  # a grid point's folder is its sweep's
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self.close()
            raise UsageError(
                f"cannot use output folder '{self.out}': {err.strerror or err}"
            ) from None
        if self.aside is not None or not self.existed:  # a new folder: lock it too
            self._lock.enter_context(locked(self.out))
        if _read_manifest(self.out) is None:  # resumed from an older release: its files stay ours
            before = owned(self.out) if self.keep else None
            start_manifest(self.out, self.kind, before.entries if before else None)

    def commit(self) -> None:
        """The new run has a record: the old folder is no longer needed."""
        if not self.committed and self.aside is not None:
            remove_owned(self.aside)
            remove_if_empty(self.aside)
        self.committed = True

    def close(self) -> None:
        """Release the lock; before a commit, undo what `open` did."""
        self._lock.close()
        if self.committed:
            return
        if self.created:
            remove_owned(self.out)
            if self.made:
                remove_if_empty(self.out)
        if self.aside is not None and not os.path.lexists(self.out):
            os.replace(self.aside, self.out)

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
            f"cannot {what} with a changed '{key}' ({saved.to_dict().get(key)!r} -> "
            f"{cfg.to_dict().get(key)!r}); only {', '.join(RESUMABLE_KEYS)} may change"
        )


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary file, fsync, rename, fsync the folder: a crash at any moment leaves the
    old file or the new one, never a torn one. A write that fails (a full disk) removes the
    temporary file, keeps the old file, and raises StorageError in one line. A new file in a
    folder with a manifest is recorded there first (see `record_entry`)."""
    record_entry(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
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
        reason = first_line(err)
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
