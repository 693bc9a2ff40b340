"""A grid of runs: the product of `--grid key=v1,v2` lists, each run in its own sub-folder, with a
CSV and a Markdown table of their final metrics."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from repgossip.config import KEYS, build_config, suggest_key
from repgossip.errors import UsageError
from repgossip.runfolder import CHECKPOINT_FILE, SUMMARY_FILE, claim_output
from repgossip.runner import run_experiment

RESULT_COLUMNS = (
    "test_acc_mean", "test_acc_pooled", "test_acc_p10", "test_acc_min", "subspace_dist",
    "train_loss", "test_loss_mean", "consensus_dist", "bytes_sent", "spectral_gap", "rounds", "wall_s",
)  # fmt: skip


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """`["algorithm=deprl,local", "lr=0.1"]` -> {"algorithm": ["deprl", "local"], "lr": ["0.1"]}."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UsageError(f"--grid takes key=v1,v2,..., got '{spec}'")
        if key not in KEYS:
            raise UsageError(suggest_key(key))
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    if not grid:
        raise UsageError("sweep needs at least one --grid key=v1,v2")
    return grid


def grid_points(grid: Mapping[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def run_name(point: Mapping[str, str]) -> str:
    return "__".join(f"{k}-{v}".replace("/", "_") for k, v in point.items())


def sweep(
    grid: Mapping[str, list[str]],
    base: Mapping[str, Any],
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Run every grid point (validated up front, so a typo fails before hours of work)."""
    out = Path(out)
    points = grid_points(grid)
    configs = [build_config(base, point) for point in points]
    claim_output(out, keep=resume, force=force)  # configs are valid: safe to clear
    rows = []
    for point, cfg in zip(points, configs, strict=True):
        folder = out / run_name(point)
        summary = _finished(folder, cfg.rounds) if resume else None
        if summary is None:
            again = resume and (folder / CHECKPOINT_FILE).is_file()
            print(f"[sweep] {run_name(point)}", flush=True)
            summary = run_experiment(
                cfg, folder, resume=again, force=not again, progress=progress
            ).summary
        rows.append({**point, **{k: summary[k] for k in RESULT_COLUMNS if k in summary}})
    write_tables(out, rows)
    return rows


def _finished(folder: Path, rounds: int) -> dict[str, Any] | None:
    path = folder / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("rounds") == rounds else None


def write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(markdown_table(rows, columns))


def _cell(value: Any) -> str:
    if value is None:  # e.g. a spectral gap that could not be computed
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    buf.write("| " + " | ".join(columns) + " |\n")
    buf.write("|" + "---|" * len(columns) + "\n")
    for row in rows:
        buf.write("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |\n")
    return buf.getvalue()
