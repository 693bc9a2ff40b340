"""Callbacks that stop a run, for tests (importable as `stoppers:NAME` from this folder)."""

from __future__ import annotations

from repgossip import Callback, StopRun


class StopAt(Callback):
    """Raises StopRun from `hook` at round `at` (on_run_start, on_run_end and close: always)."""

    def __init__(self, at: int = 2, hook: str = "on_round_end", reason: str = "enough") -> None:
        self.at, self.hook, self.reason = at, hook, reason
        self.calls: list[tuple[str, int]] = []

    def _maybe_stop(self, hook: str, round_: int) -> None:
        self.calls.append((hook, round_))
        if hook == self.hook and round_ == self.at:
            raise StopRun(self.reason)

    def on_run_start(self, info):
        self._maybe_stop("on_run_start", self.at)

    def on_evaluation(self, record):
        self._maybe_stop("on_evaluation", record["round"])

    def on_round_end(self, round_done):
        self._maybe_stop("on_round_end", round_done)

    def on_run_end(self, summary):
        self._maybe_stop("on_run_end", self.at)

    def close(self):
        self._maybe_stop("close", self.at)


def at_round_2() -> StopAt:
    """A factory, as `--callback stoppers:at_round_2` may name one."""
    return StopAt(2, "on_round_end", reason="two rounds are enough")


stop_now = StopAt(0, "on_run_start", reason="stop at once")  # an instance
not_a_callback = 42
