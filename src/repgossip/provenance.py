"""Where and with what a run ran: versions, machine, source commit, command line, start time.

A result is only comparable with another when both came from the same code on similar hardware;
`provenance.json` in the run folder keeps that, one entry per session (a resumed run is a second
session, possibly on another machine or commit).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repgossip.runfolder import atomic_write
from repgossip.version import __version__

PROVENANCE_FILE = "provenance.json"
GIT_TIMEOUT_S = 5.0
# variables that would point git at another repository than the package's (set inside git hooks)
GIT_REDIRECTS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")


def collect(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """This session's provenance entry; every value is JSON-serialisable."""
    commit, dirty = git_state(Path(__file__).resolve().parent)
    return {
        "repgossip": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpu_names(),
        "git_commit": commit,
        "git_dirty": dirty,
        "argv": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def cpu_model() -> str | None:
    """/proc/cpuinfo's model name (platform.processor() is often empty or just 'x86_64' on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_names() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def git_state(package_dir: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the package is imported from; (None, None) when it is not
    imported from a checkout (an installed wheel, or a venv ignored inside someone's repository)
    or git is missing or slow. Untracked files do not count as dirty: they change no code that
    tracked code imports without itself being modified."""
    init = package_dir / "__init__.py"
    commit = _git(package_dir, "rev-parse", "HEAD")
    if commit is None or _git(package_dir, "ls-files", "--error-unmatch", str(init)) is None:
        return None, None
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def _git(where: Path, *args: str) -> str | None:
    env = {k: v for k, v in os.environ.items() if k not in GIT_REDIRECTS}
    try:
        done = subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def record(out: Path, entry: dict[str, Any]) -> None:
    """Append `entry` to `out/provenance.json` ({"sessions": [...]}), atomically. An unreadable
    file is replaced, with `"replaced_unreadable": true`, rather than stopping the run."""
    path = Path(out) / PROVENANCE_FILE
    data: dict[str, Any] = {"sessions": []}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            loaded = None
        if isinstance(loaded, dict) and isinstance(loaded.get("sessions"), list):
            data = loaded
        else:
            data["replaced_unreadable"] = True
    data["sessions"].append(entry)
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
