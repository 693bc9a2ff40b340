"""CIFAR-10/100 from tiny files in the site's exact formats (python and binary versions), and the
restricted unpickler they are read through: a planted malicious pickle is refused unexecuted."""

from __future__ import annotations

import copyreg
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from repgossip.config import build_config
from repgossip.data import cifar
from repgossip.data.datasets import DATASETS, load_federation
from repgossip.data.unpickle import NUMPY_ARRAYS, load_restricted
from repgossip.errors import UsageError

PER_BATCH = 6  # images per file: enough to partition over a few workers, quick to write


def py2_pickle(data: np.ndarray, labels: list[int], label_key: str) -> bytes:
    """A CIFAR batch pickled the way Python 2's cPickle wrote the originals: protocol 2, keys and
    the pixel buffer as Python 2 str (SHORT_BINSTRING / BINSTRING), `numpy.core.multiarray`."""

    def text(s: bytes) -> bytes:
        return (b"U" + bytes([len(s)]) if len(s) < 256 else b"T" + struct.pack("<I", len(s))) + s

    def integer(i: int) -> bytes:
        return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)

    shape = b"(" + b"".join(integer(d) for d in data.shape) + b"t"
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + integer(0) + b"\x85"
        + text(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
        + b"(" + integer(1) + shape + b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1)
        + b"\x87R(" + integer(3) + text(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0)
        + b"tb\x89" + text(data.tobytes()) + b"tb"  # BUILD the dtype, then the array
    )  # fmt: skip
    items = b"]" + b"(" + b"".join(integer(v) for v in labels) + b"e"
    body = text(b"data") + array + text(label_key.encode()) + items
    return b"\x80\x02}(" + body + text(b"batch_label") + text(b"training batch 1 of 5") + b"u."


def py3_pickle(data: np.ndarray, labels: list[int], label_key: str) -> bytes:
    """The same dict pickled by today's Python and numpy at protocol 2 (bytes via _codecs)."""
    return pickle.dumps({b"data": data, label_key.encode(): labels}, protocol=2)


def write_cifar(root: Path, name: str, binary: bool, style: str = "py2") -> dict:
    """Tiny files of dataset `name` in its standard folder under `root`; returns the arrays."""
    spec = cifar.CIFAR[name]
    rng = np.random.default_rng(len(name) + binary)
    folder = root / (spec.bin_folder if binary else spec.py_folder)
    folder.mkdir(parents=True)
    written: dict[str, list] = {"train": [], "test": []}
    names = spec.bin_train + spec.bin_test if binary else spec.py_train + spec.py_test
    for i, file in enumerate(names):
        data = rng.integers(0, 256, (PER_BATCH, cifar.PIXELS), dtype=np.uint8)
        labels = [spec.classes - 1, *rng.integers(0, 3, PER_BATCH - 1).tolist()]  # shared
        key = spec.py_label_key.decode()
        if binary:
            coarse = rng.integers(0, 20, PER_BATCH, dtype=np.uint8)[:, None]
            label_cols = np.array(labels, np.uint8)[:, None]
            prefix = np.hstack([coarse, label_cols]) if spec.label_bytes == 2 else label_cols
            (folder / file).write_bytes(np.hstack([prefix, data]).tobytes())
        else:
            writer = py2_pickle if style == "py2" else py3_pickle
            (folder / file).write_bytes(writer(data, labels, key))
        split = "train" if i < len(names) - 1 else "test"
        written[split].append((data, labels))
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize(("binary", "style"), [(True, ""), (False, "py2"), (False, "py3")])
def test_load_both_versions(tmp_path, name, binary, style):
    written = write_cifar(tmp_path, name, binary, style)
    spec = cifar.CIFAR[name]
    n_train = PER_BATCH * (len(spec.py_train))
    for data_dir in (tmp_path, tmp_path / (spec.bin_folder if binary else spec.py_folder)):
        data = cifar.load_cifar(name, str(data_dir))  # the parent or the folder itself
        assert data.x_train.shape == (n_train, 3, 32, 32) and data.x_test.shape == (6, 3, 32, 32)
        assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
        assert data.num_classes == spec.classes and data.input_shape == (3, 32, 32)
        assert data.y_train.tolist() == sum((lab for _, lab in written["train"]), [])
        assert data.y_test.tolist() == written["test"][0][1]
        raw = written["test"][0][0].reshape(-1, 3, 32, 32) / 255.0
        mean, std = (np.array(v)[:, None, None] for v in (spec.mean, spec.std))
        np.testing.assert_allclose(data.x_test, (raw - mean) / std, rtol=1e-5, atol=1e-5)


def test_real_style_pickle_is_what_python2_wrote(tmp_path):
    """The hand-assembled file names numpy.core (numpy 1.x, Python 2) and holds str keys."""
    blob = py2_pickle(np.zeros((1, 3072), np.uint8), [3], "labels")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob and b"_codecs" not in blob
    loaded = load_restricted(blob, NUMPY_ARRAYS, encoding="bytes")
    assert set(loaded) == {b"data", b"labels", b"batch_label"} and loaded[b"labels"] == [3]


class Boom:
    """What an attacker pickles: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": Boom(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(UsageError) as info:
        load_restricted(blob, NUMPY_ARRAYS, encoding="bytes")
    message = str(info.value)
    assert "system" in message and "refusing" in message and "\n" not in message
    assert not marker.exists()


def test_malicious_data_batch_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10", binary=False)
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Boom(marker), b"labels": [0]}, protocol=4))
    with pytest.raises(UsageError) as info:
        cifar.load_cifar("cifar10", str(tmp_path))
    assert "data_batch_1" in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(Vprint(1)\ntR.",  # GLOBAL eval
        b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94\x93.",  # STACK_GLOBAL exec
        b"(cos\nsystem\nVecho hi\no.",  # INST/OBJ
        b"\x80\x02\x82\xf0Vecho hi\n\x85R.",  # EXT1: a registered extension code
    ],
)
def test_every_route_to_a_global_is_refused(payload):
    copyreg.add_extension("os", "system", 0xF0)
    try:
        with pytest.raises(UsageError, match="refusing"):
            load_restricted(payload, NUMPY_ARRAYS)
    finally:
        copyreg.remove_extension("os", "system", 0xF0)


def test_codecs_encode_only_latin1():
    blob = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00hiX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(UsageError, match="codec 'zlib'"):
        load_restricted(blob, NUMPY_ARRAYS)
    ok = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00hiX\x06\x00\x00\x00latin1\x86R."
    assert load_restricted(ok, NUMPY_ARRAYS) == b"hi"


@pytest.mark.parametrize("blob", [b"", b"\x80\x02}q\x00(", b"not a pickle at all"])
def test_corrupt_pickle_is_one_line(blob):
    with pytest.raises(UsageError) as info:
        load_restricted(blob, NUMPY_ARRAYS, what="batch")
    assert str(info.value).startswith("batch:") and "\n" not in str(info.value)


def test_missing_files_name_data_dir_and_files(tmp_path):
    write_cifar(tmp_path, "cifar10", binary=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UsageError) as info:
        cifar.load_cifar("cifar10", str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "data_batch_1..data_batch_5" in message
    assert "test_batch" in message and "cifar-10-batches-bin" in message and "\n" not in message
    with pytest.raises(UsageError, match="needs data_dir"):
        cifar.load_cifar("cifar100", None)
    with pytest.raises(UsageError, match="train.bin"):
        cifar.load_cifar("cifar100", str(tmp_path))


def test_truncated_binary_and_bad_labels(tmp_path):
    write_cifar(tmp_path, "cifar100", binary=True)
    path = tmp_path / "cifar-100-binary" / "test.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UsageError, match="3074-byte"):
        cifar.load_cifar("cifar100", str(tmp_path))
    write_cifar(tmp_path / "b", "cifar10", binary=False)
    bad = py2_pickle(np.zeros((2, 3072), np.uint8), [1, 10], "labels")
    (tmp_path / "b" / "cifar-10-batches-py" / "test_batch").write_bytes(bad)
    with pytest.raises(UsageError, match="label 10 out of range"):
        cifar.load_cifar("cifar10", str(tmp_path / "b"))


def test_wrong_payload_shape(tmp_path):
    write_cifar(tmp_path, "cifar10", binary=False)
    bad = py3_pickle(np.zeros((2, 100), np.uint8), [1, 2], "labels")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(bad)
    with pytest.raises(UsageError, match="uint8 array"):
        cifar.load_cifar("cifar10", str(tmp_path))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_registered_and_partitioned(tmp_path, name):
    write_cifar(tmp_path, name, binary=True)
    spec = DATASETS.get(name)
    assert spec.default_model == {"cifar10": "vgg11", "cifar100": "resnet18"}[name]
    cfg = build_config(
        {
            "dataset": name,
            "data_dir": str(tmp_path),
            "workers": 3,
            "partition": "iid",
            "samples_per_worker": None,
            "model": "mlp",
        }  # fmt: skip
    )
    fed = load_federation(cfg)
    assert fed.input_shape == (3, 32, 32) and len(fed.train_x) == 3
    assert fed.num_classes == cifar.CIFAR[name].classes
    assert all(x.dtype.is_floating_point and x.shape[1:] == (3, 32, 32) for x in fed.train_x)
    full = cifar.load_cifar(name, str(tmp_path))
    first = fed.train_x[0][0].numpy()
    assert any(np.allclose(first, img, atol=1e-6) for img in full.x_train)
