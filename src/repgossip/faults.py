"""Fault injection for the crash tests: kill this process halfway through writing a file.

Set `REPGOSSIP_FAULT=NAME:K` (e.g. `checkpoint.pt:2`) and the K-th atomic write of a file called
NAME in this process writes half its bytes to the temporary file, then sends SIGKILL to itself, the
same as a power cut or an OOM kill at the worst moment. Unset (always, outside tests), it costs one
dictionary lookup per write.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import BinaryIO

FAULT_ENV = "REPGOSSIP_FAULT"
_writes: Counter[str] = Counter()


def maybe_crash_midwrite(path: Path, handle: BinaryIO, payload: bytes) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if path.name != name:
        return
    _writes[name] += 1
    if _writes[name] == int(nth or 1):
        handle.write(payload[: len(payload) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
