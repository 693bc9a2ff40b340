"""Fault injection for the crash tests. Unset (always, outside tests), each hook costs one
environment lookup.

- `REPGOSSIP_FAULT=NAME:K` (e.g. `checkpoint.pt:2`): the K-th atomic write of a file called NAME in
  this process writes half its bytes to the temporary file, then SIGKILLs the process, as a power
  cut or an OOM kill would at the worst moment. `NAME:K:enospc` instead fails that write with
  "No space left on device" after half its bytes, as a full disk would.
- `REPGOSSIP_RANK_FAULT=R:K:kill` or `R:K:hang`: the process of rank R dies (SIGKILL) or stops
  answering when it starts round K, in its first launch only (not after a torchrun restart).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import BinaryIO

FAULT_ENV = "REPGOSSIP_FAULT"
_writes: Counter[str] = Counter()


def maybe_crash_midwrite(path: Path, handle: BinaryIO, payload: bytes) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    nth, _, how = rest.partition(":")
    if path.name != name:
        return
    _writes[name] += 1
    if _writes[name] == int(nth or 1):
        handle.write(payload[: len(payload) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        if how == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)


RANK_FAULT_ENV = "REPGOSSIP_RANK_FAULT"


def maybe_fail_rank(rank: int, round_index: int) -> None:
    spec = os.environ.get(RANK_FAULT_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return
    target, at, how = spec.split(":")
    if int(target) != rank or int(at) != round_index:
        return
    if how == "hang":
        time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
