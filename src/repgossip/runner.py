"""The run loop: an experiment (repgossip.experiment) trained round by round (repgossip.rounds),
evaluated, logged, checkpointed (repgossip.checkpoint) and resumed, in its run folder.

The same loop runs in one process (`engine=sim`) and on every rank of a torch.distributed group
(`engine=dist`); the engine provides the few collective steps, and rank 0 alone writes the run
folder and calls the callbacks. Randomness is a function of (seed, worker, round), so a checkpoint
needs only the workers' rows (parameters, optimizer state, buffers, algorithm state) and counters
for a resumed run to match an uninterrupted one. `repgossip.run` (repgossip.api) and the CLI are
thin layers over `run_experiment`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from repgossip import provenance
from repgossip.callbacks import (
    Callback,
    CallbackList,
    RunInfo,
    TensorBoardLogger,
    default_callbacks,
)
from repgossip.checkpoint import (
    on_writer,
    restore_checkpoint,
    same_config_everywhere,
    save_checkpoint,
)
from repgossip.config import Config, dump_yaml
from repgossip.engines import Engine
from repgossip.errors import DivergenceError, UsageError
from repgossip.experiment import Experiment, Supplied, build_engine, build_experiment, plugin_codes
from repgossip.faults import maybe_fail_rank
from repgossip.layout import row_key
from repgossip.rounds import check_finite, evaluate, train_round
from repgossip.runfolder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FOLDER,
    METRICS_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    FolderClaim,
    append_metrics,
    atomic_write,
    check_entry,
    check_output,
    read_metrics,
    resolve_out,
    resumable_config,
)
from repgossip.threads import single_threaded


@dataclass
class RunResult:
    """What a run returns: every evaluation record, the summary, and each worker's state."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    experiment: Experiment = field(repr=False)
    # Under engine=dist with gathering asked for: every worker's rows of the evaluated model copy,
    # by row kind, on rank 0 (so worker_state answers for any worker there); else None.
    gathered: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def worker_state(self, worker: int) -> dict[str, torch.Tensor]:
        """The state_dict of worker `worker`'s whole model (the evaluated copy), BatchNorm
        buffers included, under the names the model's own module uses (so a user's module
        loads it with `load_state_dict`). Under `engine=dist`, for the workers of this rank, or
        for every worker on rank 0 when the run gathered them (`repgossip.run` does)."""
        return self.experiment.worker_state(worker, self.gathered)

    def worker_model(self, worker: int) -> torch.nn.Module:
        """That model as a module: a copy of the run's architecture in eval mode (this
        process's workers only)."""
        return self.experiment.worker_model(worker)


def gather_states(exp: Experiment) -> dict[str, torch.Tensor] | None:
    """Every worker's rows of the evaluated model copy on the writer (None elsewhere): a
    collective, so every rank calls it, before the process group is closed."""
    model = exp.algorithm.evaluated_model
    rows = {}
    for kind in ("params", "buffers", "int_buffers"):  # every kind on every rank: a collective
        full = exp.engine.gather_rows(exp.population.rows[row_key(model, kind)])
        if full is not None:  # the writer
            rows[kind] = full
    return rows or None


def run_experiment(
    cfg: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
    supplied: Supplied | None = None,
    gather: bool = False,
) -> RunResult:
    """Run (or continue) the experiment `cfg`, into folder `out` when given (None: in memory).
    `gather`: under engine=dist, bring every worker's final state to rank 0's result."""
    supplied = supplied or Supplied()
    if resume and out is None:
        raise UsageError("resume needs the folder of the run to continue (out)")
    with single_threaded() as threads:  # no number may depend on a thread count
        engine = build_engine(cfg)
        try:
            cfg = same_config_everywhere(engine, cfg, supplied)
            folder = resolve_out(out, link_ok=not (resume or force)) if out is not None else None
            return _run(
                engine, cfg, folder, resume, force, progress, callbacks, supplied, threads, gather
            )
        finally:
            engine.close()


def _run(
    engine: Engine,
    cfg: Config,
    out: Path | None,
    resume: bool,
    force: bool,
    progress: bool | None,
    user_callbacks: Sequence[Callback],
    supplied: Supplied,
    threads: int,
    gather: bool = False,
) -> RunResult:
    if out is not None:
        on_writer(engine, lambda: _check_folder(out, cfg, resume, force, supplied))
    plugins = plugin_codes(cfg, supplied)
    if engine.is_writer and progress is not False:
        for key, code in plugins.items():  # before anything calls them
            print(code.announcement(key), file=sys.stderr)
    # every input error surfaces here, before writing
    exp = build_experiment(cfg, engine, supplied, threads, plugins)
    cfg = exp.cfg  # with the split the data really got
    if engine.is_writer and progress is not False:
        print(f"repgossip: data: {exp.federation.describe()}", file=sys.stderr, flush=True)
    start, wall_before, sent = (
        restore_checkpoint(out, exp, supplied) if resume and out else (0, 0.0, 0)
    )
    if start > cfg.rounds:
        raise UsageError(
            f"cannot resume with rounds={cfg.rounds}: the run already has {start} rounds"
        )
    history: list[dict[str, Any]] = []
    claim = FolderClaim(out, keep=resume, force=force) if out and engine.is_writer else None
    try:
        if out is not None:
            on_writer(engine, lambda: history.extend(_open_folder(out, exp, start, claim)))
        callbacks = _callbacks(engine, cfg, out, start, progress, user_callbacks)
        try:
            callbacks.on_run_start(RunInfo(cfg, out, start, cfg.rounds, exp))
            summary = _rounds(exp, out, start, wall_before, sent, history, callbacks, claim)
            gathered = gather_states(exp) if gather and engine.world > 1 else None
            callbacks.on_run_end(dict(summary))
        finally:
            callbacks.close()
    except DivergenceError as err:
        if claim is None:
            raise
        raise DivergenceError(f"{err} ({_kept_after_divergence(claim)})") from None
    finally:
        if claim is not None:
            claim.close()  # before its first record, a failed run puts a replaced folder back
    return RunResult(history, summary, exp, gathered)


def _kept_after_divergence(claim: FolderClaim) -> str:
    """What a diverged run leaves, said in its error: a diverged run is a result, so a new folder
    keeps its record (config, metrics so far, checkpoint if any); a folder it was replacing with
    --force is put back instead, as for any run that fails before it has trained a round."""
    out = claim.out
    if claim.aside is not None and not claim.committed:
        return "the folder it was replacing is back in its place"
    claim.commit()
    saved = "its last checkpoint" if (out / CHECKPOINT_FILE).is_file() else "no checkpoint yet"
    # --resume would refuse a changed lr, and with the same lr diverge again
    return f"the run folder keeps its config, metrics so far and {saved}; rerun with --force"


def _check_folder(out: Path, cfg: Config, resume: bool, force: bool, supplied: Supplied) -> None:
    check_output(out, keep=resume, force=force)
    if resume:
        resumable_config(out, cfg, supplied.algorithm)
        if cfg.tensorboard:  # a file by that name: one line now, not a traceback in round 0
            check_entry(out / TENSORBOARD_DIR, FOLDER)


def _callbacks(
    engine: Engine,
    cfg: Config,
    out: Path | None,
    start: int,
    progress: bool | None,
    user: Sequence[Callback],
) -> CallbackList:
    """The writer's callbacks: progress display, TensorBoard when asked, then the user's."""
    if not engine.is_writer:
        return CallbackList()
    chosen: list[Callback] = default_callbacks(progress, cfg.rounds, start)
    if cfg.tensorboard:
        if out is None:
            raise UsageError("tensorboard=true writes into the run folder; give an output folder")
        chosen.append(TensorBoardLogger(out / TENSORBOARD_DIR))
    return CallbackList([*chosen, *user])


def _rounds(
    exp: Experiment,
    out: Path | None,
    start: int,
    wall_before: float,
    sent: int,
    history: list[dict[str, Any]],
    callbacks: CallbackList,
    claim: FolderClaim | None,
) -> dict[str, Any]:
    """Train rounds `start`..`cfg.rounds`, evaluating, logging and checkpointing as configured,
    until a callback asks to stop (StopRun): that round is then evaluated and checkpointed too.
    Returns the summary (written to `out` when there is one)."""
    cfg, engine = exp.cfg, exp.engine
    began = time.perf_counter()

    def elapsed() -> float:
        return wall_before + time.perf_counter() - began

    def log(done: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
        metrics, per_worker = evaluate(exp, done)
        record = {"round": done, "wall_s": round(elapsed(), 4), **metrics, "bytes_sent": sent}
        if engine.is_writer:
            if out is not None:
                append_metrics(out / METRICS_FILE, record)
            if claim is not None and done > 0:
                claim.commit()  # the new run has trained a round: a replaced folder may go
            history.append(record)
            # copies: a callback cannot change the log or the summary
            callbacks.on_evaluation({**record, **{k: list(v) for k, v in per_worker.items()}})
        return record, per_worker

    def checkpoint(done: int) -> None:
        assert out is not None
        save_checkpoint(out, exp, done, elapsed(), sent)
        if claim is not None:
            claim.commit()  # the new run can be resumed

    record: dict[str, Any] | None = None
    per_worker: dict[str, list[float]] = {}
    if start == 0:
        record, per_worker = log(0)
    done, saved = start, (start if start > 0 else None)  # a resumed run's checkpoint: `start`
    stop = _agreed_stop(engine, callbacks) if start < cfg.rounds else None
    for round_index in range(start, cfg.rounds):
        if stop is not None:
            break
        maybe_fail_rank(engine.rank, round_index)
        sent += train_round(exp, round_index)
        check_finite(exp, round_index)
        done = round_index + 1
        if done % cfg.eval_every == 0 or done == cfg.rounds:
            record, per_worker = log(done)
        if out is not None and (done % cfg.checkpoint_every == 0 or done == cfg.rounds):
            checkpoint(saved := done)
        callbacks.on_round_end(done)
        if done < cfg.rounds:
            stop = _agreed_stop(engine, callbacks)
    if stop is not None:  # a finished run at `done`: its last record and checkpoint are there
        if record is not None and record["round"] != done:
            record, per_worker = log(done)
        if out is not None and saved != done:
            checkpoint(done)
    if record is None:  # resumed a finished (or at once stopped) run: re-evaluate for the summary
        record, per_worker = evaluate(exp, start)
        record = {"round": start, "wall_s": elapsed(), **record, "bytes_sent": sent}
    summary = _summary(exp, record, per_worker)
    if stop is not None:
        summary["stopped_early"] = stop
    if engine.is_writer and out is not None:
        atomic_write(out / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    if claim is not None:
        claim.commit()
    return summary


def _agreed_stop(engine: Engine, callbacks: CallbackList) -> str | None:
    """The reason a callback (on rank 0) gave to stop, on every rank, or None to go on: every rank
    leaves the loop after the same round. One all-reduce per round, none in one process."""
    reason = callbacks.stop_reason  # None on the ranks that run no callbacks
    if engine.agree(reason is None):
        return None
    return engine.broadcast_bytes((reason or "").encode()).decode(errors="replace")


def _open_folder(
    out: Path, exp: Experiment, start: int, claim: FolderClaim | None
) -> list[dict[str, Any]]:
    """Claim and lock the folder, record the config and this session's provenance (with what
    built its plug-ins), and drop evaluations past the checkpoint (and a torn last line); returns
    the evaluations kept."""
    assert claim is not None  # the writer holds the claim
    claim.open()
    atomic_write(out / CONFIG_FILE, dump_yaml(exp.cfg).encode())
    plugins = {key: code.provenance() for key, code in exp.plugins.items()}
    provenance.record(out, {**provenance.collect(), "plugins": plugins})
    kept = read_metrics(out / METRICS_FILE, up_to_round=start) if start > 0 else []
    atomic_write(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept


def _summary(exp: Experiment, record: dict[str, Any], per_worker: dict[str, list[float]]) -> dict:
    layout = exp.population.layout
    shared = exp.algorithm.shared
    shared_params = 0 if shared is None else layout.part(shared).stop - layout.part(shared).start
    return {
        **record,
        **per_worker,
        "per_worker_train_samples": exp.federation.train_sizes(),
        "spectral_gap": exp.spectral_gap,
        "rounds": record["round"],
        "params_shared": shared_params,
        "params_private": layout.size - shared_params,
        "wire_bytes": int(exp.engine.all_sum(torch.tensor([exp.engine.wire_bytes]))),
    }
