"""A user's own data: used whole and split without cutting classes unless asked, per-worker data used
as given and recorded so, every worker's sample count in summary.json; torch Datasets (centralized,
per worker, or behind a DataLoader) accepted, and their random transforms drawn anew for every
training batch, deterministically.

Before this, `data=(train, test)` with 2,400 samples and 16 workers trained on 1,600 of them, two
classes per worker (the built-in demo's samples_per_worker=100 and partition=shards), per-worker
lists were recorded with partition keys that played no part, a Dataset was read once (its random
transforms frozen, and drawn from the caller's global generator), and a DataLoader or a list of
per-worker Datasets was refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import repgossip
from repgossip.cli import main
from repgossip.config import build_config

from launch import assert_same_numbers, summary, torchrun

FEATURES, CLASSES, WORKERS = 8, 4, 16
SMALL = {"rounds": 1, "head_epochs": 1, "batch_size": 32}


def blobs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples of CLASSES Gaussian classes in FEATURES dimensions."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLASSES, FEATURES, generator=gen) * 3
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return centers[y] + torch.randn(n, FEATURES, generator=gen), y


def worker_lists(workers: int = 4) -> tuple[list, list, list, list]:
    """Per-worker tensors of unequal sizes (20, 25, 30, ...)."""
    parts = [blobs(20 + 5 * i, seed=i) for i in range(workers)]
    tests = [blobs(10, seed=100 + i) for i in range(workers)]
    return ([x for x, _ in parts], [y for _, y in parts], [x for x, _ in tests],
            [y for _, y in tests])  # fmt: skip


class Noisy(Dataset):
    """(x + noise, y), the noise drawn from torch's global generator at every read, as
    torchvision's random transforms draw; every value handed out is recorded per index."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noisy: bool = True) -> None:
        self.x, self.y = x, y
        self.transform = self.add_noise if noisy else None
        self.seen: dict[int, list[torch.Tensor]] = {}

    @staticmethod
    def add_noise(x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * torch.randn(x.shape)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i] if self.transform is None else self.transform(self.x[i])
        self.seen.setdefault(i, []).append(x)
        return x, int(self.y[i])

    def reads(self) -> int:
        return sum(len(v) for v in self.seen.values())


# ------------------------------------------------------------------ point 4: what is used, recorded


def test_a_users_centralized_data_is_used_whole_and_split_iid_by_default(tmp_path):
    train, test = blobs(2400), blobs(800, seed=1)
    result = repgossip.run(SMALL, data=(train, test), out=tmp_path / "run")
    counts = result.summary["per_worker_train_samples"]
    assert counts == [150] * WORKERS  # all 2,400 samples, not 16 x 100
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["partition"] == "iid" and saved["samples_per_worker"] is None
    labels = [set(y.tolist()) for y in result.experiment.population.train_y]
    assert all(len(s) == CLASSES for s in labels)  # no worker is cut to two classes
    # the built-in datasets keep the demo's split
    for dataset in ("fmnist", "synthetic"):
        cfg = build_config({"dataset": dataset})
        assert (cfg.partition, cfg.samples_per_worker) == ("shards", 100)


def test_a_partition_the_user_sets_still_applies_to_their_data():
    result = repgossip.run({**SMALL, "workers": 4, "partition": "shards",
                            "samples_per_worker": 50}, data=(blobs(600), blobs(200, 1)))  # fmt: skip
    assert result.summary["per_worker_train_samples"] == [50] * 4
    assert all(len(set(y.tolist())) == 2 for y in result.experiment.population.train_y)


def write_plugin(folder: Path) -> None:
    (folder / "userdata.py").write_text(
        "import torch\n"
        "from test_own_data import blobs, worker_lists\n"
        "def whole():\n    return blobs(2400), blobs(800, seed=1)\n"
        "def per_worker():\n    return worker_lists()\n"
    )


def test_a_dataset_plugin_is_used_whole_and_the_run_says_how_it_was_split(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    write_plugin(tmp_path)
    sets = ["--set", "dataset=userdata:whole", "rounds=1", "head_epochs=1"]
    assert main(["run", *sets, "--out", "loud"]) == 0
    err = capsys.readouterr().err
    assert "data: partition=iid, samples_per_worker=none: 2,400 of 2,400 training samples, " \
           "150 per worker" in err, err  # fmt: skip
    assert (
        json.loads(Path("loud/summary.json").read_text())["per_worker_train_samples"]
        == [150] * WORKERS
    )
    assert main(["run", "--quiet", *sets, "--out", "quiet"]) == 0
    assert "data:" not in capsys.readouterr().err


def test_per_worker_data_is_used_as_given_and_recorded_as_natural(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_plugin(tmp_path)
    sets = ["--set", "dataset=userdata:per_worker", "workers=4", "rounds=2", "head_epochs=1"]
    assert main(["run", *sets, "--out", "whole"]) == 0
    assert "data: one split per worker, as given (partition=natural): 110 training samples, " \
           "20 to 35 per worker" in capsys.readouterr().err  # fmt: skip
    saved = yaml.safe_load(Path("whole/config.yaml").read_text())
    assert saved["partition"] == "natural" and saved["samples_per_worker"] is None
    assert summary(Path("whole"))["per_worker_train_samples"] == [20, 25, 30, 35]
    # the recorded config resumes, and a resumed run equals an uninterrupted one
    assert main(["run", "--quiet", *sets, "rounds=1", "--out", "part"]) == 0
    assert main(["run", "--quiet", "--set", "rounds=2", "--out", "part", "--resume"]) == 0
    assert summary(Path("part")) == summary(Path("whole"))


def test_per_worker_lists_through_the_api_are_recorded_as_natural_and_resume(tmp_path):
    data = worker_lists()
    result = repgossip.run({**SMALL, "rounds": 2}, data=data, out=tmp_path / "whole")
    assert (result.experiment.cfg.partition, result.experiment.cfg.samples_per_worker) == (
        "natural",
        None,
    )
    assert result.summary["per_worker_train_samples"] == [20, 25, 30, 35]
    repgossip.run(SMALL, data=data, out=tmp_path / "part")
    repgossip.run({**SMALL, "rounds": 2}, data=data, out=tmp_path / "part", resume=True)
    assert summary(tmp_path / "part") == summary(tmp_path / "whole")


# ------------------------------------------------------------------ point 5: Datasets


def test_a_dataloader_is_read_through_its_dataset():
    (x, y), (tx, ty) = blobs(400), blobs(200, seed=1)
    keys = {**SMALL, "workers": 4}
    tensors = repgossip.run(keys, data=((x, y), (tx, ty))).summary
    loaders = (DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True),
               DataLoader(TensorDataset(tx, ty), batch_size=3))  # fmt: skip
    through_loaders = repgossip.run(keys, data=loaders).summary
    for s in (tensors, through_loaders):
        s.pop("wall_s")
    assert through_loaders == tensors


def test_per_worker_datasets_equal_per_worker_tensors():
    xs, ys, txs, tys = worker_lists()
    tensors = repgossip.run(SMALL, data=(xs, ys, txs, tys)).summary
    datasets = ([TensorDataset(x, y) for x, y in zip(xs, ys, strict=True)],
                [DataLoader(TensorDataset(x, y)) for x, y in zip(txs, tys, strict=True)])  # fmt: skip
    result = repgossip.run(SMALL, data=datasets)
    assert result.experiment.cfg.partition == "natural"
    for s in (tensors, result.summary):
        s.pop("wall_s")
    assert result.summary == tensors


def noisy_run(train: Noisy, **keys) -> dict:
    result = repgossip.run({**SMALL, "workers": 4, **keys}, data=(train, blobs(200, seed=1)))
    out = dict(result.summary)
    out.pop("wall_s")
    return out


def test_random_transforms_are_drawn_anew_for_every_training_batch():
    train = Noisy(*blobs(400))
    noisy_run(train, rounds=2)
    # head_epochs=1 + body_epochs=1 per round, 2 rounds: 4 training reads after the first read
    assert train.reads() == 400 + 4 * 400
    assert all(len({tuple(v.tolist()) for v in values}) == 5 for values in train.seen.values())


def test_re_read_data_gives_the_same_numbers_whatever_the_global_generator_and_threads(tmp_path):
    x, y = blobs(400)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = noisy_run(Noisy(x, y), rounds=2)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left alone
    torch.manual_seed(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # workers train side by side on two threads
    try:
        assert noisy_run(Noisy(x, y), rounds=2) == first
    finally:
        torch.set_num_threads(threads)
    # resumed: the same numbers as uninterrupted
    keys = {**SMALL, "workers": 4}
    data = lambda: (Noisy(x, y), blobs(200, seed=1))  # noqa: E731
    whole = repgossip.run({**keys, "rounds": 2}, data=data(), out=tmp_path / "whole")
    assert {k: v for k, v in whole.summary.items() if k != "wall_s"} == first
    repgossip.run(keys, data=data(), out=tmp_path / "part")
    repgossip.run({**keys, "rounds": 2}, data=data(), out=tmp_path / "part", resume=True)
    assert summary(tmp_path / "part") == summary(tmp_path / "whole")


@pytest.mark.parametrize(
    ("noisy", "mode", "reread"),
    [
        (True, "auto", True),
        (False, "auto", False),  # transform is None: nothing to draw anew
        (True, "never", False),
        (False, "always", True),
    ],
)
def test_reread_data_decides_which_datasets_are_read_anew(noisy, mode, reread):
    train = Noisy(*blobs(400), noisy=noisy)
    noisy_run(train, reread_data=mode)
    assert train.reads() == 400 + (2 * 400 if reread else 0)


def test_per_worker_datasets_with_transforms_are_read_anew():
    parts = [Noisy(*blobs(40, seed=i)) for i in range(4)]
    tests = [TensorDataset(*blobs(10, seed=10 + i)) for i in range(4)]
    repgossip.run(SMALL, data=(parts, tests))
    assert [p.reads() for p in parts] == [40 + 2 * 40] * 4


class Stream(IterableDataset):
    def __iter__(self):
        return iter([])


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ((DataLoader(Stream()), blobs(10)), "map-style Dataset"),
        (
            ([TensorDataset(*blobs(10))] * 3, [TensorDataset(*blobs(10))] * 2),
            "the test list has 2 Datasets but workers=3",
        ),
    ],
)
def test_datasets_that_cannot_be_read_are_refused_in_one_line(data, needle):
    with pytest.raises(repgossip.UsageError) as info:
        repgossip.run({**SMALL, "workers": 3}, data=data)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_an_unknown_reread_data_is_refused_naming_the_choices():
    with pytest.raises(repgossip.UsageError, match="reread_data 'sometimes'; valid: auto, always"):
        build_config({"reread_data": "sometimes"})


NOISY_PLUGIN = """
import torch
from torch.utils.data import Dataset

class Noisy(Dataset):
    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 4, (n,), generator=gen)
        self.x = torch.randn(4, 8, generator=gen)[self.y] * 3 + torch.randn(n, 8, generator=gen)
        self.transform = lambda x: x + 0.5 * torch.randn(x.shape)
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return self.transform(self.x[i]), int(self.y[i])

def noisy():
    return Noisy(200, 0), Noisy(100, 1)
"""


@pytest.mark.slow
def test_re_read_data_gives_the_same_numbers_on_two_ranks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "noisydata.py").write_text(NOISY_PLUGIN)
    sets = ["dataset=noisydata:noisy", "workers=4", "rounds=2", "head_epochs=1"]
    assert main(["run", "--quiet", "--set", *sets, "--out", "sim"]) == 0
    done = torchrun(2, tmp_path / "dist", *sets, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_numbers(summary(tmp_path / "dist"), summary(tmp_path / "sim"))
