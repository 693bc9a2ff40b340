"""Unpickling that can only build what the caller names: data files are never unpickled freely.

A pickle is a program: every GLOBAL it names is imported and may be called, so an unrestricted
`pickle.load` of a downloaded file runs whatever the file says (`os.system`, `eval`, ...). Some
datasets ship only as pickles (CIFAR's "python version", the HAPT tables), so they are read through
`load_restricted`, whose `find_class` hands out the allowed globals alone and refuses anything else
in one line, before it is imported or called. Plain containers (dict, list, tuple, str, bytes,
numbers) come from opcodes and need no global; numpy arrays need the few numpy functions of
NUMPY_ARRAYS, resolved here without importing the deprecated `numpy.core`.

The allowed globals alone do not make a crafted file harmless: a few bytes can name a memo slot or
a length of 2^60, an array of 2^40 elements, or make one large object feed thousands of copies
through memo references. So the file is run by the pure-Python unpickler (whose memo is a dict, not
an array sized by the largest index) with every opcode checked, and everything it may build is
bounded by N, the bytes the file holds (for a .gz file, the at most INFLATION * its length it may
inflate to):

- no read goes past the end of the file: a length field claiming more is refused before anything
  is allocated (BYTEARRAY8, which allocates before it reads, may claim at most N);
- at most N / BYTES_PER_OPCODE + MIN_OPCODES opcodes run. No opcode builds more than a few hundred
  bytes of Python objects beyond the bytes it reads (an empty dict, a memo entry, a stand-in
  object), so the objects built stay under ~4N plus 16 MiB; real data files are almost all array
  bytes (CIFAR's batches run one opcode per ~1,000 bytes, HAPT.pkl one per ~5,000);
- the calls that allocate in proportion to their arguments (an array's state, `_reconstruct`'s
  shape, latin-1 text to bytes) draw on an allowance of ALLOWANCE * N bytes in all: each array's
  bytes are in the file once, and a pickle written by Python 3 at protocol 2 holds them as text
  turned into bytes (one copy) before they become an array (another);
- memo slots are numbered in the order they are stored, as every pickler writes them, and dict keys
  are text, bytes or 32-bit ints, so no dict the file fills can be made to collide (str and bytes
  hashes are salted per process; distinct small ints hash apart), and items only go into the dicts
  and lists the file made: a crafted file cannot make one opcode rewrite a whole array;
- what the data files never use is refused: sets, extension codes (whose cache would bypass
  find_class), BUILD on anything but an object with a __setstate__ (on a class it would set
  attributes of our stand-ins for every later load), structured numpy dtypes.

So a crafted file of N bytes ends in one line naming it, in time and memory linear in N.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import functools
import gzip
import io
import math
import os
import pickle
import pickletools
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn

import numpy as np

from repgossip.errors import UsageError, described, first_line
from repgossip.memory import count_text, int_text

Name = tuple[str, str]  # (module, qualified name) as a pickle's GLOBAL names it, Python 3 spelling

BYTES_PER_OPCODE = 64  # at most one opcode per this many bytes of file, on average ...
MIN_OPCODES = 1 << 16  # ... plus this many, for small files
ALLOWANCE = 2  # bytes that calls may allocate, per byte of file
INFLATION = 16  # a .gz file may inflate to this many times its size (HAPT.pkl.gz: 4.9) ...
MIN_INFLATED = 1 << 20  # ... or to this many bytes, if more
MAX_DIMS = 32  # numpy's own limit is 64; data arrays have one or two
MAX_TYPECODE = 16  # characters of a dtype's name ('u1', 'f8', '<i8', 'S20', ...)
_KEY_INTS = 1 << 31  # dict keys may be ints in [-_KEY_INTS, _KEY_INTS)

_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")


class _Sentinel:
    """A global the file may name but never call: `numpy.ndarray` is only ever the first argument
    of `_reconstruct`, and calling it (REDUCE, NEWOBJ) would allocate any shape it is given."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{self.name} is never called by a data file, only passed to _reconstruct")


_NDARRAY = _Sentinel("numpy.ndarray")


@dataclass(frozen=True)
class _PerFile:
    """A global that allocates: find_class binds it to the unpickler, whose allowance it draws."""

    function: Callable[..., Any]


def _latin1_encode(u: _RestrictedUnpickler, text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it (bytes written as latin-1 text), and nothing
    else: another codec name could make the codec machinery import modules."""
    if (
        not isinstance(text, str)
        or not isinstance(encoding, str)
        or encoding.lower() not in _LATIN1
    ):
        u.refuse(f"_codecs.encode with codec {encoding!r:.40} (pickled bytes use 'latin1')")
    u.charge(len(text), "latin-1 text made bytes")
    return text.encode("latin1")


def _typecode(u: _RestrictedUnpickler, code: Any) -> Any:
    """A dtype's name as numpy pickles it: short text or bytes (a long one could describe a
    structured dtype of any number of fields, parsed again by each call that names it)."""
    if not isinstance(code, (str, bytes)) or len(code) > MAX_TYPECODE:
        u.refuse(f"a numpy dtype not named by a type code of up to {MAX_TYPECODE} characters")
    return code


def _dtype(u: _RestrictedUnpickler, code: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """`numpy.dtype(code, align, copy)`, as numpy pickles a dtype, for a short type code only."""
    return np.dtype(_typecode(u, code), align=bool(align), copy=bool(copy))


def _shape(u: _RestrictedUnpickler, shape: Any) -> tuple[int, ...]:
    if (type(shape) is not tuple or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < 2**63 for d in shape)):  # fmt: skip
        u.refuse(f"an array shape that is not a tuple of up to {MAX_DIMS} sizes in 0..2^63-1")
    return shape


def _reconstruct(u: _RestrictedUnpickler, subtype: Any, shape: Any, code: Any) -> Any:
    """`_reconstruct(ndarray, shape, typecode)`: numpy writes shape (0,) and sends the data with
    the state; any other shape is allocated here, so it is charged first."""
    if subtype is not _NDARRAY:
        u.refuse(f"_reconstruct of {type(subtype).__name__}, not numpy.ndarray")
    shape = _shape(u, shape)
    u.charge(math.prod(shape) * np.dtype(_typecode(u, code)).itemsize, f"an array of {shape}")
    return _MULTIARRAY._reconstruct(np.ndarray, shape, code)


def _frombuffer(u: _RestrictedUnpickler, buf: Any, dtype: Any, shape: Any, *rest: Any) -> Any:
    """numpy's `_frombuffer` (protocol 5): a view of bytes the file holds, counted once per view
    since each view may go on to be copied."""
    array = _FROMBUFFER(buf, dtype, _shape(u, shape), *rest)
    u.charge(array.nbytes, f"an array of {array.shape}")
    return array


try:
    from numpy._core import multiarray as _MULTIARRAY  # numpy >= 2
    from numpy._core import numeric as _NUMERIC
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _MULTIARRAY  # type: ignore[no-redef]
    from numpy.core import numeric as _NUMERIC  # type: ignore[no-redef]
_FROMBUFFER = getattr(_NUMERIC, "_frombuffer")  # noqa: B009 - private, so not in numpy's stubs


def _numpy_globals() -> dict[Name, Any]:
    """The numpy functions and classes an array's pickle names, under each module spelling
    (numpy 1.x wrote `numpy.core.*`, numpy 2 writes `numpy._core.*`)."""
    table: dict[Name, Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _PerFile(_dtype)}
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = _PerFile(_reconstruct)
        table[(f"{package}.numeric", "_frombuffer")] = _PerFile(_frombuffer)
    table[("_codecs", "encode")] = _PerFile(_latin1_encode)
    return table


KNOWN: dict[Name, Any] = _numpy_globals()
NUMPY_ARRAYS: frozenset[Name] = frozenset(KNOWN)  # numpy arrays of any dtype, pickled any way


def _python3_name(module: str, name: str) -> Name:
    """Python 2 spellings (`__builtin__`, `copy_reg`) in Python 3's, as pickle itself maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _Reader:
    """read/readline over a binary file that never ask for more than the `size` bytes it may
    hold: a length field claiming more than what is left is refused before anything is read."""

    def __init__(self, raw: BinaryIO, size: int, what: str, bound: str) -> None:
        self.raw, self.left, self.what, self.bound = raw, size, what, bound
        self.offset = 0

    def read(self, n: int) -> bytes:
        if n > self.left == 0:
            raise UsageError(
                f"{self.what}: {self.bound} ends at byte {self.offset}, before the pickle's "
                "end (STOP); the file is truncated"
            )
        if n > self.left:
            raise UsageError(
                f"{self.what}: at byte {self.offset} the pickle asks for {count_text(n)} bytes, "
                f"but {self.bound} has {count_text(self.left)} left; the file is truncated or "
                "crafted"
            )
        return self._took(self.raw.read(n))

    def readline(self) -> bytes:
        return self._took(self.raw.readline(self.left))

    def _took(self, data: bytes) -> bytes:
        self.left -= len(data)
        self.offset += len(data)
        return data


class _Memo(dict[int, Any]):
    """The memo, whose slots must be stored in order (0, 1, 2, ...; or again), as every pickler
    numbers them: its keys are then 0..n-1, which no file can make collide."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def __setitem__(self, index: int, value: Any) -> None:
        if not 0 <= index <= len(self):
            raise UsageError(
                f"{self.what}: memo index {int_text(index)} out of order (the file has stored "
                f"{len(self)} values, numbered from 0); the file is corrupt or crafted"
            )
        super().__setitem__(index, value)


class _RestrictedUnpickler(pickle._Unpickler):
    """find_class answers from the caller's table only (the pure-Python unpickler calls it for
    every GLOBAL, STACK_GLOBAL and INST), and every opcode is counted and checked as the module
    docstring says, against the `size` bytes the file may hold."""

    # what pickle._Unpickler sets up and typeshed does not declare
    stack: list[Any]
    memo: dict[int, Any]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    readinto: Callable[[bytearray], int]
    pop_mark: Callable[[], list[Any]]

    def __init__(
        self, reader: _Reader, size: int, table: Mapping[Name, Any], encoding: str
    ) -> None:
        super().__init__(reader, encoding=encoding)
        self.memo = _Memo(reader.what)
        self.what, self._table = reader.what, table
        self.size, self.opcodes_left = size, size // BYTES_PER_OPCODE + MIN_OPCODES
        self.allowance = ALLOWANCE * size

    def find_class(self, module: str, name: str) -> Any:
        key = _python3_name(module, name)
        if key not in self._table:
            raise UsageError(
                f"{self.what}: refusing to unpickle {module}.{name} (not an allowed class; this "
                f"file may only hold {self._allowed()}); the file is corrupt or not what it "
                "claims to be"
            )
        found = self._table[key]
        return functools.partial(found.function, self) if isinstance(found, _PerFile) else found

    def _allowed(self) -> str:
        """The allowed globals in a few words: numpy's by their purpose, the others by name."""
        others = sorted(f"{m}.{n}" for m, n in self._table if (m, n) not in NUMPY_ARRAYS)
        kinds = ["plain containers"] + (["numpy arrays"] if NUMPY_ARRAYS & set(self._table) else [])
        return ", ".join(kinds + others)

    def persistent_load(self, pid: Any) -> Any:
        raise UsageError(f"{self.what}: refusing a persistent id in the pickle; not a data file")

    def charge(self, nbytes: int, what: str) -> None:
        """Draw `nbytes` that a call is about to allocate from the file's allowance."""
        self.allowance -= nbytes
        if self.allowance < 0:
            raise UsageError(
                f"{self.what}: {what} needs {count_text(nbytes)} bytes, more than the "
                f"{count_text(ALLOWANCE * self.size)} a file of {count_text(self.size)} bytes "
                "may build; the file is corrupt or crafted"
            )

    def refuse(self, what: str) -> NoReturn:
        raise UsageError(f"{self.what}: refusing {what}; the file is corrupt or not a data file")


Handler = Callable[[_RestrictedUnpickler], None]


def _counted(handler: Handler) -> Handler:
    """`handler`, after taking one opcode from the file's share."""

    def run(u: _RestrictedUnpickler) -> None:
        u.opcodes_left -= 1
        if u.opcodes_left < 0:
            limit = u.size // BYTES_PER_OPCODE + MIN_OPCODES
            u.refuse(
                f"more than {count_text(limit)} opcodes in {count_text(u.size)} bytes (data files "
                f"are array bytes, with at most one opcode per {BYTES_PER_OPCODE} bytes)"
            )
        handler(u)

    return run


def _refused(why: str) -> Handler:
    def run(u: _RestrictedUnpickler) -> None:
        u.refuse(why)

    return run


def _key(u: _RestrictedUnpickler, key: Any) -> Any:
    if type(key) in (str, bytes) or (type(key) is int and -_KEY_INTS <= key < _KEY_INTS):
        return key
    what = f"an integer of {key.bit_length()} bits" if type(key) is int else type(key).__name__
    u.refuse(f"a dict key that is {what} (keys are text, bytes or 32-bit integers)")


def _target(u: _RestrictedUnpickler, kind: type, opcode: str) -> Any:
    target = u.stack[-1] if u.stack else None
    if type(target) is not kind:
        u.refuse(
            f"{opcode} on a {type(target).__name__} object (items go into {kind.__name__}s only)"
        )
    return target


def _setitem(u: _RestrictedUnpickler) -> None:
    value, key = u.stack.pop(), u.stack.pop()
    _target(u, dict, "SETITEM")[_key(u, key)] = value


def _setitems(u: _RestrictedUnpickler) -> None:
    items = u.pop_mark()
    target = _target(u, dict, "SETITEMS")
    for i in range(0, len(items), 2):  # an odd count: IndexError, as in pickle
        target[_key(u, items[i])] = items[i + 1]


def _dict(u: _RestrictedUnpickler) -> None:
    items = u.pop_mark()
    u.append({_key(u, items[i]): items[i + 1] for i in range(0, len(items), 2)})


def _append(u: _RestrictedUnpickler) -> None:
    value = u.stack.pop()
    _target(u, list, "APPEND").append(value)


def _appends(u: _RestrictedUnpickler) -> None:
    items = u.pop_mark()
    _target(u, list, "APPENDS").extend(items)


def _bytearray8(u: _RestrictedUnpickler) -> None:
    """BYTEARRAY8 allocates its length before reading: at most the file's size."""
    (length,) = struct.unpack("<Q", u.read(8))
    if length > u.size:
        u.refuse(f"a bytearray of {count_text(length)} bytes in a file of {count_text(u.size)}")
    buffer = bytearray(length)
    u.readinto(buffer)
    u.append(buffer)


def _build(u: _RestrictedUnpickler) -> None:
    """BUILD, only on an object that sets its own state: a numpy array (its data charged), a
    plain dtype, or a caller's stand-in. Anything else would have its attributes set (on a class:
    for every later load)."""
    state = u.stack.pop()
    target: Any = u.stack[-1] if u.stack else None
    if isinstance(target, type) or getattr(type(target), "__setstate__", None) is None:
        kind = f"the class {target.__name__}" if isinstance(target, type) else type(target).__name__
        u.refuse(f"BUILD (setting the state) of {kind}, which does not set its own state")
    if isinstance(target, np.ndarray):
        data = state[-1] if isinstance(state, tuple) and state else None
        size = len(data) if isinstance(data, (bytes, bytearray, str)) else 0
        u.charge(8 * len(data) if isinstance(data, list) else size, "an array's state")
    if isinstance(target, np.dtype) and not (
        type(state) is tuple and len(state) in (8, 9) and state[2:5] == (None, None, None)
        and state[8:] in ((), (None,))
    ):  # fmt: skip
        u.refuse("a structured numpy dtype (fields, sub-arrays or metadata)")
    target.__setstate__(state)


_OPS = {op.name: op.code.encode("latin-1")[0] for op in pickletools.opcodes}
_REFUSED = {
    "EMPTY_SET": "sets", "ADDITEMS": "sets", "FROZENSET": "sets",
    "EXT1": "extension codes", "EXT2": "extension codes", "EXT4": "extension codes",
}  # fmt: skip
_CHECKED: dict[str, Handler] = {
    "SETITEM": _setitem, "SETITEMS": _setitems, "DICT": _dict, "APPEND": _append,
    "APPENDS": _appends, "BYTEARRAY8": _bytearray8, "BUILD": _build,
}  # fmt: skip
_handlers: dict[int, Any] = dict(pickle._Unpickler.dispatch)
_handlers |= {
    _OPS[n]: _refused(f"{why}, which data files never use") for n, why in _REFUSED.items()
}
_handlers |= {_OPS[name]: handler for name, handler in _CHECKED.items()}
_handlers |= {
    c: _refused(f"byte {c:#04x}, which is no opcode") for c in range(256) if c not in _handlers
}
_dispatch: dict[int, Any] = {code: _counted(handler) for code, handler in _handlers.items()}
_RestrictedUnpickler.dispatch = _dispatch


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
    A refused global or a corrupt or crafted stream is a one-line UsageError naming `what`
    (default: the path), in time and memory linear in the file's size (see the module docstring).
    """
    label = what or (repr(os.fspath(source)) if not isinstance(source, bytes) else "pickle")
    table = {key: _resolve(key, substitutes or {}) for key in allowed}
    try:
        with _open(source) as (stream, size, bound):
            reader = _Reader(stream, size, label, bound)
            return _RestrictedUnpickler(reader, size, table, encoding).load()
    except UsageError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(
            f"{label}: cannot read ({first_line(exc, 200)}); the file is corrupt"
        ) from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, RecursionError, UnicodeError) as exc:  # fmt: skip
        raise UsageError(
            f"{label}: not a valid pickle ({described(exc, 200)}); the file is "
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


@contextlib.contextmanager
def _open(source: str | os.PathLike[str] | bytes) -> Iterator[tuple[BinaryIO, int, str]]:
    """The pickle's stream, the bytes it may hold (for a .gz file: INFLATION times its length,
    at least MIN_INFLATED) and how to say so in a message."""
    if isinstance(source, bytes):
        yield io.BytesIO(source), len(source), "the pickle"
        return
    path = os.fspath(source)
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        if not path.endswith(".gz"):
            yield raw, size, "the file"
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            limit = max(INFLATION * size, MIN_INFLATED)
            bound = f"a .gz file of {count_text(size)} bytes, inflated at most {INFLATION}-fold,"
            yield stream, limit, bound  # type: ignore[misc]  # GzipFile is a binary stream
