"""Crafted CIFAR and HAPT pickles, written opcode by opcode: each ends in one line on stderr and exit
code 2 naming the file and what is wrong, within seconds and with 1 GiB of address space to spare
(a MemoryError, a hang or a traceback fails the test); random mutations of a valid CIFAR batch
either load or are refused in one line; and the memory a file may make the loader use is bounded by
its size (data/unpickle.py's docstring gives the bounds)."""

from __future__ import annotations

import copyreg
import gzip
import json
import pickle
import pickletools
import struct
import subprocess
import sys
import types
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cifar import py2_pickle, py3_pickle, write_cifar
from test_har import COLUMNS, pickled_with_fake_pandas, recording, write_fake_hapt

from repgossip.data import cifar, har
from repgossip.data.unpickle import NUMPY_ARRAYS, load_restricted
from repgossip.errors import UsageError

OP = {op.name: op.code.encode("latin-1") for op in pickletools.opcodes}
P2, P4, P5 = OP["PROTO"] + b"\x02", OP["PROTO"] + b"\x04", OP["PROTO"] + b"\x05"
RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\n"
NDARRAY, DTYPE = b"cnumpy\nndarray\n", b"cnumpy\ndtype\n"


def u8(n: int) -> bytes:
    return struct.pack("<Q", n)


def u4(n: int) -> bytes:
    return struct.pack("<I", n)


def i4(n: int) -> bytes:
    return struct.pack("<i", n)


def long1(n: int) -> bytes:
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return OP["LONG1"] + bytes([len(data)]) + data


def text(s: bytes) -> bytes:
    """A Python 2 str (bytes under encoding='bytes'), as CIFAR's files hold their keys."""
    return OP["SHORT_BINSTRING"] + bytes([len(s)]) + s


def call(function: bytes, *args: bytes) -> bytes:
    """function(*args), each given as the opcodes that push it."""
    return function + OP["MARK"] + b"".join(args) + OP["TUPLE"] + OP["REDUCE"]


def one_tuple(item: bytes) -> bytes:
    return item + OP["TUPLE1"]


def length_of(opcode: str, n: int, protocol: bytes = P4) -> bytes:
    """`opcode` claiming an argument of n bytes, in a file of a dozen."""
    field = i4 if opcode in ("BINSTRING", "LONG4") else u8
    return protocol + OP[opcode] + field(n) + b"xy."


def memo_index(n: int) -> bytes:
    """None, stored in memo slot n: the first slot a file stores is 0."""
    return P2 + OP["NONE"] + OP["LONG_BINPUT"] + u4(n) + OP["STOP"]


def array_of(shape: bytes, dtype: bytes, data: bytes) -> bytes:
    """_reconstruct(ndarray, (0,), 'b') then BUILD with (1, shape, dtype, False, data): how
    numpy pickles an array; each part is the opcodes that push it."""
    start = RECONSTRUCT + NDARRAY + OP["BININT1"] + b"\x00" + OP["TUPLE1"] + text(b"b")
    state = OP["MARK"] + OP["BININT1"] + b"\x01" + shape + dtype + OP["NEWFALSE"] + data
    return start + OP["TUPLE3"] + OP["REDUCE"] + state + OP["TUPLE"] + OP["BUILD"]


def dtype_of(code: bytes, order: bytes) -> bytes:
    """dtype(code, 0, 1) with the state (3, order, None, None, None, -1, -1, 0)."""
    state = (OP["MARK"] + OP["BININT1"] + b"\x03" + text(order) + b"NNN" + OP["BININT"]
             + i4(-1) + OP["BININT"] + i4(-1)
             + OP["BININT1"] + b"\x00" + OP["TUPLE"])  # fmt: skip
    call = DTYPE + text(code) + b"K\x00K\x01" + OP["TUPLE3"] + OP["REDUCE"]
    return call + state + OP["BUILD"]


def copies_of_one_buffer(count: int, size: int) -> bytes:
    """`count` byte-swapped arrays built from one memo'd buffer of `size` bytes: numpy copies the
    buffer for each, so a file of `size` bytes asked for count * size of memory."""
    head = P2 + OP["BINSTRING"] + i4(size) + bytes(size) + OP["BINPUT"] + b"\x00"
    head += dtype_of(b"u2", b">") + OP["BINPUT"] + b"\x01" + OP["POP"] + OP["POP"]
    shape = OP["BININT"] + i4(size // 2) + OP["TUPLE1"]
    one = array_of(shape, OP["BINGET"] + b"\x01", OP["BINGET"] + b"\x00")
    return head + OP["EMPTY_LIST"] + (one + OP["APPEND"]) * count + OP["STOP"]


def colliding_keys(count: int) -> bytes:
    """A dict of `count` ints that all hash alike (multiples of 2^61 - 1): quadratic to build.
    3 MiB of bytes first, so that the file's opcode share does not stop it sooner."""
    padding = OP["BINBYTES"] + u4(3 * 2**20) + bytes(3 * 2**20) + OP["POP"]
    keys = b"".join(long1(k * (2**61 - 1)) + OP["NONE"] for k in range(1, count + 1))
    return P4 + padding + OP["EMPTY_DICT"] + OP["MARK"] + keys + OP["SETITEMS"] + OP["STOP"]


def rewrites_of_one_array(count: int, size: int) -> bytes:
    """One array of `size` bytes, then `count` SETITEMs `array[()] = 0`, each writing all of it."""
    shape = OP["BININT"] + i4(size) + OP["TUPLE1"]
    build = RECONSTRUCT + NDARRAY + shape + text(b"b") + OP["TUPLE3"] + OP["REDUCE"]
    rewrite = OP["EMPTY_TUPLE"] + OP["BININT1"] + b"\x00" + OP["SETITEM"]
    return P2 + build + rewrite * count + OP["STOP"]


def cifar_batch(labels: list[int]) -> bytes:
    return pickle.dumps({b"data": np.zeros((len(labels), 3072), np.uint8), b"labels": labels}, 2)


GIB_OF_ZEROS = 18 * 64 * 2**20  # bytes inflated from ~1 MiB of gzip


def gzip_bomb() -> bytes:
    """HAPT.pkl.gz whose pickle holds 1.1 GiB of zeros (BINBYTES), gzipped to ~1 MiB: gzip
    members concatenate, so one member of 64 MiB of zeros is compressed once and repeated."""
    zeros = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = zeros.compress(bytes(64 * 2**20)) + zeros.flush()
    head = gzip.compress(OP["PROTO"] + b"\x03" + OP["BINBYTES"] + u4(GIB_OF_ZEROS))
    return head + member * 18 + gzip.compress(OP["STOP"])


def hapt_shared_tables(copies: int) -> bytes:
    """Valid tables, but user 1 lists one table `copies` times (a BINGET each)."""
    rng = np.random.default_rng(0)

    def build(mods: dict[str, types.ModuleType]) -> dict:
        frame = mods["pandas.core.frame"].DataFrame
        return {1: [frame(recording(rng, 1))] * copies, 2: [frame(recording(rng, 2))]}

    return gzip.compress(pickled_with_fake_pandas(build))


def hapt_wide_shared_layout(tables: int, columns: int) -> bytes:
    """`tables` DataFrames with their own BlockManager each, all sharing one memo'd state of
    `columns` one-row columns: each manager would be given a view per column."""

    def build(mods: dict[str, types.ModuleType]) -> dict:
        base, ranged = mods["pandas.core.indexes.base"], mods["pandas.core.indexes.range"]
        names = np.array([*COLUMNS, *(f"x{i}" for i in range(columns))], dtype=object)
        values = np.zeros((len(names), 1))  # not empty: Python 3 pickles b"" as bytes()
        axes = [base.Index(names), ranged.RangeIndex(0)]
        layout = {"axes": axes, "blocks": [{"values": values, "mgr_locs": slice(0, len(names))}]}
        state = (axes, [values], [base.Index(names)], {"0.14.1": layout})

        class BlockManager:
            def __reduce__(self) -> tuple:
                return copyreg._reconstructor, (BlockManager, object, None), state

        class DataFrame:
            def __reduce__(self) -> tuple:
                manager = BlockManager()
                return copyreg._reconstructor, (DataFrame, object, None), {"_data": manager}

        for cls, module in ((BlockManager, "pandas.core.internals.managers"),
                            (DataFrame, "pandas.core.frame")):  # fmt: skip
            cls.__module__, cls.__qualname__ = module, cls.__name__
            setattr(mods[module], cls.__name__, cls)
        return {1: [DataFrame() for _ in range(tables)]}

    return gzip.compress(pickled_with_fake_pandas(build))


BIG = long1(2**40)
# name: (dataset, the file's bytes, what the one line must say besides the file's name)
HOSTILE: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "memo-index-2^28": ("cifar10", lambda: memo_index(2**28), "memo index 268435456"),
    "binbytes8-2^60": ("cifar10", lambda: length_of("BINBYTES8", 2**60), "asks for"),
    "binunicode8-2^60": ("cifar10", lambda: length_of("BINUNICODE8", 2**60), "asks for"),
    "frame-2^60": ("cifar10", lambda: length_of("FRAME", 2**60), "asks for"),
    "bytearray8-2^40": ("cifar10", lambda: length_of("BYTEARRAY8", 2**40, P5), "bytearray"),
    "binstring-2^31": ("cifar10", lambda: length_of("BINSTRING", 2**31 - 1, P2), "asks for"),
    "long4-2^31": ("cifar10", lambda: length_of("LONG4", 2**31 - 1, P2), "asks for"),
    "reconstruct-2^40": (
        "cifar10",
        lambda: P2 + call(RECONSTRUCT, NDARRAY, one_tuple(BIG), text(b"b")) + b".",
        "1,099,511,627,776 bytes",
    ),
    "ndarray-called": ("cifar10", lambda: P2 + call(NDARRAY, one_tuple(BIG)) + b".", "ndarray"),
    "ndarray-newobj": (
        "cifar10",
        lambda: P2 + NDARRAY + one_tuple(one_tuple(BIG)) + OP["NEWOBJ"] + b".",
        "not a valid pickle",
    ),
    "label-2^70": ("cifar10", lambda: cifar_batch([3, 2**70]), "label 1180591620717411303424"),
    "one-buffer-2000-copies": ("cifar10", lambda: copies_of_one_buffer(2000, 2**20), "state"),
    "4-MiB-of-empty-dicts": ("cifar10", lambda: P2 + b"}" * (4 * 2**20) + b".", "opcodes"),
    "colliding-dict-keys": ("cifar10", lambda: colliding_keys(45_000), "dict key"),
    "rewrite-one-array": ("cifar10", lambda: rewrites_of_one_array(300_000, 2**21), "SETITEM"),
    "gzip-bomb": ("hapt", gzip_bomb, "inflated at most 16-fold"),
    "one-table-5000-times": ("hapt", lambda: hapt_shared_tables(5000), "reuses rows"),
    "wide-layout-shared": ("hapt", lambda: hapt_wide_shared_layout(2000, 5000), "16 columns"),
}

_LIMITED = """
import contextlib, io, json, resource, sys, time, tracemalloc
from repgossip.cli import main
# 1 GiB of address space beyond what the imports mapped (a CUDA build of torch maps gigabytes)
mapped = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
limit = mapped * 1024 + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for name, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except BaseException as exc:  # a MemoryError: the test fails on it, with its name
        code = f"{type(exc).__name__}: {str(exc)[:200]}"
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps([name, code, err.getvalue()[-2000:], seconds, peak]), flush=True)
"""


def _data_dir(root: Path, dataset: str, blob: bytes) -> Path:
    """A data_dir whose first file the loader reads is `blob` (CIFAR: data_batch_1)."""
    if dataset == "hapt":
        root.mkdir(parents=True)
        (root / "HAPT.pkl.gz").write_bytes(blob)
    else:
        write_cifar(root, dataset, binary=False)
        (root / cifar.CIFAR[dataset].py_folder / "data_batch_1").write_bytes(blob)
    return root


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """`repgossip run` on each hostile file, in one subprocess with 1 GiB of address space to
    spare: name -> [exit code (or the exception that escaped), stderr, seconds, peak bytes]."""
    root = tmp_path_factory.mktemp("hostile")
    argvs = []
    for name, (dataset, make, _) in HOSTILE.items():
        data_dir = _data_dir(root / name, dataset, make())
        argvs.append([name, ["run", "--quiet", "--set", f"dataset={dataset}",
                             f"data_dir={data_dir}", "rounds=1", "--out", str(root / "out")]])  # fmt: skip
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LIMITED, json.dumps(argvs)],
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        out = proc.stdout
    except subprocess.TimeoutExpired as exc:  # a hang: the cases that finished still count
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
    return {line[0]: line[1:] for line in map(json.loads, out.splitlines())}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_pickle_is_one_line_in_seconds_and_bounded_memory(hostile_runs, name):
    assert name in hostile_runs, f"{name}: the process died or hung (ran: {list(hostile_runs)})"
    code, err, seconds, peak = hostile_runs[name]
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    file = "HAPT.pkl.gz" if HOSTILE[name][0] == "hapt" else "data_batch_1"
    assert file in lines[0] and HOSTILE[name][2] in lines[0], lines[0]
    assert seconds < 10, f"{seconds:.1f} s"
    assert peak < 96 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_extension_codes_are_refused_even_when_cached(tmp_path):
    """EXT1 looks in copyreg's cache before find_class: whatever another unpickler in the process
    resolved under that code would be handed to the file."""
    called = []
    copyreg._extension_cache[0xF1] = lambda: called.append(1)  # type: ignore[attr-defined]
    try:
        with pytest.raises(UsageError, match="extension codes") as info:
            load_restricted(P2 + OP["EXT1"] + b"\xf1" + b")R.", NUMPY_ARRAYS, what="batch")
    finally:
        del copyreg._extension_cache[0xF1]  # type: ignore[attr-defined]
    assert not called and str(info.value).startswith("batch:")


def test_build_on_a_stand_in_class_cannot_change_it(tmp_path):
    """BUILD on a class would set its attributes: here DataFrame's stand-in's __setstate__, which
    every later HAPT load in the process would then call. Refused; the next load still works."""
    saved = {cls: dict(vars(cls)) for cls in (har._Frame, har._BlockManager)}
    blob = (P2 + b"cpandas.core.frame\nDataFrame\n" + b"N}" + text(b"__setstate__")
            + b"c__builtin__\nobject\n" + OP["SETITEM"] + OP["TUPLE2"] + OP["BUILD"] + b".")  # fmt: skip
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "HAPT.pkl.gz").write_bytes(gzip.compress(blob))
    try:
        with pytest.raises(UsageError, match="BUILD") as info:
            har.read_recordings(tmp_path / "bad" / "HAPT.pkl.gz")
        assert "HAPT.pkl.gz" in str(info.value) and "\n" not in str(info.value)
        write_fake_hapt(tmp_path / "good" / "HAPT.pkl.gz", users=2)
        assert len(har.read_recordings(tmp_path / "good" / "HAPT.pkl.gz")) == 2
    finally:
        for cls, attributes in saved.items():
            for key in set(vars(cls)) - set(attributes):
                delattr(cls, key)
            for key, value in attributes.items():
                if key not in ("__dict__", "__weakref__") and vars(cls).get(key) is not value:
                    setattr(cls, key, value)


def test_hapt_table_never_given_its_state_is_one_line(tmp_path):
    """A DataFrame made by _reconstructor and never BUILT has no columns: before, reading it
    was an AttributeError with a traceback."""
    frame = call(b"ccopy_reg\n_reconstructor\n", b"cpandas.core.frame\nDataFrame\n",
                 b"c__builtin__\nobject\n", OP["NONE"])  # fmt: skip
    blob = P2 + OP["EMPTY_DICT"] + OP["BININT1"] + b"\x01" + OP["EMPTY_LIST"] + frame
    path = tmp_path / "HAPT.pkl.gz"
    path.write_bytes(gzip.compress(blob + OP["APPEND"] + OP["SETITEM"] + OP["STOP"]))
    with pytest.raises(UsageError, match="user 1 must have a list of tables") as info:
        har.read_recordings(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_hapt_label_that_is_no_activity_id_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    columns = recording(rng, 1)
    columns["label"] = columns["label"].copy()
    columns["label"][500] = 99

    def build(mods: dict[str, types.ModuleType]) -> dict:
        return {1: [mods["pandas.core.frame"].DataFrame(columns)]}

    path = tmp_path / "HAPT.pkl.gz"
    path.write_bytes(gzip.compress(pickled_with_fake_pandas(build)))
    with pytest.raises(UsageError, match=r"label 99 is not a HAPT activity id \(1..12"):
        har.read_recordings(path)


@pytest.mark.parametrize("labels", [[2**70], [-(2**80)], [10], [-1]])
def test_cifar_labels_out_of_range_are_one_line(tmp_path, labels):
    path = tmp_path / "batch"
    path.write_bytes(cifar_batch(labels))
    with pytest.raises(UsageError, match="out of range; CIFAR-10 has 0..9") as info:
        cifar._read_python(path, cifar.CIFAR["cifar10"])
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_real_and_tiny_files_stay_within_the_opcode_share(tmp_path):
    """The bounds leave room for what real writers produce: CIFAR's py2 and py3 files, the
    HAPT stand-in file (the installed HAPT.pkl.gz is loaded by test_har.py::test_real_package)."""
    data = np.zeros((1000, 3072), np.uint8)
    for blob in (py2_pickle(data, [7] * 1000, "labels"), py3_pickle(data, [7] * 1000, "labels")):
        path = tmp_path / "batch"
        path.write_bytes(blob)
        assert cifar._read_python(path, cifar.CIFAR["cifar10"])[1].tolist() == [7] * 1000
    write_fake_hapt(tmp_path / "HAPT.pkl.gz", users=3)
    assert len(har.read_recordings(tmp_path / "HAPT.pkl.gz")) == 3


# ------------------------------------------------------------------ fuzzing a valid batch

SEED_FILES = {
    "py2": py2_pickle(np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), [1, 9], "labels"),
    "py3": py3_pickle(np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), [1, 9], "labels"),
}


def _structure(blob: bytes) -> list[int]:
    """Offsets of the opcodes and their short arguments: where mutations change the program
    rather than pixel values (payloads over 16 bytes skipped)."""
    offsets = []
    for op, arg, pos in pickletools.genops(blob):
        size = len(arg) if isinstance(arg, (bytes, str)) else 0
        offsets += range(pos, pos + 1 + (9 if size > 16 else 1 + op.arg.n if op.arg else 0))
    return sorted({o for o in offsets if o < len(blob)})


STRUCTURE = {name: _structure(blob) for name, blob in SEED_FILES.items()}
INTERESTING = [b"\xff", b"\xff\xff\xff\x7f", b"\xff" * 8, b"\x00", b"\x80", b"(", b"}", b"b", b"R",
               b"\x8e", b"\x95", b"r", b"h", b"\x94", b"s", b"a", b"t", b"."]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed file with a few overwrites, insertions, deletions or a truncation, mostly at its
    opcodes."""
    seed = draw(st.sampled_from(sorted(SEED_FILES)))
    blob = bytearray(SEED_FILES[seed])
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.one_of(st.sampled_from(STRUCTURE[seed]), st.integers(0, len(blob))))
        piece = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=9)))
        kind = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate"]))
        if kind == "overwrite":
            blob[where : where + len(piece)] = piece
        elif kind == "insert":
            blob[where:where] = piece
        elif kind == "delete":
            del blob[where : where + len(piece)]
        else:
            del blob[where:]
    return bytes(blob)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=mutated())
def test_mutated_cifar_batches_load_or_are_one_line(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "data_batch_1"
    path.write_bytes(blob)
    try:
        data, labels = cifar._read_python(path, cifar.CIFAR["cifar10"])
    except UsageError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc), str(exc)
    else:
        assert data.shape[1] == 3072 and len(labels) == len(data) and labels.max() <= 9


def test_the_fuzz_seeds_load():
    for blob in SEED_FILES.values():
        assert load_restricted(blob, NUMPY_ARRAYS, encoding="bytes")[b"labels"] == [1, 9]


def test_what_a_file_makes_the_loader_allocate_is_bounded_by_its_size():
    """Per opcode at most a few hundred bytes of objects, within the file's opcode share: a file
    of only the costliest small opcodes stays within ~10x its size plus the 64K-opcode floor."""
    import tracemalloc

    for filler in (b"}", b"]", b"(", b"N" + OP["MEMOIZE"]):
        blob = P4 + filler * (2**20 // len(filler)) + b"."
        tracemalloc.start()
        try:
            with pytest.raises(UsageError):
                load_restricted(blob, NUMPY_ARRAYS)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 * len(blob) + 24 * 2**20, (filler, peak)
