"""The exceptions a run ends with, each carrying the exit code the command line returns.

The CLI catches `RepgossipError` once and prints its message in one line without a traceback, so a
new kind of failure needs only a subclass with its code, not another `except` clause.

A failure in user code (a plug-in, a model's forward, a loss) is reported in one line too, raised
`from None` so that Python shows no chain; the original exception stays the error's `__context__`.
With the environment variable REPGOSSIP_TRACEBACK=1 the command line prints its traceback first,
for the plug-in's author (`plugin_traceback`).
"""

from __future__ import annotations

import os
import traceback

TRACEBACK_VARIABLE = "REPGOSSIP_TRACEBACK"
_OFF_WORDS = ("", "0", "false", "no", "off")


class RepgossipError(Exception):
    """Base of every error that the CLI reports in one line; `exit_code` is what it exits with."""

    exit_code = 1


class UsageError(RepgossipError, ValueError):
    """Bad input from the user: a name, a value, a file. The message is one line that names the bad
    value and what would be valid; the CLI prints it without a traceback (exit code 2)."""

    exit_code = 2
    # the exception that user code (a plug-in, a model's forward, a loss) raised, where that is
    # what this error reports (`user_code_failed`): its traceback is what REPGOSSIP_TRACEBACK shows
    user_exception: BaseException | None = None


class DivergenceError(RepgossipError, RuntimeError):
    """A loss or a parameter became NaN or infinite (exit code 3); the run folder keeps its record
    (config, metrics so far, last checkpoint if any)."""

    exit_code = 3


class DistributedError(RepgossipError, RuntimeError):
    """A peer of the distributed engine died, hung past `dist_timeout_s`, or the process group
    could not be formed. The CLI prints it in one line and exits with code 4."""

    exit_code = 4


class WorkerDied(RepgossipError):
    """A worker process of `repgossip sweep --jobs J` died without reporting its point (killed,
    out of memory, a crash in native code). Its exit code is the shell's for a killed command:
    128 + N when signal N killed it (137: SIGKILL, the kernel's out-of-memory killer's signal),
    else 1. The points' folders stay resumable: `--resume` continues the sweep."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StorageError(RepgossipError, OSError):
    """A file of the run could not be written (a full disk, a lost mount): exit code 5. The
    temporary file is removed and the last good checkpoint is kept, so `--resume` continues once
    there is room again."""

    exit_code = 5


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most `limit` characters (its type's name when
    it has none, or when its message cannot be made: an int too long for str()): what a one-line
    error quotes of a failure in user or library code."""
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - str() of the user's exception raised in turn
        text = ""
    return (text.strip().splitlines() or [type(err).__name__])[0][:limit]


def described(err: BaseException, limit: int = 300) -> str:
    """`Type: first line` of an exception (only `Type` when it has no message): how a one-line
    error names what user or library code raised."""
    text = first_line(err, limit)
    return text if text == type(err).__name__ else f"{type(err).__name__}: {text}"


def user_code_failed(message: str, err: BaseException) -> UsageError:
    """The one-line UsageError for a failure in user code (a plug-in, a model's forward, a loss, a
    callback), keeping that code's exception for REPGOSSIP_TRACEBACK (`plugin_traceback`)."""
    failure = UsageError(message)
    failure.user_exception = err
    return failure


def plugin_traceback(err: BaseException) -> str | None:
    """The traceback of the exception user code raised behind `err` (`user_code_failed`, on the
    chain of causes and contexts), when REPGOSSIP_TRACEBACK is on (set to anything but empty, 0,
    false, no or off); else None. repgossip's own refusals (a bad value, a missing file) have
    none: their one line says all there is."""
    if os.environ.get(TRACEBACK_VARIABLE, "").strip().lower() in _OFF_WORDS:
        return None
    seen = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        inner = getattr(link, "user_exception", None)
        if inner is not None:
            return "".join(traceback.format_exception(type(inner), inner, inner.__traceback__))
        link = link.__cause__ or link.__context__
    return None
