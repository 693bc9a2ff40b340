"""A grid of runs: the product of `--grid key=v1,v2` lists, each run in its own sub-folder, with a
CSV and a Markdown table of their final metrics.

A sweep checks every point (config, graph, data, model and, on `--resume`, the config each finished
point was run with) before it touches its folder, so a typo never costs the results already there;
then it runs the points one by one, and a point that fails while running (divergence, a full disk)
is recorded as failed in the tables while the others still run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from repgossip.config import Config, build_config, changed_keys, load_resolved, split_assignment
from repgossip.errors import RepgossipError, UsageError
from repgossip.runfolder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    SUMMARY_FILE,
    atomic_write,
    check_output,
    claim_output,
    locked,
)
from repgossip.runner import preflight, resolve_device, run_experiment

RESULT_COLUMNS = (
    "test_acc_mean", "test_acc_pooled", "test_acc_p10", "test_acc_min", "subspace_dist",
    "train_loss", "test_loss_mean", "consensus_dist", "bytes_sent", "spectral_gap", "rounds", "wall_s",
)  # fmt: skip
STATUS = "status"  # summary column: "ok" or "failed: <reason>"
MAX_NAME = 100  # characters of a point's folder name (file systems stop at 255 bytes)
HASH_MARK = "~"  # precedes a name's hash; never in a readable name, so the two kinds never meet
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # what a folder name may not hold, on any system


# ---------------------------------------------------------------- the grid


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """`["algorithm=deprl,local", "lr=0.1"]` -> {"algorithm": ["deprl", "local"], "lr": ["0.1"]}.
    A key given twice is refused rather than merged or dropped: which values were meant is not
    ours to guess."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, values = _grid_entry(spec)
        if key in grid:
            raise UsageError(
                f"--grid gives '{key}' twice; give all values of '{key}' in one --grid {key}=a,b"
            )
        grid[key] = values
    if not grid:
        raise UsageError("sweep needs at least one --grid key=v1,v2")
    return grid


def _grid_entry(spec: str) -> tuple[str, list[str]]:
    """One `key=v1,v2` of --grid, refusing an unknown key, no values, an empty or repeated value
    (each would run nothing, fail later, or run one point twice)."""
    key, text = split_assignment(spec, "--grid", "key=v1,v2,...")
    values = [v.strip() for v in text.split(",")]
    if not any(values):
        raise UsageError(f"--grid '{spec}' gives no values for '{key}'; write {key}=v1,v2")
    if not all(values):
        raise UsageError(f"--grid '{spec}' has an empty value; write none for no value")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise UsageError(f"--grid '{spec}' lists '{twice}' twice; give each value once")
    return key, values


def grid_points(grid: Mapping[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _readable(point: Mapping[str, str]) -> str:
    return "__".join(f"{k}-{_UNSAFE.sub('_', v)}" for k, v in point.items())


def point_hash(point: Mapping[str, str]) -> str:
    """8 hex digits of sha256 over the exact point: what tells apart points whose readable names
    are equal or cut short."""
    return hashlib.sha256(json.dumps(dict(point), sort_keys=True).encode()).hexdigest()[:8]


def run_name(point: Mapping[str, str], collides: bool = False) -> str:
    """The folder name of `point`: `key-value__key-value`, unsafe characters as `_`; with `~hash`
    appended (the readable part cut to fit) when characters were replaced, the name is over
    MAX_NAME characters, or another point has the same readable name (`collides`). Readable
    names never contain `~`, so the names of one grid's points are all distinct."""
    readable = _readable(point)
    lossy = any(_UNSAFE.search(v) for v in point.values())
    if not (lossy or collides or len(readable) > MAX_NAME):
        return readable
    return readable[: MAX_NAME - 9] + HASH_MARK + point_hash(point)


def run_names(points: Sequence[Mapping[str, str]]) -> list[str]:
    """The folder names of a grid's points, distinct and at most MAX_NAME characters."""
    counts = Counter(_readable(p) for p in points)
    return [run_name(p, counts[_readable(p)] > 1) for p in points]


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
    config, graph, data and model (`runner.preflight`) and, on resume, its saved config."""
    values = grid_points(grid)
    names = run_names(values)
    configs = [_config(base, v, n) for v, n in zip(values, names, strict=True)]
    _refuse_duplicates(configs, names)
    points = [
        _decide(Point(v, n, out / n, c), resume=resume, force=force)
        for v, n, c in zip(values, names, configs, strict=True)
    ]
    for point in points:
        if point.finished is None:  # a reused point is not built again
            _preflight(point)
    return points


def _config(base: Mapping[str, Any], values: Mapping[str, str], name: str) -> Config:
    try:
        return build_config(base, values)
    except UsageError as err:
        raise UsageError(f"grid point {name}: {err}") from None


def _preflight(point: Point) -> None:
    try:
        resolve_device(point.cfg.device)
        preflight(point.cfg)
    except UsageError as err:
        raise UsageError(f"grid point {point.name}: {err}") from None


def _refuse_duplicates(configs: Sequence[Config], names: Sequence[str]) -> None:
    """Two points that resolve to one config (`lr=0.1,0.10`) would run the same thing twice."""
    seen: dict[str, str] = {}
    for cfg, name in zip(configs, names, strict=True):
        key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        if key in seen:
            raise UsageError(
                f"grid points {seen[key]} and {name} give the same config; drop one of the values"
            )
        seen[key] = name


def _decide(point: Point, *, resume: bool, force: bool) -> Point:
    """On resume, what to do with a point's folder: report a finished run whose saved config is
    this one, continue its checkpoint (also to more rounds), or start afresh. A saved config that
    differs is refused, as its results would be reported as this config's, unless `force`
    (rerun it)."""
    saved = _saved_config(point.folder, force) if resume else None
    if saved is None:
        return point
    fewer = ["rounds"] if saved.rounds > point.cfg.rounds else []  # a run cannot be cut short
    changed = changed_keys(saved, point.cfg) + fewer
    if changed:
        if force:
            return point
        key = changed[0]
        raise UsageError(
            f"cannot resume '{point.folder}': it ran with another '{key}' ({getattr(saved, key)!r}"
            f", now {getattr(point.cfg, key)!r}); pass --force too to rerun it, or use another --out"
        )
    finished = _summary(point.folder) if saved.rounds == point.cfg.rounds else None
    if finished is not None and finished.get("rounds") == point.cfg.rounds:
        return replace(point, finished=finished)
    has_checkpoint = (point.folder / CHECKPOINT_FILE).is_file()
    return replace(point, resume=has_checkpoint)


def _saved_config(folder: Path, force: bool) -> Config | None:
    """The resolved config a point's folder was run with; None where there is none (or, with
    `force`, none that can be read: that point runs again)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return load_resolved(path)
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
) -> SweepResult:
    """Run every grid point into `out/<point>`, all checked before `out` is claimed, under its
    lock; writes summary.csv and summary.md with one row per point, failed points included."""
    out = Path(out)
    check_output(out, keep=resume, force=force)  # the cheap refusal before the per-point checks
    points = plan(grid, base, out, resume=resume, force=force)
    _refuse_if_locked(out)
    claim_output(out, keep=resume, force=force)
    result = SweepResult([], list(grid))
    with locked(out):
        for point in points:
            result.rows.append(_run_point(point, progress, result.failed))
        write_tables(out, result.rows, result.keys)
    return result


def _refuse_if_locked(out: Path) -> None:
    """Refuse at once if another process is writing `out`, before claiming it could move or
    clear the runs that process is writing."""
    if (out / LOCK_FILE).is_file():
        with locked(out):
            pass


def _run_point(
    point: Point, progress: bool | None, failed: dict[str, RepgossipError]
) -> dict[str, Any]:
    """The point's table row; a point that fails is recorded in `failed` and its row, so that one
    bad point does not cost the rest of the sweep."""
    summary = point.finished
    if summary is None:
        print(f"[sweep] {point.name}", flush=True)
        try:
            summary = run_experiment(
                point.cfg, point.folder, resume=point.resume, force=not point.resume,
                progress=progress,
            ).summary  # fmt: skip
        except RepgossipError as err:
            failed[point.name] = err
            return {**point.values, STATUS: f"failed: {one_line(err)}"}
    results = {k: summary[k] for k in RESULT_COLUMNS if k in summary}
    return {**point.values, STATUS: "ok", **results}


def one_line(err: Exception) -> str:
    """The first line of an error's message: a table cell and a stderr line stay one line."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# ---------------------------------------------------------------- tables


def columns(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """The grid keys, `status`, then the result columns some row has, in RESULT_COLUMNS order."""
    results = [c for c in RESULT_COLUMNS if c not in keys and any(c in r for r in rows)]
    return [*keys, STATUS, *results]


def write_tables(out: Path, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    names = columns(rows, keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "summary.csv", buffer.getvalue().encode())
    atomic_write(out / "summary.md", markdown_table(rows, names).encode())


def _cell(value: Any) -> str:
    if value is None:  # e.g. a spectral gap that could not be computed
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    buf.write("| " + " | ".join(columns) + " |\n")
    buf.write("|" + "---|" * len(columns) + "\n")
    for row in rows:
        buf.write("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |\n")
    return buf.getvalue()
