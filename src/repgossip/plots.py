"""Metric curves of one run or of every run below a sweep folder, as one image, one panel per
metric, against the round, the bytes sent or the wall time.

A plot is often made while runs are still going or after one was cut short, so a damaged line of a
metrics.jsonl is skipped with a warning, and a run without a metric (a synthetic run has
`subspace_dist`, a classification run `test_acc_mean`) is left out of that metric's panel only.

Runs whose configs differ only in `seed` repeat one configuration: when a folder has such repeats,
each configuration is drawn as the mean over its seeds, round by round (the x value too is the
mean, as bytes and time differ between seeds), with a shaded band of +-1 sample std or min to max.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repgossip.errors import StorageError, UsageError
from repgossip.runfolder import record_entry

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
DEFAULT_METRICS = ("test_acc_mean", "subspace_dist", "train_loss", "consensus_dist")
LOG_SCALE = ("consensus_dist", "subspace_dist", "train_loss")
FIRST_FORMATS = ("png", "pdf", "svg")  # named first in the refusal of an unknown suffix
FIGURE_FORMATS = FIRST_FORMATS  # what --format offers; --out takes any suffix of formats()
NEEDS_LATEX = ("pgf",)  # matplotlib lists it, but writing it needs a LaTeX install
X_AXES = ("round", "bytes_sent", "wall_s")
X_LABELS = {"round": "round", "bytes_sent": "bytes sent", "wall_s": "wall time (s)"}
BANDS = ("std", "minmax")
BAND_NAMES = {"std": "mean ± 1 std over seeds", "minmax": "mean, band min to max over seeds"}
DPI = 300  # print resolution
SEED = "seed"

Runs = dict[str, list[dict[str, Any]]]


@dataclass
class Group:
    """One curve: a run, or the seeds of one configuration (drawn as their mean and a band)."""

    label: str
    runs: list[list[dict[str, Any]]]


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


def output_path(folder: Path, out: str | Path | None, fmt: str = "png") -> tuple[Path, str]:
    """The file to write and its format, checked before anything is drawn. A name without a
    suffix gets `.fmt` here (matplotlib would add one silently, and the path printed would not
    be the file written); a suffix decides the format; an unknown suffix or a missing folder is
    one line, not a traceback."""
    if fmt not in FIGURE_FORMATS:
        raise UsageError(f"unknown format '{fmt}'; valid: {', '.join(FIGURE_FORMATS)}")
    target = Path(out) if out else folder / f"curves.{fmt}"
    if not target.suffix:
        target = target.with_name(f"{target.name}.{fmt}")
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
    folder: str | Path,
    metrics: tuple[str, ...] | None = None,
    out: str | Path | None = None,
    *,
    x: str = "round",
    fmt: str = "png",
    band: str = "std",
) -> Path:
    """Draw `metrics` (default by what the runs have) of every run below `folder` against `x`,
    one panel per metric, into `out` (default `folder/curves.<fmt>`) at DPI; returns the path
    written. Seeds of one configuration become a mean and a `band` (see the module's doc)."""
    plt = _pyplot()
    folder = Path(folder)
    runs = find_runs(folder)
    chosen = choose_metrics(runs, metrics)
    target, fmt = output_path(folder, out, fmt)
    fig = draw(folder, runs, chosen, x=x, band=band)
    record_entry(target)  # in a run or sweep folder, the figure is repgossip's (--force may go)
    try:
        fig.savefig(target, dpi=DPI, format=fmt)
    except OSError as err:  # the path was checked: what fails now is storage (exit 5)
        raise StorageError(f"cannot write '{target}': {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return target


def draw(
    folder: Path, runs: Runs, metrics: Sequence[str], *, x: str = "round", band: str = "std"
) -> Any:
    """The figure of `runs` (as `find_runs(folder)` gives them): one panel per metric, one curve
    per group (see `group_runs`). The caller saves and closes it."""
    plt = _pyplot()
    _check_choice("x axis", x, X_AXES)
    _check_choice("band", band, BANDS)
    if not any(_is_number(r.get(x)) for records in runs.values() for r in records):
        raise UsageError(f"no run has '{x}' to put on the x axis; valid: {', '.join(X_AXES)}")
    groups = group_runs(folder, runs)
    title = BAND_NAMES[band] if any(len(g.runs) > 1 for g in groups) else None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        _panel(ax, metric, groups, x, band)
    _legends(axes[0], title)
    fig.tight_layout()
    return fig


def _pyplot() -> Any:
    """pyplot on the Agg backend: a plot is a file, also where there is no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check_choice(what: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise UsageError(f"unknown {what} '{value}'; valid: {', '.join(valid)}")


def group_runs(folder: Path, runs: Runs) -> list[Group]:
    """The curves to draw. Runs whose config.yaml differ only in `seed` form one group, labelled
    by the config keys that tell the groups apart; a run without a readable config is a group of
    its own. Without any group of several runs, each run is its own curve, labelled by its
    folder, as a plot of one run or of a seedless sweep has always been."""
    configs = {label: _config_of(folder, label, len(runs)) for label in runs}
    keyed: dict[str, list[str]] = {}
    for label, config in configs.items():
        keyed.setdefault(_config_key(label, config), []).append(label)
    if all(len(labels) == 1 for labels in keyed.values()):
        return [Group(label, [records]) for label, records in runs.items()]
    varying = _grid_keys(folder) or _varying_keys([c for c in configs.values() if c is not None])
    return [
        Group(_group_label(folder, labels, configs[labels[0]], varying),
              [runs[label] for label in labels])
        for labels in keyed.values()
    ]  # fmt: skip


def _config_of(folder: Path, label: str, count: int) -> dict[str, Any] | None:
    """A run's config (its seed left out), or None where it has no readable config.yaml."""
    import yaml

    run_dir = folder if count == 1 and (folder / METRICS_FILE).is_file() else folder / label
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in config.items() if k != SEED}


def _config_key(label: str, config: dict[str, Any] | None) -> str:
    if config is None:
        return f"run:{label}"  # never equal to a JSON object's text
    return json.dumps(config, sort_keys=True, default=str)


def _grid_keys(folder: Path) -> list[str]:
    """A finished sweep's grid keys but `seed` (summary.csv's columns before `status`): the
    keys its user chose to compare, shorter labels than every config key that differs."""
    try:
        with open(folder / "summary.csv", newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    keys = header[: header.index("status")] if "status" in header else []
    return [k for k in keys if k != SEED]


def _varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config keys whose values differ between runs, in config order."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]


def _group_label(
    folder: Path, labels: Sequence[str], config: Mapping[str, Any] | None, varying: Sequence[str]
) -> str:
    if config is None:
        return labels[0]
    shown = ", ".join(f"{k}={config.get(k)}" for k in varying) or folder.name
    return f"{shown} (n={len(labels)})" if len(labels) > 1 else shown


def _panel(ax: Any, metric: str, groups: Sequence[Group], x: str, band: str) -> None:
    """One metric's curves; the groups without it are named in one warning."""
    log = metric in LOG_SCALE
    missing = [g.label for g in groups if not _draw_group(ax, g, metric, x, band, log)]
    if missing:
        warn(f"no '{metric}' in {', '.join(missing)}; left out of the {metric} panel")
    ax.set_xlabel(X_LABELS[x])
    ax.set_title(metric)
    if log and any(_has_positive(line.get_ydata()) for line in ax.lines):
        # only zeros (consensus distance at round 0 of a run that diverged in round 1) cannot be
        # log-scaled and stay linear; a band whose lower edge is <= 0 reaches the bottom of the
        # axes ("clip"), which is what a std above the mean looks like on a log scale; lines
        # mask such values
        ax.set_yscale("log", nonpositive="clip" if ax.collections else "mask")
    ax.grid(alpha=0.3)


def _has_positive(values: Any) -> bool:
    import numpy as np

    values = np.asarray(values, dtype=float)
    return bool((np.isfinite(values) & (values > 0)).any())


def _draw_group(ax: Any, group: Group, metric: str, x: str, band: str, log: bool) -> bool:
    """Draw one group's curve (a band for several runs); False when no run has `metric`."""
    import numpy as np

    curves = [c for c in (_curve(records, x, metric) for records in group.runs) if c]
    if not curves:
        return False
    if len(curves) == 1:
        ax.plot(*zip(*curves[0].values(), strict=True), label=group.label)
        return True
    rounds = sorted(set.intersection(*(set(c) for c in curves)))
    if len(rounds) < max(len(c) for c in curves):
        warn(f"the runs of {group.label} differ in rounds; drawn over the {len(rounds)} all have")
    values = np.array([[c[r] for r in rounds] for c in curves], dtype=float)  # runs, rounds, 2
    xs, ys = values[:, :, 0].mean(axis=0), values[:, :, 1]
    mean = ys.mean(axis=0)
    low, high = _band(ys, mean, band)
    shown = mean > 0 if log else np.ones_like(mean, dtype=bool)
    (line,) = ax.plot(xs, np.where(shown, mean, np.nan), label=group.label)
    ax.fill_between(xs, low, high, where=shown, color=line.get_color(), alpha=0.25, linewidth=0)
    return True


def _band(ys: Any, mean: Any, band: str) -> tuple[Any, Any]:
    """The band's edges over the runs (axis 0): mean +- sample std (ddof=1), or min to max."""
    if band == "minmax":
        return ys.min(axis=0), ys.max(axis=0)
    spread = ys.std(axis=0, ddof=1)
    return mean - spread, mean + spread


def _curve(records: Sequence[Mapping[str, Any]], x: str, metric: str) -> dict[Any, tuple[Any, Any]]:
    """round -> (x, metric) of the records that have both, the round being what aligns seeds."""
    return {
        r["round"]: (r[x], r[metric])
        for r in records
        if _is_number(r.get(x)) and _is_number(r.get(metric))
    }


def _legends(axes: Sequence[Any], title: str | None = None) -> None:
    """A legend on the first panel, and on any later one that shows runs not named yet; with
    bands, its title says what the line and the band are."""
    named: set[str] = set()
    for ax in axes:
        labels = {line.get_label() for line in ax.get_lines()}
        if labels - named:
            ax.legend(fontsize=8, title=title, title_fontsize=8)
            named |= labels
