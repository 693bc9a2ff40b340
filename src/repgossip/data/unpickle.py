"""Unpickling that can only build what the caller names: data files are never unpickled freely.

A pickle is a program: every GLOBAL it names is imported and may be called, so an unrestricted
`pickle.load` of a downloaded file runs whatever the file says (`os.system`, `eval`, ...). Some
datasets ship only as pickles (CIFAR's "python version", the HAPT tables), so they are read through
`load_restricted`, whose `find_class` hands out the allowed globals alone and refuses anything else
in one line, before it is imported or called. Plain containers (dict, list, tuple, str, bytes,
numbers) come from opcodes and need no global; numpy arrays need the few numpy functions of
NUMPY_ARRAYS, resolved here without importing the deprecated `numpy.core`.
"""

from __future__ import annotations

import _compat_pickle
import gzip
import io
import os
import pickle
import struct
import zlib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any, BinaryIO

import numpy as np

from repgossip.errors import UsageError

Name = tuple[str, str]  # (module, qualified name) as a pickle's GLOBAL names it, Python 3 spelling

_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it (bytes written as latin-1 text), and nothing
    else: another codec name could make the codec machinery import modules."""
    if not isinstance(text, str) or encoding.lower() not in _LATIN1:
        raise UsageError(
            f"refusing _codecs.encode with codec {encoding!r}; pickled bytes use only 'latin1'"
        )
    return text.encode("latin1")


def _numpy_globals() -> dict[Name, Any]:
    """The numpy functions and classes an array's pickle names, under each module spelling
    (numpy 1.x wrote `numpy.core.*`, numpy 2 writes `numpy._core.*`)."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[Name, Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{package}.numeric", "_frombuffer")] = getattr(numeric, "_frombuffer")  # noqa: B009
    table[("_codecs", "encode")] = _latin1_encode
    return table


KNOWN: dict[Name, Any] = _numpy_globals()
NUMPY_ARRAYS: frozenset[Name] = frozenset(KNOWN)  # numpy arrays of any dtype, pickled any way


def _python3_name(module: str, name: str) -> Name:
    """Python 2 spellings (`__builtin__`, `copy_reg`) in Python 3's, as pickle itself maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RestrictedUnpickler(pickle.Unpickler):
    """find_class answers from the caller's table only; the C unpickler calls it for every
    GLOBAL, STACK_GLOBAL, INST, OBJ and extension-code opcode, so nothing else gets imported."""

    def __init__(self, file: BinaryIO, table: Mapping[Name, Any], what: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._table = table
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        key = _python3_name(module, name)
        if key in self._table:
            return self._table[key]
        raise UsageError(
            f"{self._what}: refusing to unpickle {module}.{name} (not an allowed class; this file "
            f"may only hold {self._allowed()}); the file is corrupt or not what it claims to be"
        )

    def _allowed(self) -> str:
        """The allowed globals in a few words: numpy's by their purpose, the others by name."""
        others = sorted(f"{m}.{n}" for m, n in self._table if (m, n) not in NUMPY_ARRAYS)
        kinds = ["plain containers"] + (["numpy arrays"] if NUMPY_ARRAYS & set(self._table) else [])
        return ", ".join(kinds + others)

    def persistent_load(self, pid: Any) -> Any:
        raise UsageError(f"{self._what}: refusing a persistent id in the pickle; not a data file")


def load_restricted(
    source: str | os.PathLike[str] | bytes,
    allowed: AbstractSet[Name],
    *,
    substitutes: Mapping[Name, Any] | None = None,
    encoding: str = "ASCII",
    what: str | None = None,
) -> Any:
    """Unpickle `source` (a path, gunzipped on the fly if it ends in .gz, or the pickle's bytes),
    building only the globals in `allowed` ((module, name) pairs, Python 3 spelling).

    Each allowed name resolves to `substitutes[name]` when given (stand-in classes for a library
    we do not want to import), else to the numpy object of KNOWN, else to the real attribute.
    `encoding` is pickle's, for Python 2 str: "bytes" keeps them bytes (CIFAR's b"data").
    A refused global or a corrupt stream is a one-line UsageError naming `what` (default: the path).
    """
    label = what or (repr(os.fspath(source)) if not isinstance(source, bytes) else "pickle")
    table = {key: _resolve(key, substitutes or {}) for key in allowed}
    try:
        with _open(source) as stream:
            return _RestrictedUnpickler(stream, table, label, encoding).load()
    except UsageError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(f"{label}: cannot read ({_line(exc)}); the file is corrupt") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, RecursionError, UnicodeError) as exc:  # fmt: skip
        raise UsageError(
            f"{label}: not a valid pickle ({type(exc).__name__}: {_line(exc)}); the file is "
            "corrupt or not what it claims to be"
        ) from None


def _resolve(key: Name, substitutes: Mapping[Name, Any]) -> Any:
    """What an allowed global stands for; only names the caller listed are ever looked up."""
    if key in substitutes:
        return substitutes[key]
    if key in KNOWN:
        return KNOWN[key]
    module = __import__(key[0], fromlist=["_"])
    target: Any = module
    for part in key[1].split("."):
        target = getattr(target, part)
    return target


def _open(source: str | os.PathLike[str] | bytes) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    path = os.fspath(source)
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115 - closed by the caller's with


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
