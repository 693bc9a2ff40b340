"""Turn the study's runs (runs/study, written by study/run.py) into the tables and figures of
docs/results.md.

    python study/report.py            # rewrites the generated blocks of docs/results.md and
                                      # docs/figures/*.png; the prose around them is left alone

Every number in a generated block comes from the runs' summary.json and metrics.jsonl; a block
is delimited by `<!-- study:NAME -->` and `<!-- /study:NAME -->` lines. Means and sample standard
deviations are over seeds; a run that failed (diverged) has no summary.json and is counted apart.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from plan import ROOT, RUNS, STEP_ANCHOR, theorem_lr  # noqa: E402

from repgossip.config import KEYS, build_config, builtin_param_names, coerce_any, suggest_key  # noqa: E402
from repgossip.configfile import read_yaml  # noqa: E402
from repgossip.errors import RepgossipError, UsageError  # noqa: E402
from repgossip.runfolder import METRICS_FILE, read_metrics  # noqa: E402
from repgossip.tables import paired_differences  # noqa: E402
from repgossip.text import shown  # noqa: E402

RESULTS = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "figures"
SYNTHETIC_TARGET = 0.1  # subspace distance to the true B*: the representation is found
FMNIST_TARGET = 0.9  # mean personalized test accuracy
ALGORITHM_ORDER = (
    "deprl",
    "fedrep",
    "fedper",
    "fedrod",
    "ditto",
    "dispfl",
    "dpsgd",
    "dfedavgm",
    "fedavg",
    "local",
)
STATUS = "status"  # the sweep table's column after the grid keys: "ok" or "failed: <reason>"
# the summary.json numbers the report reads
SUMMARY_NUMBERS = ("test_acc_mean", "test_acc_p10", "test_acc_min", "consensus_dist",
                   "subspace_dist", "spectral_gap")  # fmt: skip
PARTITION_COLUMNS = (
    ("dirichlet", "alpha", 0.1),
    ("dirichlet", "alpha", 0.5),
    ("shards", "classes_per_worker", 2),
    ("shards", "classes_per_worker", 5),
)


@dataclass(frozen=True)
class Run:
    """One finished or failed run of the study."""

    sweep: str
    config: dict[str, Any]
    summary: dict[str, Any] | None  # None: the run failed or has not finished
    folder: Path
    failed: bool = False  # the sweep recorded it as failed (diverged)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.folder / METRICS_FILE)

    def matches(self, **keys: Any) -> bool:
        return all(self.config.get(k) == v for k, v in keys.items())


def load_runs(root: Path = RUNS) -> list[Run]:
    """Every run folder of every sweep under `root`. A folder whose config or summary cannot be
    read is left out, and a sweep table that cannot be read is ignored (its runs without a
    summary count as unfinished), each with a one-line warning rather than stopping the report."""
    runs = []
    tables: dict[Path, list[TableRow]] = {}
    for config_file in sorted(root.glob("*/*/config.yaml")):
        folder = config_file.parent
        try:
            written = read_yaml(config_file)
            if not written:
                raise UsageError("config.yaml is empty")
            config = build_config(written, foreign="drop").to_dict()
            summary = _read_summary(folder / "summary.json")
        except (RepgossipError, ValueError, OSError) as err:
            print(f"skipped {folder}: {str(err).splitlines()[0]}", file=sys.stderr)
            continue
        failed = summary is None and _listed_as_failed(_table(folder.parent, tables), config)
        runs.append(Run(folder.parent.name, config, summary, folder, failed))
    return runs


def _text(path: Path) -> str:
    """A file's text; one that is not UTF-8 is a one-line UsageError, not a decoding traceback."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path.name} is not UTF-8 text (byte {err.start})") from None


def _read_summary(path: Path) -> dict[str, Any] | None:
    """A run's summary.json, None where there is none (the run failed or has not finished).
    It must be a JSON object whose numbers the report reads are numbers (or null)."""
    if not path.exists():
        return None
    summary = json.loads(_text(path))
    if not isinstance(summary, dict):
        raise UsageError(f"{path.name} holds a JSON {type(summary).__name__}, not an object")
    for key in SUMMARY_NUMBERS:
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{path.name}: {key} is {shown(value)}, not a number")
    return summary


TableRow = tuple[dict[str, Any], bool]  # a summary.csv row's grid values, and whether it failed


def _table(sweep: Path, tables: dict[Path, list[TableRow]]) -> list[TableRow]:
    """The rows of `sweep`'s summary.csv, read once per sweep; a table that cannot be read is
    reported once and counts as empty."""
    path = sweep / "summary.csv"
    if path not in tables:
        try:
            tables[path] = _read_table(path) if path.exists() else []
        except (RepgossipError, ValueError, OSError, csv.Error) as err:
            print(f"ignored {path}: {str(err).splitlines()[0]}; its runs without a summary count "
                  "as unfinished", file=sys.stderr)  # fmt: skip
            tables[path] = []
    return tables[path]


def _read_table(path: Path) -> list[TableRow]:
    """A sweep's summary.csv: grid keys, then `status`, then results. Its cells are grid values
    as typed on the command line, read back as the config reads them."""
    reader = csv.reader(io.StringIO(_text(path)))
    header = next(reader, [])
    if STATUS not in header:
        raise UsageError(f"no '{STATUS}' column")
    keys = header[: header.index(STATUS)]
    known = {*KEYS, *builtin_param_names()}
    unknown = [k for k in keys if k not in known]
    if not keys or unknown:
        raise UsageError(
            suggest_key(unknown[0], known) if unknown else f"no grid key before '{STATUS}'"
        )
    rows = []
    for cells in (c for c in reader if c):  # a blank line is no row
        line = f"line {reader.line_num}"
        if len(cells) != len(header):
            raise UsageError(f"{line} has {len(cells)} cells where the header has {len(header)}")
        try:
            values = {
                k: coerce_any(k, cell) for k, cell in zip(keys, cells[: len(keys)], strict=True)
            }
        except UsageError as err:
            raise UsageError(f"{line}: {err}") from None
        rows.append((values, cells[len(keys)].startswith("failed")))
    return rows


def _listed_as_failed(rows: Sequence[TableRow], config: dict[str, Any]) -> bool:
    """Whether the sweep's table marks this run failed: a run without a summary is either failed
    (diverged) or not finished yet, and only the sweep's table tells which."""
    for values, failed in rows:
        if all(config.get(k) == v for k, v in values.items()):
            return failed
    return False


def select(runs: Iterable[Run], sweep: str | Sequence[str], **keys: Any) -> list[Run]:
    sweeps = (sweep,) if isinstance(sweep, str) else tuple(sweep)
    return [r for r in runs if any(r.sweep.startswith(s) for s in sweeps) and r.matches(**keys)]


def values(runs: Iterable[Run], key: str) -> list[float]:
    return [float(r.summary[key]) for r in runs if r.summary and r.summary.get(key) is not None]


def mean_std(xs: Sequence[float], digits: int = 3, kind: str = "f") -> str:
    """Mean ± sample std, with `digits` decimals (`kind` "f") or significant digits ("g")."""
    if not xs:
        return "n/a"
    spec = f".{digits}{kind}"
    if len(xs) == 1:
        return f"{xs[0]:{spec}}"
    return f"{statistics.mean(xs):{spec}} ± {statistics.stdev(xs):{spec}}"


def failed_note(runs: Sequence[Run]) -> str:
    failed = sum(r.failed for r in runs)
    unfinished = sum(r.summary is None and not r.failed for r in runs)
    notes = [f"{failed}/{len(runs)} diverged"] * bool(failed)
    notes += [f"{unfinished} unfinished"] * bool(unfinished)
    return f" ({', '.join(notes)})" if notes else ""


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- part 1: accuracy


def _accuracy_variants(runs: list[Run]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, sweep prefix, extra keys) per table row: each algorithm, dfedavgm twice."""
    rows = []
    for name in ALGORITHM_ORDER:
        rows.append((name, "accuracy-", {"algorithm": name}))
        if name == "dfedavgm":
            rows[-1] = ("dfedavgm (lr 0.05)", "accuracy-", {"algorithm": name, "lr": 0.05})
            rows.append(("dfedavgm (lr 0.01)", "accuracy-", {"algorithm": name, "lr": 0.01}))
    return rows


def accuracy_block(runs: list[Run], topology: str) -> str:
    header = ["algorithm"] + [f"{p} {k.split('_')[0]}={v}" for p, k, v in PARTITION_COLUMNS]
    rows = []
    for label, sweep, keys in _accuracy_variants(runs):
        cells = [label]
        for partition, knob, value in PARTITION_COLUMNS:
            chosen = [
                r
                for r in select(runs, sweep, partition=partition, **{knob: value}, **keys)
                if r.config["topology"] == topology or r.sweep.endswith("-central")
            ]
            mean = mean_std(values(chosen, "test_acc_mean"))
            p10 = mean_std(values(chosen, "test_acc_p10"), 2)
            cells.append(f"{mean} (p10 {p10}){failed_note(chosen)}" if chosen else "n/a")
        rows.append(cells)
    return table(header, rows)


def accuracy_ranks(runs: list[Run]) -> str:
    """Where DePRL ranks among the algorithms in each of the 8 settings, by mean accuracy."""
    lines = []
    for topology in ("ring", "erdos_renyi"):
        for partition, knob, value in PARTITION_COLUMNS:
            scores = {}
            for label, sweep, keys in _accuracy_variants(runs):
                chosen = [
                    r
                    for r in select(runs, sweep, partition=partition, **{knob: value}, **keys)
                    if r.config["topology"] == topology or r.sweep.endswith("-central")
                ]
                accs = values(chosen, "test_acc_mean")
                if accs and len(accs) == len(chosen):
                    scores[label] = statistics.mean(accs)
            if "deprl" not in scores:
                continue
            ranked = sorted(scores, key=lambda k: -scores[k])
            best = ranked[0]
            lines.append(
                f"| {topology} | {partition} {knob.split('_')[0]}={value} | "
                f"{ranked.index('deprl') + 1} of {len(ranked)} | {best} {scores[best]:.3f} | "
                f"{scores['deprl'] - scores.get('local', float('nan')):+.3f} |"
            )
    head = "| topology | partition | DePRL's rank | best (mean acc) | DePRL - Local |\n"
    return head + "|---|---|---|---|---|\n" + "\n".join(lines)


# ---------------------------------------------------------------- part 2: where it pays


def _pays_mean(runs: list[Run], algorithm: str, classes: int, samples: int) -> float | None:
    chosen = select(
        runs, "pays", algorithm=algorithm, classes_per_worker=classes, samples_per_worker=samples
    )
    accs = [r for r in chosen if r.sweep == "pays"]
    xs = values(accs, "test_acc_mean")
    return statistics.mean(xs) if xs else None


def _pays_grid(runs: list[Run]) -> tuple[list[int], list[int]]:
    pays = [r for r in runs if r.sweep == "pays"]
    classes = sorted({r.config["classes_per_worker"] for r in pays})
    samples = sorted({r.config["samples_per_worker"] for r in pays})
    return classes, samples


def pays_block(runs: list[Run]) -> str:
    classes, samples = _pays_grid(runs)
    header = [
        "classes per worker",
        "samples per worker",
        "deprl",
        "local",
        "dpsgd",
        "deprl - local",
        "deprl - dpsgd",
    ]
    rows = []
    for c in classes:
        for n in samples:
            accs = {a: _pays_mean(runs, a, c, n) for a in ("deprl", "local", "dpsgd")}
            if any(v is None for v in accs.values()):
                continue
            d, lo, dp = accs["deprl"], accs["local"], accs["dpsgd"]
            assert d is not None and lo is not None and dp is not None
            rows.append(
                [c, n, f"{d:.3f}", f"{lo:.3f}", f"{dp:.3f}", f"**{d - lo:+.3f}**", f"{d - dp:+.3f}"]
            )
    return table(header, rows)


def pays_figure(runs: list[Run]) -> Path | None:
    classes, samples = _pays_grid(runs)
    if not classes:
        return None
    fig, axes = plt.subplots(1, len(classes), figsize=(4 * len(classes), 3.4), sharey=True)
    for ax, c in zip(axes if len(classes) > 1 else [axes], classes, strict=True):
        for algorithm in ("deprl", "local", "dpsgd"):
            xs, ys = [], []
            for n in samples:
                value = _pays_mean(runs, algorithm, c, n)
                if value is not None:
                    xs.append(n)
                    ys.append(value)
            ax.plot(xs, ys, marker="o", label=algorithm)
        ax.set_xscale("log")
        ax.set_title(f"{c} classes per worker")
        ax.set_xlabel("training samples per worker")
        ax.grid(alpha=0.3)
    first = axes[0] if len(classes) > 1 else axes
    first.set_ylabel("mean test accuracy (2 seeds)")
    first.legend()
    return _save(fig, "pays.png")


def accuracy_at(run: Run, round_index: int) -> float | None:
    """Mean test accuracy of `run` at evaluation round `round_index`; None where not evaluated."""
    for record in run.metrics():
        if record["round"] == round_index:
            return float(record["test_acc_mean"])
    return None


PAYS_LONG_ROUNDS = (20, 60)


def _long_mean(
    runs: list[Run], algorithm: str, classes: int, samples: int, at: int
) -> float | None:
    chosen = [
        r
        for r in runs
        if r.sweep == "pays-long"
        and r.summary
        and r.matches(algorithm=algorithm, classes_per_worker=classes, samples_per_worker=samples)
    ]
    accs = [a for a in (accuracy_at(r, at) for r in chosen) if a is not None]
    return statistics.mean(accs) if accs else None


def pays_long_block(runs: list[Run]) -> str:
    long = [r for r in runs if r.sweep == "pays-long"]
    settings = sorted(
        {(r.config["classes_per_worker"], r.config["samples_per_worker"]) for r in long}
    )
    header = ["classes per worker", "samples per worker"]
    for at in PAYS_LONG_ROUNDS:
        header += [f"deprl @{at}", f"local @{at}", f"dpsgd @{at}", f"deprl - local @{at}"]
    rows = []
    for classes, samples in settings:
        row: list[Any] = [classes, samples]
        for at in PAYS_LONG_ROUNDS:
            accs = {
                a: _long_mean(runs, a, classes, samples, at) for a in ("deprl", "local", "dpsgd")
            }
            row += ["n/a" if v is None else f"{v:.3f}" for v in accs.values()]
            d, lo = accs["deprl"], accs["local"]
            row.append("n/a" if d is None or lo is None else f"**{d - lo:+.3f}**")
        rows.append(row)
    return table(header, rows)


def pays_long_figure(runs: list[Run]) -> Path | None:
    long = [r for r in runs if r.sweep == "pays-long" and r.summary]
    settings = sorted(
        {(r.config["classes_per_worker"], r.config["samples_per_worker"]) for r in long}
    )
    if not settings:
        return None
    fig, axes = plt.subplots(
        2,
        -(-len(settings) // 2),
        figsize=(3.2 * -(-len(settings) // 2), 6),
        sharex=True,
        squeeze=False,
    )
    for ax, (classes, samples) in zip(axes.flat, settings, strict=False):
        for algorithm in ("deprl", "local", "dpsgd"):
            chosen = [
                r
                for r in long
                if r.matches(
                    algorithm=algorithm, classes_per_worker=classes, samples_per_worker=samples
                )
            ]
            curves = [[(m["round"], m["test_acc_mean"]) for m in r.metrics()] for r in chosen]
            if not curves:
                continue
            rounds = [x for x, _ in curves[0]]
            mean = [statistics.mean(c[i][1] for c in curves) for i in range(len(rounds))]
            ax.plot(rounds, mean, label=algorithm)
        ax.set_title(f"{classes} classes, {samples} samples", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean test accuracy")
    axes.flat[0].legend(fontsize=8)
    return _save(fig, "pays-long.png")


def knobs_block(runs: list[Run]) -> str:
    knobs = [r for r in runs if r.sweep == "pays-knobs"]
    heads = sorted({r.config["head_epochs"] for r in knobs})
    lrs = sorted({r.config["lr_body"] for r in knobs})
    header = ["head epochs (tau) \\ lr_body", *[str(x) for x in lrs]]
    rows = []
    for h in heads:
        rows.append(
            [h]
            + [
                mean_std(
                    values(select(knobs, "pays-knobs", head_epochs=h, lr_body=lr), "test_acc_mean")
                )
                for lr in lrs
            ]
        )
    local = [r for r in runs if r.sweep == "pays-knobs-local"]
    local_rows = [
        f"local at lr={lr}: {mean_std(values(select(local, 'pays-knobs-local', lr=lr), 'test_acc_mean'))}"
        for lr in sorted({r.config["lr"] for r in local})
    ]
    return table(header, rows) + "\n\n" + "; ".join(local_rows) + "."


# ---------------------------------------------------------------- part 3: linear speedup


def first_round(
    metrics: list[dict[str, Any]], key: str, reached: Callable[[float], bool]
) -> int | None:
    for record in metrics:
        value = record.get(key)
        if value is not None and reached(value):
            return int(record["round"])
    return None


@dataclass(frozen=True)
class Target:
    """What "reached" means for one speedup sweep: the first round where `key` passes `bound`."""

    sweep: str
    key: str
    bound: float
    below: bool  # True: reached when key <= bound; False: when key >= bound

    def reached(self, value: float) -> bool:
        return value <= self.bound if self.below else value >= self.bound

    def __str__(self) -> str:
        return f"{self.key} {'<=' if self.below else '>='} {self.bound}"


SPEEDUP_TARGETS = (
    Target("speedup-synthetic", "subspace_dist", SYNTHETIC_TARGET, below=True),
    Target("speedup-fmnist", "test_acc_mean", FMNIST_TARGET, below=False),
)


def rounds_to_target(runs: list[Run], target: Target) -> dict[tuple[str, int], list[int | None]]:
    """Per (topology, workers): each seed's first round at the target, None where never."""
    out: dict[tuple[str, int], list[int | None]] = defaultdict(list)
    for r in runs:
        if r.sweep != target.sweep:
            continue
        first = None if r.summary is None else first_round(r.metrics(), target.key, target.reached)
        out[(r.config["topology"], r.config["workers"])].append(first)
    return out


def _median_reached(rounds: list[int | None]) -> float | None:
    """The median over all seeds, a seed that never reached the target counting as infinite:
    None where half or more never reached it."""
    ordered = sorted(rounds, key=lambda x: float("inf") if x is None else x)
    middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    if not middle or any(x is None for x in middle):
        return None
    return statistics.mean(x for x in middle if x is not None)


def speedup_block(runs: list[Run]) -> str:
    rows = []
    for target in SPEEDUP_TARGETS:
        by = rounds_to_target(runs, target)
        for (topology, workers), rounds in sorted(by.items()):
            # the 1/N line starts at the smallest N whose median seed reached the target
            reached = sorted(w for t, w in by if t == topology and _median_reached(by[(t, w)]))
            smallest = reached[0] if reached else workers
            base = _median_reached(by[(topology, smallest)])
            median = _median_reached(rounds)
            finals = values(
                select(runs, target.sweep, topology=topology, workers=workers), target.key
            )
            rows.append(
                [
                    target.sweep.removeprefix("speedup-"),
                    topology,
                    str(target),
                    workers,
                    len(rounds),
                    sum(x is None for x in rounds),
                    "never" if median is None else f"{median:g}",
                    "n/a"
                    if base is None or workers < smallest
                    else f"{base * smallest / workers:.1f}",
                    f"{statistics.median(finals):.4f}" if finals else "n/a",
                ]
            )
    header = [
        "task",
        "topology",
        "target",
        "workers",
        "seeds",
        "seeds that never reached it",
        "median rounds to target",
        "1/N line (from the smallest N that reached it)",
        "median final value",
    ]
    return table(header, rows)


def speedup_figure(runs: list[Run]) -> Path | None:
    fig, axes = plt.subplots(1, len(SPEEDUP_TARGETS), figsize=(9, 3.6))
    drawn = False
    for ax, target in zip(axes, SPEEDUP_TARGETS, strict=True):
        by = rounds_to_target(runs, target)
        for index, topology in enumerate(sorted({t for t, _ in by})):
            points = [(w, _median_reached(by[(t, w)])) for t, w in sorted(by) if t == topology]
            reached = [(w, m) for w, m in points if m is not None]
            if not reached:
                continue
            drawn = True
            ws, ms = zip(*reached, strict=True)
            ax.plot(ws, ms, marker="o", label=f"{topology} (median)")
            ideal = [ms[0] * ws[0] / w for w in ws]
            ax.plot(ws, ideal, linestyle="--", color="grey", label="1/N" if index == 0 else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("workers N")
        ax.set_ylabel("rounds to target")
        ax.set_title(f"{target.sweep.removeprefix('speedup-')}: {target}", fontsize=9)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    return _save(fig, "speedup.png") if drawn else None


# The theorem's quantity (stationarity=true) against N: each setting's sweep, grid topology, label.
@dataclass(frozen=True)
class Floors:
    sweep: str
    topology: str
    label: str


STATIONARITY_SETTINGS = (
    Floors("stationarity", "complete", "complete, batch 16"),
    Floors("stationarity", "ring", "ring, batch 16"),
    Floors("stationarity-fullbatch", "complete", "complete, full batch"),
)
STATIONARITY_TERMS = ("stationarity_body", "stationarity_head")


def floor(run: Run, key: str) -> float | None:
    """The mean of `key` over the evaluations of the second half of the run: the level the
    stochastic and consensus terms hold it at once the initial decrease is over."""
    records = run.metrics()
    last = max((int(r["round"]) for r in records), default=0)
    late = [float(r[key]) for r in records if int(r["round"]) > last / 2 and key in r]
    return statistics.mean(late) if late else None


def floors(runs: list[Run], setting: Floors, key: str) -> dict[int, list[float]]:
    """Each worker count's floors of `key`, one per seed that ran."""
    by: dict[int, list[float]] = defaultdict(list)
    own = [r for r in runs if r.sweep == setting.sweep and r.matches(topology=setting.topology)]
    for run in own:  # the sweep itself: "stationarity" is a prefix of the full-batch control's
        value = floor(run, key) if run.summary else None
        if value is not None:
            by[int(run.config["workers"])].append(value)
    return dict(sorted(by.items()))


def fitted_slope(by_workers: dict[int, list[float]]) -> float | None:
    """Least-squares slope of log(floor) against log(N) over every seed's point: -1 is the
    theorem's 1/N, 0 no dependence on N."""
    points = [(math.log(n), math.log(v)) for n, vs in by_workers.items() for v in vs if v > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = statistics.mean(x for x, _ in points)
    mean_y = statistics.mean(y for _, y in points)
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return num / sum((x - mean_x) ** 2 for x, _ in points)


def stationarity_block(runs: list[Run]) -> str:
    columns = [(s, k) for s in STATIONARITY_SETTINGS for k in STATIONARITY_TERMS]
    data = {column: floors(runs, *column) for column in columns}
    workers = sorted({n for by in data.values() for n in by})
    rows = [[n, *(mean_std(data[c].get(n, []), 3, "g") for c in columns)] for n in workers]
    slopes = [fitted_slope(data[c]) for c in columns]
    rows.append(["fitted slope", *(f"{s:+.2f}" if s is not None else "n/a" for s in slopes)])
    header = ["workers N"] + [f"{s.label}: {k.removeprefix('stationarity_')}" for s, k in columns]
    return table(header, rows)


def stationarity_figure(runs: list[Run]) -> Path | None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    drawn = False
    for ax, key in zip(axes, STATIONARITY_TERMS, strict=True):
        for setting in STATIONARITY_SETTINGS:
            by = floors(runs, setting, key)
            if not by:
                continue
            drawn = True
            ns = list(by)
            means = [statistics.mean(by[n]) for n in ns]
            line = ax.plot(ns, means, marker="o", label=setting.label)[0]
            for n in ns:
                ax.scatter([n] * len(by[n]), by[n], s=8, color=line.get_color(), alpha=0.5)
            slope = fitted_slope(by)
            if slope is not None:
                anchor = math.exp(statistics.mean(math.log(m) for m in means if m > 0))
                middle = math.exp(statistics.mean(math.log(n) for n in ns))
                fit = [anchor * (n / middle) ** slope for n in ns]
                ax.plot(ns, fit, linestyle=":", color=line.get_color(),
                        label=f"fit: slope {slope:+.2f}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("workers N")
        ax.set_ylabel(f"{key}, second-half mean")
        ax.set_title(key.replace("stationarity_", "") + " term", fontsize=9)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
    return _save(fig, "stationarity.png") if drawn else None


def round_average(run: Run, key: str) -> float | None:
    """The theorem's own average: the mean of `key` over the iterates of rounds 0 to K - 1 (the
    records before the last round), every round evaluated."""
    records = run.metrics()
    last = max((int(r["round"]) for r in records), default=0)
    chosen = {
        int(r["round"]): float(r[key]) for r in records if int(r["round"]) < last and key in r
    }
    if not run.summary or sorted(chosen) != list(range(last)):  # unfinished, or rounds missing
        return None
    return statistics.mean(chosen.values())


STEP_RULES = ("fixed", "theorem")  # lr 0.02 at every N, or plan.theorem_lr(N)


def step_averages(runs: list[Run], rule: str, key: str) -> dict[int, list[float]]:
    """Per worker count, each seed's round average of `key` under the step rule (a run that did
    not finish, or missed a round's record, is left out: the seeds column counts what is in)."""
    by: dict[int, list[float]] = defaultdict(list)
    for run in (r for r in runs if r.sweep.startswith("stationarity-step-n")):
        workers = int(run.config["workers"])
        lr = STEP_ANCHOR[1] if rule == "fixed" else theorem_lr(workers)
        value = round_average(run, key) if math.isclose(run.config["lr"], lr) else None
        if value is not None:
            by[workers].append(value)
    return dict(sorted(by.items()))


def step_block(runs: list[Run]) -> str:
    columns = [(rule, key) for rule in STEP_RULES for key in STATIONARITY_TERMS]
    data = {column: step_averages(runs, *column) for column in columns}
    workers = sorted({n for by in data.values() for n in by})
    seeds = {rule: data[(rule, STATIONARITY_TERMS[0])] for rule in STEP_RULES}
    rows = [[n, f"{theorem_lr(n):g}", " / ".join(str(len(seeds[r].get(n, []))) for r in STEP_RULES),
             *(mean_std(data[c].get(n, []), 3, "g") for c in columns)]
            for n in workers]  # fmt: skip
    slopes = [fitted_slope(data[c]) for c in columns]
    rows.append(
        ["fitted slope", "", "", *(f"{s:+.2f}" if s is not None else "n/a" for s in slopes)]
    )
    header = ["workers N", "theorem's lr", "seeds (fixed / theorem)"] + [
        f"lr {'0.02' if rule == 'fixed' else 'sqrt(N/K) rule'}: {key.removeprefix('stationarity_')}"
        for rule, key in columns
    ]
    return table(header, rows)


def step_figure(runs: list[Run]) -> Path | None:
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    drawn = False
    for rule in STEP_RULES:
        by = step_averages(runs, rule, "stationarity_body")
        if not by:
            continue
        drawn = True
        ns = list(by)
        slope = fitted_slope(by)
        label = "lr 0.02" if rule == "fixed" else "lr proportional to sqrt(N/K)"
        if slope is not None:
            label += f" (slope {slope:+.2f})"
        ax.plot(ns, [statistics.mean(by[n]) for n in ns], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers N")
    ax.set_ylabel("stationarity_body, mean over rounds")
    ax.set_title("the theorem's average, complete graph, K = 400", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    return _save(fig, "stationarity-step.png") if drawn else None


# ---------------------------------------------------------------- part 4: topology


def topology_block(runs: list[Run]) -> str:
    chosen = [r for r in runs if r.sweep == "topology"]
    gaps = {r.config["topology"]: r.summary["spectral_gap"] for r in chosen if r.summary}
    names = sorted(gaps, key=lambda t: gaps[t])
    rows = []
    for t in names:
        row = [t, mean_std(values(select(chosen, "topology", topology=t), "spectral_gap"), 4)]
        for algorithm in ("deprl", "dpsgd"):
            picked = select(chosen, "topology", topology=t, algorithm=algorithm)
            row += [
                mean_std(values(picked, "test_acc_mean")) + failed_note(picked),
                mean_std(values(picked, "consensus_dist")),
            ]
        rows.append(row)
    header = [
        "topology",
        "spectral gap",
        "deprl acc",
        "deprl consensus dist",
        "dpsgd acc",
        "dpsgd consensus dist",
    ]
    return table(header, rows)


def topology_figure(runs: list[Run]) -> Path | None:
    chosen = [r for r in runs if r.sweep == "topology" and r.summary]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for algorithm, marker in (("deprl", "o"), ("dpsgd", "s")):
        picked = [r for r in chosen if r.config["algorithm"] == algorithm]
        gaps = [r.summary["spectral_gap"] for r in picked if r.summary]
        for ax, key in zip(axes, ("test_acc_mean", "consensus_dist"), strict=True):
            ax.scatter(
                gaps,
                [r.summary[key] for r in picked if r.summary],
                marker=marker,
                label=algorithm,
                alpha=0.7,
            )
    for ax, label in zip(axes, ("mean test accuracy", "consensus distance"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("spectral gap of W")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, "topology.png")


# ---------------------------------------------------------------- part 5: ablations


def ablations_block(runs: list[Run]) -> str:
    variants = (
        ("base: body 1 epoch, momentum 0, metropolis, gossip after training", "ablation-base", {}),
        ("body 1 step instead of 1 epoch", "ablation-body-one-step", {}),
        ("momentum 0.9 kept across rounds", "ablation-momentum", {"reset_momentum": False}),
        (
            "momentum 0.9 reset each round (authors' code)",
            "ablation-momentum",
            {"reset_momentum": True},
        ),
        ("uniform_row mixing (authors' code)", "ablation-uniform-row", {}),
        ("gossip before local training", "ablation-gossip-first", {}),
    )
    rows = []
    for label, sweep, keys in variants:
        picked = [r for r in runs if r.sweep == sweep and r.matches(**keys)]
        rows.append(
            [
                label,
                len(picked),
                mean_std(values(picked, "test_acc_mean")) + failed_note(picked),
                mean_std(values(picked, "test_acc_p10"), 2),
                mean_std(values(picked, "consensus_dist")),
            ]
        )
    return table(["variant", "seeds", "mean acc", "p10 acc", "consensus dist"], rows)


# ---------------------------------------------------------------- part 6: the remainder batch

NOISE_ROUNDS = (21, 30)  # the last ten rounds: near the plateau, where the spread is noise


def late_accuracies(run: Run) -> list[float]:
    """Mean test accuracy at every evaluated round in NOISE_ROUNDS."""
    first, last = NOISE_ROUNDS
    return [float(r["test_acc_mean"]) for r in run.metrics() if first <= r["round"] <= last]


def late_pooled(run: Run) -> list[float]:
    """Pooled test accuracy (all correct over all test samples, as PFLlib reports it) at every
    evaluated round in NOISE_ROUNDS."""
    first, last = NOISE_ROUNDS
    return [
        float(r["test_acc_pooled"])
        for r in run.metrics()
        if first <= r["round"] <= last and "test_acc_pooled" in r
    ]


def noise_block(
    runs: list[Run], prefix: str = "noise", algorithms: tuple[str, ...] = ("ditto",)
) -> str:
    """Per algorithm (FedRoD per schedule) and last_batch policy: the mean accuracy of rounds
    21-30 and its round-to-round standard deviation, each averaged over seeds (mean ± std over
    seeds), plus the pooled accuracy of the same rounds."""
    variants = [(name, f"{prefix}-{name}", {}) for name in algorithms] + [
        (f"fedrod {schedule}", f"{prefix}-fedrod", {"fedrod_schedule": schedule})
        for schedule in ("interleaved", "sequential")
    ]
    rows = []
    for label, sweep, keys in variants:
        for policy in ("merge", "drop", "keep"):
            picked = [
                r
                for r in runs
                if r.sweep == sweep and r.summary and r.matches(last_batch=policy, **keys)
            ]
            late = [late_accuracies(r) for r in picked]
            late = [xs for xs in late if len(xs) > 1]
            pooled = [xs for xs in (late_pooled(r) for r in picked) if xs]
            rows.append(
                [
                    label,
                    policy,
                    len(late),
                    mean_std([statistics.mean(xs) for xs in late]),
                    mean_std([statistics.stdev(xs) for xs in late], 4),
                    mean_std([statistics.mean(xs) for xs in pooled]),
                ]
            )
    first, last = NOISE_ROUNDS
    return table(
        ["algorithm", "last_batch", "seeds", f"mean acc, rounds {first}-{last}",
         f"round-to-round std, rounds {first}-{last}", "pooled acc, same rounds"],
        rows,
    )  # fmt: skip


# ---------------------------------------------------------------- HAPT


def hapt_block(runs: list[Run]) -> str:
    rows = []
    for algorithm in ("deprl", "local", "dpsgd"):
        picked = [r for r in runs if r.sweep == "hapt" and r.config["algorithm"] == algorithm]
        rows.append(
            [
                algorithm,
                len(picked),
                mean_std(values(picked, "test_acc_mean")) + failed_note(picked),
                mean_std(values(picked, "test_acc_p10"), 3),
                mean_std(values(picked, "test_acc_min"), 3),
            ]
        )
    return table(["algorithm", "seeds", "mean acc", "p10 acc", "worst worker"], rows)


# ---------------------------------------------------------------- part 7: the authors' setting


PAPER_SWEEP = "paper-paired"


def paper_block(runs: list[Run]) -> str:
    """Each algorithm under the authors' recipe, and DePRL minus it seed by seed (the sweep's own
    pairing, tables.paired_differences): mean ± std over the seeds both ran, and how many of
    those differences are above zero."""
    own = [r for r in runs if r.sweep == PAPER_SWEEP]
    rows = [
        {"algorithm": r.config["algorithm"], "seed": r.config["seed"],
         STATUS: "ok" if r.summary else "failed", **(r.summary or {})}
        for r in own
    ]  # fmt: skip
    pairs = {
        d["algorithm"]: d
        for d in paired_differences(rows, ["algorithm", "seed"], ("algorithm", "deprl"))
    }
    lines = []
    for algorithm in (a for a in ALGORITHM_ORDER if any(r["algorithm"] == a for r in rows)):
        mine = [r for r in own if r.config["algorithm"] == algorithm]
        cells = [algorithm, f"{sum(r.summary is not None for r in mine)}{failed_note(mine)}",
                 mean_std(values(mine, "test_acc_mean")), mean_std(values(mine, "test_acc_p10"))]  # fmt: skip
        for metric in ("test_acc_mean", "test_acc_p10"):
            pair = pairs.get(algorithm)
            cells.append(_paired_cell(pair, metric) if pair else "reference")
        lines.append(cells)
    header = ["algorithm", "seeds", "mean acc", "p10 acc",
              "DePRL minus it: mean acc", "DePRL minus it: p10 acc"]  # fmt: skip
    return table(header, lines)


# Each knob of the recipe (study/plan.py PAPER_KNOBS), as the table names it
KNOB_LABELS = {
    "momentum-kept": "momentum kept across rounds",
    "no-momentum": "no momentum (plain SGD)",
    "adam": "Adam, lr 0.001",
    "no-clipping": "no gradient clipping",
    "gossip-after": "gossip after local training",
    "eval-average": "evaluated on the average body",
}
RECIPE = "the recipe"


def paper_knobs_block(runs: list[Run]) -> str:
    """Each algorithm of the knob sweeps under the recipe and under each knob turned, with the
    recipe minus the knob seed by seed (paired with paper-paired's run of the same algorithm and
    seed): positive where the authors' choice helps."""
    variants = {RECIPE: [r for r in runs if r.sweep == PAPER_SWEEP]}
    variants |= {label: [r for r in runs if r.sweep == f"paper-knob-{name}"]
                 for name, label in KNOB_LABELS.items()}  # fmt: skip
    knobbed = {r.config["algorithm"] for label in KNOB_LABELS.values() for r in variants[label]}
    algorithms = [a for a in ALGORITHM_ORDER if a in knobbed]
    lines = []
    for algorithm in algorithms:
        rows = [
            {"variant": label, "seed": r.config["seed"],
             STATUS: "ok" if r.summary else "failed", **(r.summary or {})}
            for label, rs in variants.items() for r in rs if r.config["algorithm"] == algorithm
        ]  # fmt: skip
        differences = paired_differences(rows, ["variant", "seed"], ("variant", RECIPE))
        pairs = {d["variant"]: d for d in differences}
        for label, rs in variants.items():
            mine = [r for r in rs if r.config["algorithm"] == algorithm]
            pair = pairs.get(label)
            lines.append([
                algorithm, label, f"{sum(r.summary is not None for r in mine)}{failed_note(mine)}",
                mean_std(values(mine, "test_acc_mean")), mean_std(values(mine, "test_acc_p10")),
                "reference" if label == RECIPE else _paired_cell(pair or {}, "test_acc_mean"),
                mean_std(values(mine, "consensus_dist"), 2, "g"),
            ])  # fmt: skip
    header = ["algorithm", "variant", "seeds", "mean acc", "p10 acc",
              "the recipe minus it: mean acc", "consensus dist"]  # fmt: skip
    return table(header, lines)


def _paired_cell(pair: dict[str, Any], metric: str) -> str:
    diff, std = pair.get(f"{metric}_diff"), pair.get(f"{metric}_diff_std")
    if diff is None:
        return "n/a"
    spread = f" ± {std:.3f}" if std is not None else ""
    shown = round(diff, 3) or 0.0  # a difference that rounds to zero shows as +0.000, not -0.000
    return f"{shown:+.3f}{spread} ({pair[f'{metric}_positive']} seeds above 0)"


# ---------------------------------------------------------------- writing


def _save(fig: Any, name: str) -> Path:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fill(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- study:{name} -->\n).*?(<!-- /study:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs/results.md has no block <!-- study:{name} -->")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def blocks(runs: list[Run]) -> dict[str, str]:
    """Every generated block of docs/results.md, by name."""
    return {
        "accuracy-ring": accuracy_block(runs, "ring"),
        "accuracy-erdos_renyi": accuracy_block(runs, "erdos_renyi"),
        "accuracy-ranks": accuracy_ranks(runs),
        "pays": pays_block(runs),
        "pays-long": pays_long_block(runs),
        "knobs": knobs_block(runs),
        "speedup": speedup_block(runs),
        "stationarity": stationarity_block(runs),
        "stationarity-step": step_block(runs),
        "topology": topology_block(runs),
        "ablations": ablations_block(runs),
        "noise": noise_block(runs),
        "noise-classwise": noise_block(runs, "noise-classwise", ("fedavg",)),
        "hapt": hapt_block(runs),
        "paper": paper_block(runs),
        "paper-knobs": paper_knobs_block(runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)  # no options: --help says what it does before it writes anything
    runs = load_runs()
    if not runs:
        print(f"no runs under {RUNS}: run `python study/run.py` first", file=sys.stderr)
        return 2
    text = RESULTS.read_text()
    for name, body in blocks(runs).items():
        text = fill(text, name, body)  # first: a missing block stops before anything is written
    figures = (pays_figure, pays_long_figure, speedup_figure, stationarity_figure, step_figure,
               topology_figure)  # fmt: skip
    for figure in figures:
        path = figure(runs)
        if path:
            print(f"wrote {path.relative_to(ROOT)}")
    RESULTS.write_text(text)
    print(
        f"wrote {RESULTS.relative_to(ROOT)} from {len(runs)} runs "
        f"({sum(r.failed for r in runs)} failed, "
        f"{sum(r.summary is None and not r.failed for r in runs)} unfinished)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
