"""Nothing lost, nothing silently wrong: --force, resumes and checkpoints (each test reproduced a
defect of the previous version: results deleted before validation, folders that were not ours
removed, checkpoints resumed under another config or after corruption, two writers at once, torn
logs, a full disk, an interrupt before the first checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import repgossip.runner as runner
from repgossip import faults
from repgossip.cli import main
from repgossip.runfolder import CHECKPOINT_FILE, METRICS_FILE, checkpoint_bytes, locked

T = ["dataset=synthetic", "workers=4", "rounds=3", "samples_per_worker=20"]


def run(out: Path, *sets: str, flags: tuple[str, ...] = ()) -> int:
    return main(["run", "--quiet", "--set", *T, *sets, "--out", str(out), *flags])


def one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(n in err for n in needles), err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def test_force_validates_everything_before_it_replaces_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out) == 0
    before = snapshot(out)
    assert run(out, "topology=/nope.txt", flags=("--force",)) == 2  # known only when built
    one_line(capsys, "/nope.txt")
    assert snapshot(out) == before


def test_a_run_that_fails_before_its_first_record_puts_the_replaced_folder_back(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert run(out) == 0
    before = snapshot(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "evaluate", interrupted)
    assert run(out, "seed=5", flags=("--force",)) == 130
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left aside


@pytest.mark.parametrize("where", [".", ".."])
def test_force_never_removes_a_folder_that_is_not_ours(tmp_path, capsys, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert run(Path(where), flags=("--force",)) == 2
    one_line(capsys, "will not replace")
    assert (work / "notes.txt").read_text() == "mine"


def test_force_never_removes_the_working_directory_even_if_it_is_a_run(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert run(out) == 0
    monkeypatch.chdir(out)
    assert run(Path("."), flags=("--force",)) == 2
    one_line(capsys, "working directory")
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda text: text.replace("seed: 0", "seed: 7"), "seed=0"),
        (lambda text: text.replace("lr: 0.01", "lr: 0.02"), "lr=0.01"),
    ],
)
def test_an_edited_config_yaml_does_not_resume_silently(tmp_path, capsys, edit, needle):
    out = tmp_path / "run"
    assert run(out, "rounds=2") == 0
    config = out / "config.yaml"
    config.write_text(edit(config.read_text()))
    assert run(out, "rounds=3", flags=("--resume",)) == 2
    one_line(capsys, needle, "another run")


def test_another_runs_checkpoint_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(a, "rounds=2") == 0
    assert run(b, "rounds=2", "seed=1") == 0
    (a / CHECKPOINT_FILE).write_bytes((b / CHECKPOINT_FILE).read_bytes())
    assert run(a, "rounds=3", flags=("--resume",)) == 2
    one_line(capsys, "seed=1")


def test_a_flipped_bit_in_the_checkpoint_data_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out, "rounds=2") == 0
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    bits = state["params"].view(torch.int32)
    bits[1, 3] ^= 1  # the lowest bit of one parameter
    assert not torch.equal(state["params"], torch.load(out / CHECKPOINT_FILE)["params"])
    torch.save(state, out / CHECKPOINT_FILE)
    assert run(out, "rounds=3", flags=("--resume",)) == 2
    one_line(capsys, "corrupt")


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [("round", -1, "'round' must be a round number >= 0"), ("wall_s", "x", "'wall_s'"),
     ("params", [1.0], "'params' must be a tensor"), ("rows", {"a": 1}, "'rows' must hold")],
)  # fmt: skip
def test_a_checkpoint_with_wrong_fields_is_one_line_and_keeps_the_log(
    tmp_path, capsys, field, value, needle
):
    out = tmp_path / "run"
    assert run(out, "rounds=2") == 0
    log = (out / METRICS_FILE).read_text()
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    state[field] = value
    torch.save(state, out / CHECKPOINT_FILE)
    assert run(out, "rounds=3", flags=("--resume",)) == 2
    one_line(capsys, needle)
    assert (out / METRICS_FILE).read_text() == log


def test_a_second_writer_of_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out, "rounds=2") == 0
    log = (out / METRICS_FILE).read_text()
    with locked(out):  # as a first `--resume` holds it while it runs
        assert run(out, "rounds=3", flags=("--resume",)) == 2
    one_line(capsys, "another repgossip process")
    assert (out / METRICS_FILE).read_text() == log


def test_a_torn_last_line_of_the_log_is_cut_on_resume(tmp_path, capsys):
    whole, out = tmp_path / "whole", tmp_path / "run"
    assert run(whole) == 0
    assert run(out, "rounds=2") == 0
    with open(out / METRICS_FILE, "a") as handle:
        handle.write('{"round": 3, "train_lo')  # a full disk cut this record short
    assert run(out, flags=("--resume",)) == 0
    assert without_time(metrics(out)) == without_time(metrics(whole))


def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes(
    tmp_path, capsys, monkeypatch
):
    whole, out = tmp_path / "whole", tmp_path / "run"
    assert run(whole, "checkpoint_every=1") == 0
    monkeypatch.setenv(faults.FAULT_ENV, "checkpoint.pt:2:enospc")
    monkeypatch.setattr(faults, "_writes", faults.Counter())
    assert run(out, "checkpoint_every=1") == 5
    one_line(capsys, "No space left on device", "last good checkpoint is kept")
    assert not list(out.glob("*.tmp"))
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["round"] == 1
    monkeypatch.delenv(faults.FAULT_ENV)
    assert run(out, "checkpoint_every=1", flags=("--resume",)) == 0
    assert without_time(metrics(out)) == without_time(metrics(whole))


def test_an_interrupt_before_the_first_checkpoint_resumes_from_round_0_or_reruns(
    tmp_path, capsys, monkeypatch
):
    whole, out = tmp_path / "whole", tmp_path / "run"
    assert run(whole, "checkpoint_every=10") == 0
    real = runner.train_round

    def interrupted(exp, round_index):
        if round_index == 2:
            raise KeyboardInterrupt
        return real(exp, round_index)

    monkeypatch.setattr(runner, "train_round", interrupted)
    assert run(out, "checkpoint_every=10") == 130
    assert not (out / CHECKPOINT_FILE).exists() and len(metrics(out)) == 3
    monkeypatch.setattr(runner, "train_round", real)
    assert run(out, "checkpoint_every=10", flags=("--resume",)) == 0
    assert without_time(metrics(out)) == without_time(metrics(whole))
    monkeypatch.setattr(runner, "train_round", interrupted)
    assert run(out, "checkpoint_every=10", "seed=3", flags=("--force",)) == 130
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 3  # a round was trained
    capsys.readouterr()
    assert run(out, "checkpoint_every=10") == 2  # finished rounds are not replaced unasked
    one_line(capsys, "--resume", "--force")


def test_a_run_stopped_in_its_first_round_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(exp, round_index):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_round", interrupted)
    assert run(tmp_path / "run") == 130
    assert not (tmp_path / "run").exists()


def test_divergence_names_the_round_and_the_worker(tmp_path, capsys):
    assert run(tmp_path / "run", "lr=1e30") == 3
    one_line(capsys, "round 1", "worker")


def test_an_output_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    assert run(tmp_path / ("x" * 300)) == 2
    one_line(capsys, "at most 255")


def test_the_config_recorded_in_the_checkpoint_is_the_run_s(tmp_path):
    out = tmp_path / "run"
    assert run(out, "rounds=1") == 0
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert yaml.safe_load(state["config"]) == yaml.safe_load((out / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"summary.csv": "a,b", "src/thesis.tex": "important"}, "not write (src)"),
        ({"config.yaml": "lr: 1", "metrics.jsonl": "", "train.py": "print()"}, "(train.py)"),
    ],
)
def test_force_refuses_folders_that_only_look_like_ours(tmp_path, capsys, files, needle):
    out = tmp_path / "proj"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    assert run(out, flags=("--force",)) == 2
    one_line(capsys, needle)
    assert all((out / name).read_text() == text for name, text in files.items())


def test_a_folder_being_written_is_not_replaced_by_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out) == 0
    before = snapshot(out)
    with locked(out):
        assert run(out, "seed=2", flags=("--force",)) == 2
    one_line(capsys, "another repgossip process")
    assert snapshot(out) == before


def test_a_folder_a_killed_force_left_aside_is_reported(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out) == 0
    aside = tmp_path / ".run.replaced-99999"
    out.rename(aside)  # as a --force killed before its first round leaves it
    assert run(out) == 2
    one_line(capsys, ".run.replaced-99999", "put it back")
    assert (aside / "summary.json").is_file()


def test_a_user_file_in_an_unfinished_run_folder_is_never_replaced(tmp_path, capsys, monkeypatch):
    def interrupted(exp, round_index):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    assert run(out, "rounds=1") == 0
    (out / "checkpoint.pt").unlink()
    (out / "metrics.jsonl").write_text('{"round": 0}\n')  # as a SIGKILL in round 1 leaves it
    (out / "notes.txt").write_text("mine")
    assert run(out) == 2
    one_line(capsys, "not empty")
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert run(out) == 0  # now only the stub of a run that never finished a round: replaced


def test_force_refuses_a_symbolic_link(tmp_path, capsys):
    real, link = tmp_path / "real", tmp_path / "link"
    assert run(real) == 0
    link.symlink_to(real)
    assert run(link, flags=("--force",)) == 2
    one_line(capsys, "symbolic link")
    assert (real / "summary.json").is_file()


def test_a_folder_written_before_a_key_existed_still_resumes_exactly(tmp_path, capsys):
    """A release that adds a config key (with a default) must resume the folders of the release
    before it: their config.yaml and checkpoint lack the key."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run(whole) == 0
    assert run(part, "rounds=1") == 0
    older = "metric"  # a recent key, whose default has not changed since

    def drop(text: str) -> str:
        lines = [line for line in text.splitlines(keepends=True) if not line.startswith(older)]
        assert len(lines) == len(text.splitlines()) - 1
        return "".join(lines)

    (part / "config.yaml").write_text(drop((part / "config.yaml").read_text()))
    state = torch.load(part / CHECKPOINT_FILE, weights_only=True)
    state.pop("checksum")
    state.pop("plugins", None)  # nor recorded what built the run's plug-ins
    state["config"] = drop(state["config"])
    (part / CHECKPOINT_FILE).write_bytes(checkpoint_bytes(state))
    assert run(part, flags=("--resume",)) == 0, capsys.readouterr().err
    assert without_time(metrics(part)) == without_time(metrics(whole))
    # what the older release ran with still binds the run: an edited value is refused
    config = part / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 7"))
    assert run(part, "rounds=4", flags=("--resume",)) == 2
    one_line(capsys, "seed=0", "another run")


def test_a_folder_recording_every_algorithms_keys_still_resumes(tmp_path, capsys):
    """Releases before algorithms declared their own parameters wrote ditto_lambda, density,
    prune_rate and fedrod_schedule into every config.yaml: a deprl folder with them resumes (they
    play no part in deprl and are left out), to the uninterrupted numbers."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run(whole) == 0
    assert run(part, "rounds=1") == 0
    config = part / "config.yaml"
    config.write_text(config.read_text() + "ditto_lambda: 0.1\nfedrod_schedule: null\n"
                      "density: 0.5\nprune_rate: 0.5\n")  # fmt: skip
    assert run(part, flags=("--resume",)) == 0, capsys.readouterr().err
    assert without_time(metrics(part)) == without_time(metrics(whole))
