"""provenance.json: what a session records about its code and machine, and how sessions add up."""

import json
import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import repgossip
from repgossip.provenance import PROVENANCE_FILE, collect, git_state, record

KEYS = {"repgossip", "torch", "numpy", "python", "platform", "hostname", "cpu", "cpu_count",
        "gpus", "git_commit", "git_dirty", "argv", "cwd", "started_utc"}  # fmt: skip
CHECKOUT = Path(repgossip.__file__).resolve().parents[2]


def git(where: Path, *args: str) -> str:
    command = ["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def test_collect_has_every_key_and_is_json():
    entry = collect(["repgossip", "run", "--rounds", "3"])
    assert set(entry) == KEYS
    assert json.loads(json.dumps(entry)) == entry
    assert entry["repgossip"] == repgossip.__version__
    assert entry["argv"] == ["repgossip", "run", "--rounds", "3"]
    assert entry["cwd"] == os.getcwd()
    assert isinstance(entry["gpus"], list) and entry["cpu_count"] >= 1
    started = datetime.fromisoformat(entry["started_utc"])
    assert started.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - started) < timedelta(minutes=1)


@pytest.mark.skipif(
    shutil.which("git") is None or not (CHECKOUT / ".git").exists(),
    reason="needs git and a repgossip git checkout",
)
def test_collect_finds_this_checkouts_commit():
    entry = collect([])
    assert entry["git_commit"] == git(CHECKOUT, "rev-parse", "HEAD")
    assert len(entry["git_commit"]) == 40
    assert isinstance(entry["git_dirty"], bool)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_of_a_package_tracked_untracked_and_modified(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    (tmp_path / "README").write_text("someone's project\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "README")
    git(tmp_path, "commit", "-q", "-m", "zero")
    # a package lying untracked in someone's repository (an ignored venv): not our commit
    assert git_state(package) == (None, None)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_state(package) == (head, False)
    (tmp_path / "untracked.txt").write_text("?")
    assert git_state(package) == (head, False)
    (package / "__init__.py").write_text("x = 2\n")
    assert git_state(package) == (head, True)


def test_git_state_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert git_state(tmp_path) == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to be found
    assert git_state(CHECKOUT / "src" / "repgossip") == (None, None)


def test_record_appends_one_session_per_call(tmp_path):
    record(tmp_path, {"session": 1})
    record(tmp_path, {"session": 2})
    data = json.loads((tmp_path / PROVENANCE_FILE).read_text())
    assert data == {"sessions": [{"session": 1}, {"session": 2}]}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("garbage", ['{"sessions": [', "[1, 2]", '{"sessions": 3}', "\udcff"])
def test_record_replaces_an_unreadable_file(tmp_path, garbage):
    path = tmp_path / PROVENANCE_FILE
    path.write_bytes(garbage.encode("utf-8", "surrogateescape"))
    record(tmp_path, {"session": 2})
    record(tmp_path, {"session": 3})
    data = json.loads(path.read_text())
    assert data == {"sessions": [{"session": 2}, {"session": 3}], "replaced_unreadable": True}
