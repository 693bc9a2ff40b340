"""Metric-versus-round curves of one run or of every run below a sweep folder, as one image.

A plot is often made while runs are still going or after one was cut short, so a damaged line of a
metrics.jsonl is skipped with a warning, and a run without a metric (a synthetic run has
`subspace_dist`, a classification run `test_acc_mean`) is left out of that metric's panel only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from repgossip.errors import UsageError

METRICS_FILE = "metrics.jsonl"
DEFAULT_METRICS = ("test_acc_mean", "subspace_dist", "train_loss", "consensus_dist")
LOG_SCALE = ("consensus_dist", "subspace_dist", "train_loss")
FIRST_FORMATS = ("png", "pdf", "svg")  # named first in the refusal of an unknown suffix
NEEDS_LATEX = ("pgf",)  # matplotlib lists it, but writing it needs a LaTeX install

Runs = dict[str, list[dict[str, Any]]]


def warn(message: str) -> None:
    print(f"repgossip: warning: {message}", file=sys.stderr)


def find_runs(folder: Path) -> Runs:
    """Label -> metrics records, for `folder` itself or its immediate sub-folders."""
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is not a folder with runs")
    if (folder / METRICS_FILE).is_file():
        candidates = [folder]
    else:
        candidates = sorted(p for p in folder.iterdir() if (p / METRICS_FILE).is_file())
    runs = {}
    for run_dir in candidates:
        records = read_records(run_dir / METRICS_FILE)
        if records:
            runs[run_dir.name] = records
    if not runs:
        raise UsageError(f"no readable {METRICS_FILE} in '{folder}' or its sub-folders")
    return runs


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one metrics.jsonl. A line that is not a whole record (torn by a full disk or
    a kill, or garbled) is skipped, with one warning naming the file: one damaged run must not
    stop the plot of the others."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as err:
        warn(f"cannot read '{path}': {err.strerror or err}; left out")
        return []
    records = [r for r in map(_record, lines) if r is not None]
    skipped = sum(1 for line in lines if line.strip()) - len(records)
    if skipped:
        warn(f"skipped {skipped} unreadable line{'s' if skipped > 1 else ''} of '{path}'")
    return records


def _record(line: bytes) -> dict[str, Any] | None:
    """One evaluation record, or None for a blank or unreadable line."""
    try:
        record = json.loads(line) if line.strip() else None
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8 too
        return None
    return record if isinstance(record, dict) and _is_number(record.get("round")) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def choose_metrics(runs: Runs, asked: Sequence[str] | None) -> tuple[str, ...]:
    """The metrics to draw: those asked for, each of which some run must have, or by default
    each of DEFAULT_METRICS that some run has (a mixed folder gets both task's panels)."""
    available = {k for records in runs.values() for r in records for k, v in r.items()
                 if _is_number(v)}  # fmt: skip
    if asked:
        unknown = [m for m in asked if m not in available]
        if unknown:
            raise UsageError(
                f"unknown metric '{unknown[0]}'; valid: {', '.join(sorted(available))}"
            )
        return tuple(asked)
    chosen = tuple(m for m in DEFAULT_METRICS if m in available)
    if not chosen:
        raise UsageError(f"no run has any of {', '.join(DEFAULT_METRICS)}; choose with --metrics")
    return chosen


def output_path(folder: Path, out: str | Path | None) -> tuple[Path, str]:
    """The file to write and its format, checked before anything is drawn. A name without a
    suffix gets `.png` here (matplotlib would add it silently, and the path printed would not be
    the file written); an unknown suffix or a missing folder is one line, not a traceback."""
    target = Path(out) if out else folder / "curves.png"
    if not target.suffix:
        target = target.with_name(target.name + ".png")
    fmt = target.suffix[1:].lower()
    known = formats()
    if fmt not in known:
        raise UsageError(
            f"cannot write '{target}': unknown image format; valid: {', '.join(known)}"
        )
    if not target.parent.is_dir():
        raise UsageError(f"cannot write '{target}': folder '{target.parent}' does not exist")
    if target.is_dir():
        raise UsageError(f"cannot write '{target}': it is a folder; give a file such as curves.png")
    return target, fmt


def formats() -> list[str]:
    """The image formats matplotlib writes here: png, pdf, svg first."""
    from matplotlib.backend_bases import FigureCanvasBase

    supported = set(FigureCanvasBase.get_supported_filetypes()) - set(NEEDS_LATEX)
    return [*FIRST_FORMATS, *sorted(supported - set(FIRST_FORMATS))]


def plot_runs(
    folder: str | Path, metrics: tuple[str, ...] | None = None, out: str | Path | None = None
) -> Path:
    """Draw `metrics` (default by what the runs have) of every run below `folder`, one panel per
    metric, into `out` (default `folder/curves.png`); returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    runs = find_runs(folder)
    chosen = choose_metrics(runs, metrics)
    target, fmt = output_path(folder, out)
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.5 * len(chosen), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], chosen, strict=True):
        _panel(ax, metric, runs)
    _legends(axes[0])
    fig.tight_layout()
    try:
        fig.savefig(target, dpi=110, format=fmt)
    except OSError as err:
        raise UsageError(f"cannot write '{target}': {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return target


def _panel(ax: Any, metric: str, runs: Mapping[str, list[dict[str, Any]]]) -> None:
    """One metric's curves; the runs without it are named in one warning."""
    missing = []
    for label, records in runs.items():
        points = [(r["round"], r[metric]) for r in records if _is_number(r.get(metric))]
        if not points:
            missing.append(label)
            continue
        rounds, values = zip(*points, strict=True)
        ax.plot(rounds, values, label=label)
    if missing:
        warn(f"no '{metric}' in {', '.join(missing)}; left out of the {metric} panel")
    ax.set_xlabel("round")
    ax.set_title(metric)
    if metric in LOG_SCALE and ax.lines:
        ax.set_yscale("log", nonpositive="mask")
    ax.grid(alpha=0.3)


def _legends(axes: Sequence[Any]) -> None:
    """A legend on the first panel, and on any later one that shows runs not named yet."""
    named: set[str] = set()
    for ax in axes:
        labels = {line.get_label() for line in ax.get_lines()}
        if labels - named:
            ax.legend(fontsize=8)
            named |= labels
