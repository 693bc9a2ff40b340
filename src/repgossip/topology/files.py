"""Graphs and matrices read from files: edge lists, and dense (N, N) arrays (an adjacency, a
mixing matrix W) from .npy/.npz without pickles; every problem is one line naming the file."""

from __future__ import annotations

import errno
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from repgossip.errors import UsageError
from repgossip.topology.graph import _one_line

# Files read as dense (N, N) matrices: an adjacency for `topology`, a mixing matrix W for `mixing`.
ADJACENCY_SUFFIXES: tuple[str, ...] = (".npy", ".npz")
_EDGE_SPLIT = re.compile(r"[\s,]+")
# Peak bytes of parsing an edge list, per byte of the file (lines, tuples, ints): 20 measured.
EDGE_LIST_BYTES_PER_FILE_BYTE = 20


def _parse_edge_line(line: str, path: Path, lineno: int) -> tuple[int, int] | None:
    """One 'i j' edge, or None for blank/comment lines; errors name the file and line number."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    tokens = [t for t in _EDGE_SPLIT.split(text) if t]
    try:
        if len(tokens) != 2:
            raise ValueError
        i, j = int(tokens[0]), int(tokens[1])
    except ValueError:
        raise UsageError(
            f"edge list {path} line {lineno}: expected two integer node ids 'i j', got {text!r}"
        ) from None
    if i < 0 or j < 0:
        raise UsageError(f"edge list {path} line {lineno}: node ids must be >= 0, got {text!r}")
    if i == j:
        raise UsageError(f"edge list {path} line {lineno}: self-loop {i}-{j} is not allowed")
    return i, j


def _user_path(name: str | os.PathLike) -> Path:
    """`name` with a leading ~ expanded; left as it is where that fails (`~nosuchuser/x`), which
    then reads as a missing file instead of a RuntimeError traceback."""
    try:
        return Path(name).expanduser()
    except RuntimeError:
        return Path(name)


def _file_problem(path: Path) -> str | None:
    """None if `path` is a file, else why not, in words for a one-line error. `is_file` raises
    OSError for a name the OS refuses to look up (a component over 255 bytes, a permission)."""
    try:
        if path.is_file():
            return None
    except OSError as exc:
        hint = "; each name in a path may have at most 255 bytes"
        reason = (exc.strerror or _one_line(exc)) + (
            hint if exc.errno == errno.ENAMETOOLONG else ""
        )
        return f"cannot look up {str(path)!r}: {reason}"
    return f"no such file: {str(path)!r}"


def _load_array(path: Path, key: str, source: str) -> np.ndarray:
    """np.load without pickle (a matrix file must not be able to run code when it is read); an .npz
    must hold one array, or name the one to use `key`, so the choice is never a guess."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return np.asarray(loaded)
        with loaded:
            names = list(loaded.files)
            chosen = names[0] if len(names) == 1 else key if key in names else None
            if chosen is not None:
                return np.asarray(loaded[chosen])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise UsageError(
            f"cannot read {source} with np.load(allow_pickle=False): {_one_line(exc)}; "
            "save a plain numeric (N, N) array with np.save or np.savez"
        ) from None
    raise UsageError(
        f"{source} holds arrays {names}; it must hold exactly one array, or one named {key!r}"
    )


def _check_matrix(a: np.ndarray, source: str, workers: int | None) -> np.ndarray:
    """The checks an adjacency and a mixing matrix share: numeric, square, N = workers, finite,
    no negative entry. Returns it as float64."""
    if a.dtype.kind not in "biuf":
        raise UsageError(f"{source} must hold numbers or booleans, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        want = f"{workers} x {workers}" if workers is not None else "a square N x N (N >= 1)"
        raise UsageError(f"{source} has shape {a.shape}; it must be {want}, one row per worker")
    if workers is not None and len(a) != workers:
        raise UsageError(f"{source} is {len(a)} x {len(a)} but workers={workers}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        i, j = np.argwhere(~np.isfinite(a))[0]
        raise UsageError(f"{source} has a non-finite entry {a[i, j]} at ({i}, {j})")
    if (a < 0).any():
        i, j = np.argwhere(a < 0)[0]
        raise UsageError(f"{source} has a negative entry {a[i, j]:.6g} at ({i}, {j}); need >= 0")
    return a


def _asymmetry(a: np.ndarray, atol: float, source: str, needs: str) -> None:
    """Refuse a matrix whose largest |a_ij - a_ji| exceeds `atol`, naming that pair."""
    gap = np.abs(a - a.T)
    i, j = np.unravel_index(np.argmax(gap), gap.shape)
    if gap[i, j] > atol:
        raise UsageError(
            f"{source} is not symmetric: ({i}, {j}) = {a[i, j]:.17g} but ({j}, {i}) = "
            f"{a[j, i]:.17g}; {needs}"
        )
