"""A grid of runs (repgossip.grid), each run in its own sub-folder, with a CSV and a Markdown table
of their final metrics (repgossip.tables).

A sweep checks every point (config, graph, data, model and, on `--resume`, the config each finished
point was run with) before it touches its folder, so a typo never costs the results already there;
then it runs the points, one by one or (`jobs` > 1) side by side in worker processes, and a point
that fails while running (divergence, a full disk) is recorded as failed in the tables while the
others still run.

With `seed` among the grid keys, the seeds of one configuration (a grid point without its seed) are
repeats of one experiment: summary.csv keeps one row per run, and summary_by_config.csv and
summary.md give per configuration the mean and sample std over the seeds that ran (column `X` is
the mean of `X`, `X_std` its std), `n` the seeds that ran and `failed` those that did not.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from repgossip.components import params_of
from repgossip.config import (
    PLUGIN_REGISTRIES,
    Config,
    as_it_ran,
    build_config,
    changed_keys,
    inert,
    load_resolved,
)
from repgossip.configfile import read_yaml
from repgossip.errors import RepgossipError, UsageError, WorkerDied, plugin_traceback
from repgossip.experiment import preflight, resolve_device
from repgossip.grid import grid_points, run_names
from repgossip.registry import is_plugin_ref
from repgossip.runfolder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    SUMMARY_FILE,
    check_output,
    claim_output,
    locked,
    resolve_out,
)
from repgossip.runner import run_experiment
from repgossip.tables import RESULT_COLUMNS, STATUS, Reference, check_reference, write_tables

GRACE_S = 30.0  # how long an interrupted worker may take to leave its run before it is killed
PARENT_POLL_S = 0.5  # how often a worker checks that the sweep that started it is still there
# How often the sweep wakes while it waits on its workers. A SIGINT that the kernel hands to one
# of the pool's helper threads sets Python's flag but does not wake the main thread from an
# untimed wait; only a timed one returns to the interpreter, which then raises KeyboardInterrupt
# (a standalone check: a wait on a 5 s future, SIGINT sent to a helper thread at 0.5 s, raised
# KeyboardInterrupt after 5.0 s untimed and after 0.6 s in 0.2 s slices).
SIGNAL_POLL_S = 0.2
PR_SET_PDEATHSIG = 1  # Linux prctl(2): the signal a process gets when its parent dies


# ---------------------------------------------------------------- checking every point first


@dataclass(frozen=True)
class Point:
    """One grid point, checked: its values as given, folder, resolved config, and what to do."""

    values: dict[str, str]
    name: str
    folder: Path
    cfg: Config
    resume: bool = False  # continue the checkpoint in `folder`
    finished: dict[str, Any] | None = None  # the summary of a finished run to report as is


def plan(
    grid: Mapping[str, list[str]], base: Mapping[str, Any], out: Path, *, resume: bool, force: bool
) -> list[Point]:
    """Every point checked as a run would check it, before anything is written or removed: its
    config, graph, data and model (`experiment.preflight`) and, on resume, its saved config."""
    values = grid_points(grid)
    names = run_names(values)
    droppable = _plugin_params(grid, base)
    configs = [
        _config({**base, **(_as_it_ran(out / n, base, v) if resume else {})}, v, n, droppable)
        for v, n in zip(values, names, strict=True)
    ]
    _refuse_duplicates(configs, names, values)
    _refuse_unused(configs, [*(k for k, v in base.items() if not inert(k, v)), *grid])
    points = [
        _decide(Point(v, n, out / n, c), resume=resume, force=force)
        for v, n, c in zip(values, names, configs, strict=True)
    ]
    for point in points:
        if point.finished is None:  # a reused point is not built again
            _preflight(point)
    return points


def _refuse_unused(configs: Sequence[Config], given: Sequence[str]) -> None:
    """A component's parameter that no point of the grid takes (each point leaves out those of
    components it does not select) was given for nothing: refuse it, naming the key. The base's
    keys at none or their default ask for nothing (a config file shared by several sweeps) and
    are not given here."""
    taken = {key for cfg in configs for key in cfg.to_dict()}
    unused = next((key for key in given if key not in taken), None)
    if unused is not None:
        raise UsageError(
            f"{unused} is a parameter of a component (an algorithm, dataset, model, partition or "
            "topology) that no grid point selects; leave it out or add that component to the grid"
        )


def _as_it_ran(folder: Path, base: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """What a point's folder, written by an older release, must keep to continue as it ran
    (`config.as_it_ran`); nothing where there is no readable config.yaml (`_decide` says why)."""
    try:
        saved = read_yaml(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else None
    except UsageError:
        return {}
    return as_it_ran(saved, [*base, *values]) if saved is not None else {}


def _plugin_params(grid: Mapping[str, list[str]], base: Mapping[str, Any]) -> set[str]:
    """The parameter names of every plug-in component the grid or the base selects: a point that
    selects another component leaves them out, as it leaves out a built-in's."""
    refs = [
        (kind, value)
        for kind in PLUGIN_REGISTRIES
        for value in [*grid.get(kind, []), base.get(kind)]
        if isinstance(value, str) and is_plugin_ref(value)
    ]
    return {p.name for kind, ref in refs for p in params_of(kind, ref)}


def _config(
    base: Mapping[str, Any], values: Mapping[str, str], name: str, droppable: set[str]
) -> Config:
    try:
        return build_config(base, values, foreign="drop", droppable=droppable)
    except UsageError as err:
        raise UsageError(f"grid point {name}: {err}") from None


def _preflight(point: Point) -> None:
    try:
        resolve_device(point.cfg.device)
        preflight(point.cfg)
    except UsageError as err:
        raise UsageError(f"grid point {point.name}: {err}") from None


def _refuse_duplicates(
    configs: Sequence[Config], names: Sequence[str], values: Sequence[Mapping[str, str]]
) -> None:
    """Two points that resolve to one config (`lr=0.1,0.10`, or a key that plays no part for one
    algorithm, recorded as none) would run the same thing twice."""
    seen: dict[str, int] = {}
    for index, cfg in enumerate(configs):
        key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        if key in seen:
            first = seen[key]
            differ = [k for k in values[index] if values[index][k] != values[first][k]]
            recorded = cfg.to_dict()
            how = ", ".join(
                f"{k} is {recorded[k]!r} in both" if k in recorded else f"{k} plays no part"
                for k in differ
            )
            raise UsageError(
                f"grid points {names[first]} and {names[index]} give the same config ({how}); "
                "drop one of the values, or split the sweep where a key plays no part"
            )
        seen[key] = index


def _decide(point: Point, *, resume: bool, force: bool) -> Point:
    """On resume, what to do with a point's folder: report a finished run whose saved config is
    this one, continue its checkpoint (also to more rounds), or start afresh. A saved config that
    differs is refused, as its results would be reported as this config's, unless `force`
    (rerun it)."""
    saved = _saved_config(point.folder, point.cfg, force) if resume else None
    if saved is None:
        return point
    fewer = ["rounds"] if saved.rounds > point.cfg.rounds else []  # a run cannot be cut short
    changed = changed_keys(saved, point.cfg) + fewer
    if changed:
        if force:
            return point
        key = changed[0]
        raise UsageError(
            f"cannot resume '{point.folder}': it ran with another '{key}' ({saved.to_dict().get(key)!r}"
            f", now {point.cfg.to_dict().get(key)!r}); pass --force too to rerun it, or use another --out"
        )
    finished = _summary(point.folder) if saved.rounds == point.cfg.rounds else None
    if finished is not None and finished.get("rounds") == point.cfg.rounds:
        return replace(point, finished=finished)
    has_checkpoint = (point.folder / CHECKPOINT_FILE).is_file()
    return replace(point, resume=has_checkpoint)


def _saved_config(folder: Path, cfg: Config, force: bool) -> Config | None:
    """The resolved config a point's folder was run with; None where there is none (or, with
    `force`, none that can be read, or one naming another plug-in than `cfg`: that point runs
    again)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return load_resolved(path, current=cfg)
    except UsageError as err:
        if force:
            return None
        raise UsageError(f"cannot resume '{folder}': {err}; pass --force too to rerun it") from None


def _summary(folder: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


# ---------------------------------------------------------------- running


@dataclass
class SweepResult:
    """One row per point in grid order, and the error of each point that failed (by name)."""

    rows: list[dict[str, Any]]
    keys: list[str]
    failed: dict[str, RepgossipError] = field(default_factory=dict)
    paired: Reference | None = None  # the reference of the paired differences, when asked for

    @property
    def exit_code(self) -> int:
        """0 when every point ran, else the largest exit code of a failed point (3: diverged)."""
        return max((err.exit_code for err in self.failed.values()), default=0)


def sweep(
    grid: Mapping[str, list[str]],
    base: Mapping[str, Any],
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    jobs: int = 1,
    paired_with: str | None = None,
) -> SweepResult:
    """Run every grid point into `out/<point>`, all checked before `out` is claimed, under its
    lock; writes summary.csv and summary.md with one row per point, failed points included.
    `jobs` > 1 runs that many points at a time, each in its own process (see `_Workers`).
    `paired_with` (`key=value`, or an algorithm) adds the paired differences over seeds."""
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    paired = check_reference(paired_with, grid) if paired_with is not None else None
    out = resolve_out(out, link_ok=not (resume or force))
    check_output(out, keep=resume, force=force)  # the cheap refusal before the per-point checks
    points = plan(grid, base, out, resume=resume, force=force)
    _refuse_if_locked(out)
    claim_output(out, keep=resume, force=force)
    result = SweepResult([], list(grid), paired=paired)
    with locked(out):
        if jobs == 1:
            result.rows = [_run_point(point, progress, result.failed) for point in points]
        else:
            result.rows = _run_parallel(points, jobs, result.failed)
        write_tables(out, result.rows, result.keys, paired)
    return result


def _refuse_if_locked(out: Path) -> None:
    """Refuse at once if another process is writing `out`, before claiming it could move or
    clear the runs that process is writing."""
    if (out / LOCK_FILE).is_file():
        with locked(out):
            pass


Outcome = tuple[dict[str, Any], RepgossipError | None]  # a point's table row, and why it failed


def _run_point(
    point: Point, progress: bool | None, failed: dict[str, RepgossipError]
) -> dict[str, Any]:
    """The point's table row, run here; a point that fails is recorded in `failed` and its row,
    so that one bad point does not cost the rest of the sweep."""
    if point.finished is None:
        print(f"[sweep] {point.name}", flush=True)
    row, err = _outcome(point, progress)
    if err is not None:
        failed[point.name] = err
    return row


def _outcome(point: Point, progress: bool | None) -> Outcome:
    """Run the point (or take its finished summary) and make its row; a RepgossipError is the
    point's failure, returned rather than raised so that the others still run."""
    summary = point.finished
    if summary is None:
        try:
            summary = run_experiment(
                point.cfg, point.folder, resume=point.resume, force=not point.resume,
                progress=progress,
            ).summary  # fmt: skip
        except RepgossipError as err:
            shown = plugin_traceback(err)
            if shown:  # REPGOSSIP_TRACEBACK=1: printed where the point ran, worker or not
                print(f"[sweep] {point.name}:\n{shown}", end="", file=sys.stderr, flush=True)
            return {**point.values, STATUS: f"failed: {one_line(err)}"}, err
    results = {k: summary[k] for k in RESULT_COLUMNS if k in summary}
    return {**point.values, STATUS: "ok", **results}, None


# ---------------------------------------------------------------- running side by side


def _run_parallel(
    points: Sequence[Point], jobs: int, failed: dict[str, RepgossipError]
) -> list[dict[str, Any]]:
    """The rows of `points` in grid order, the unfinished ones run by up to `jobs` worker
    processes; one line per point as it finishes (bars of several runs would garble). Failures
    go into `failed` in grid order too, whatever order they happened in."""
    outcomes = {i: _outcome(p, False) for i, p in enumerate(points) if p.finished is not None}
    todo = [i for i, p in enumerate(points) if p.finished is None]
    if todo:
        with _Workers(min(jobs, len(todo))) as workers:
            for done, (i, outcome) in enumerate(workers.run(points, todo), 1):
                outcomes[i] = outcome
                status = outcome[0][STATUS]
                print(f"[sweep {done}/{len(todo)}] {points[i].name}: {status}", flush=True)
    for i, (_, err) in sorted(outcomes.items()):
        if err is not None:
            failed[points[i].name] = err
    return [outcomes[i][0] for i in range(len(points))]


class _Workers:
    """Worker processes for the points of a sweep, started by 'spawn' (torch's threads do not
    survive a fork), one torch thread each (J runs share the cores; more threads would only
    contend). Leaving the `with` block by an exception (Ctrl-C included) stops them cleanly: no
    point starts any more, each running one is interrupted as Ctrl-C interrupts a run (its
    folder stays resumable), and a worker still there after GRACE_S is killed: none outlives
    the sweep. A sweep that is killed outright takes its workers with it (`_die_with_parent`)."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.stopping = context.Event()
        self.pool = ProcessPoolExecutor(
            count, mp_context=context, initializer=_init_worker,
            initargs=(self.stopping, os.getpid()),
        )  # fmt: skip
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def __enter__(self) -> _Workers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            with _sigint_ignored():  # a second Ctrl-C must not cut the clean-up short
                self._halt()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, points: Sequence[Point], todo: Sequence[int]) -> Iterator[tuple[int, Outcome]]:
        """(index, outcome) of each point of `todo`, as they finish."""
        with _sigint_ignored():  # workers start with Ctrl-C ignored: no traceback from a child
            futures = {self.pool.submit(_point_in_worker, points[i]): i for i in todo}
        self.processes = list((self.pool._processes or {}).values())  # all started by submit
        for future in completed(futures):
            try:
                outcome = future.result()
            except BrokenProcessPool:
                raise self._death() from None
            if outcome is None:  # its worker was interrupted by a signal of its own
                raise KeyboardInterrupt
            yield futures[future], outcome

    def _death(self) -> WorkerDied:
        """The error of a worker that died, with the exit code a shell gives a command killed
        by the same signal. Once one worker dies the pool terminates the others (SIGTERM), so
        the cause is the one end that is not SIGTERM (or SIGTERM, when all ended by it)."""
        for process in self.processes:
            process.join(GRACE_S)  # the pool is terminating the others
        ends = [p.exitcode for p in self.processes if p.exitcode]
        end = next((e for e in ends if e != -signal.SIGTERM), ends[0] if ends else 0)
        if end < 0:
            name = signal.Signals(-end).name if -end in signal.valid_signals() else str(-end)
            how, code = f"was killed by signal {name}", 128 - end
        else:
            how, code = f"ended with status {end} without a result", 1
        return WorkerDied(
            f"a sweep worker process {how} (out of memory? see the system log); continue with "
            f"--resume (exit code {code})",
            code,
        )

    def _halt(self) -> None:
        """Stop every worker: no new point, SIGINT to the running ones, then wait, then kill."""
        processes = list((self.pool._processes or {}).values())  # shutdown forgets them
        self.stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with suppress(ProcessLookupError):  # it may end and be reaped meanwhile (CI saw it)
                    os.kill(process.pid, signal.SIGINT)
        deadline = time.monotonic() + GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()


def completed(futures: Mapping[Future[Any], int]) -> Iterator[Future[Any]]:
    """The futures as they finish (those finishing together in the order of their values), in
    timed waits, so that Ctrl-C stops the sweep even when the kernel hands SIGINT to another
    thread than the main one (SIGNAL_POLL_S)."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=SIGNAL_POLL_S, return_when=FIRST_COMPLETED)
        yield from sorted(done, key=futures.__getitem__)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block (in the main thread, the only one that may set handlers).
    A child spawned meanwhile inherits the ignoring, so Ctrl-C while it imports torch prints
    no traceback; the parent alone decides what stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_stopping: Any = None  # in a worker: the sweep's stop event, set by the parent on Ctrl-C


def _init_worker(stopping: Any, parent: int) -> None:
    """A worker's set-up: it dies with the sweep `parent`, one torch thread (OMP_NUM_THREADS too,
    for what reads it later), and SIGINT ignored between points, as a terminal's Ctrl-C reaches
    every worker with the parent."""
    global _stopping
    _die_with_parent(parent)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stopping = stopping


def _die_with_parent(parent: int) -> None:
    """Kill this worker when the sweep process `parent` dies (SIGKILL, the OOM killer). A worker
    left behind would finish its point unseen, then wait on the pool's pipe forever (it holds
    the pipe's writing end itself, so it never reads its end), and a `--resume` would find its
    point locked. On Linux the kernel sends SIGKILL at the parent's death (PR_SET_PDEATHSIG,
    tied to the thread that spawned the worker: the one running the sweep, which outlives its
    workers); everywhere a thread also watches the parent's pid, which covers a parent that
    died before the first was set, and systems without prctl."""
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    watch = threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True)
    watch.start()


def _watch_parent(parent: int) -> None:
    """Poll until this process's parent is no longer `parent` (it died; this one was adopted),
    then die at once, as SIGKILL from the kernel would."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGKILL)


def _point_in_worker(point: Point) -> Outcome | None:
    """Run one point in a worker: its outcome, or None when the sweep is stopping (a point not
    begun is skipped, a running one interrupted as Ctrl-C interrupts a run)."""
    signal.signal(signal.SIGINT, _interrupt)  # before the check: a stop is never missed
    try:
        if _stopping is not None and _stopping.is_set():
            return None
        return _outcome(point, False)
    except KeyboardInterrupt:
        return None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt(signum: int, frame: Any) -> None:
    """A worker's SIGINT handler while it runs a point: interrupt the run once; later SIGINTs
    (the terminal's and the parent's both arrive) must not break its clean-up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def one_line(err: Exception) -> str:
    """The first line of an error's message: a table cell and a stderr line stay one line."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
