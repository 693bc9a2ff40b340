"""A sweep's tables: one row per run (summary.csv, summary.md, the printed table); with `seed` in
the grid, one row per configuration with the mean and sample std over its seeds
(summary_by_config.csv); and, asked for (`--paired-with algorithm=deprl`), the differences of a
reference configuration to each other one, seed by seed (summary_paired.csv).

Why paired: seeds share the partition, the graph and the initialisation across algorithms, so the
difference of two algorithms on one seed is free of the seed-to-seed spread that their separate
means carry; its mean, its std over seeds and how many seeds are positive say more than two means
with overlapping error bars."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from repgossip.errors import UsageError
from repgossip.runfolder import atomic_write, remove_file

RESULT_COLUMNS = (
    "test_acc_mean", "test_acc_pooled", "test_acc_p10", "test_acc_min", "subspace_dist",
    "train_loss", "test_loss_mean", "consensus_dist", "bytes_sent", "spectral_gap", "rounds", "wall_s",
)  # fmt: skip
STATUS = "status"  # summary column: "ok" or "failed: <reason>"
SEED = "seed"  # the grid key whose values repeat one configuration
AGGREGATED = (
    "test_acc_mean", "test_acc_p10", "test_acc_min", "subspace_dist", "train_loss",
    "consensus_dist", "bytes_sent",
)  # fmt: skip
BY_CONFIG_FILE = "summary_by_config.csv"
PAIRED_FILE = "summary_paired.csv"
# compared seed by seed, reference minus other, those the runs have (a regression has no accuracy)
PAIRED_METRICS = ("test_acc_mean", "test_acc_p10", "test_loss_mean")
COUNT, FAILED = "n", "failed"  # by-config columns: seeds that ran, seeds that failed


# ---------------------------------------------------------------- tables


def columns(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """The grid keys, `status`, then the result columns some row has, in RESULT_COLUMNS order."""
    results = [c for c in RESULT_COLUMNS if c not in keys and any(c in r for r in rows)]
    return [*keys, STATUS, *results]


Reference = tuple[str, str]  # (grid key, value): the configuration the others are compared with


def write_tables(
    out: Path, rows: list[dict[str, Any]], keys: Sequence[str], paired: Reference | None = None
) -> None:
    """summary.csv, one row per run, and summary.md: the same rows, or with `seed` a grid key,
    one row per configuration (then also summary_by_config.csv) and, with `paired`, the paired
    differences (then also summary_paired.csv). A table this grid does not make is removed: a
    table of an earlier grid must not pass for this one's."""
    names = columns(rows, keys)
    atomic_write(out / "summary.csv", _csv(rows, names))
    if SEED in keys:
        configs = by_config(rows, keys)
        atomic_write(out / BY_CONFIG_FILE, _csv(configs, config_columns(configs, keys)))
    else:
        remove_file(out / BY_CONFIG_FILE)
    if paired is not None:
        differences = paired_differences(rows, keys, paired)
        atomic_write(out / PAIRED_FILE, _csv(differences, paired_columns(rows, keys, paired)))
    else:
        remove_file(out / PAIRED_FILE)
    atomic_write(out / "summary.md", printed_table(rows, keys, paired, whole=True).encode())


def printed_table(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    paired: Reference | None = None,
    whole: bool = False,
) -> str:
    """The Markdown a sweep prints (less `rounds`, the same in every row, unless a grid key) or,
    `whole`, writes as summary.md: per run or, with `seed`, per configuration; then the paired
    differences when asked for."""
    if SEED in keys:
        table = config_table(by_config(rows, keys), keys)
    else:
        shown = columns(rows, keys)
        table = markdown_table(
            rows, shown if whole else [c for c in shown if c != "rounds" or c in keys]
        )
    if paired is not None:
        table += "\n" + paired_table(paired_differences(rows, keys, paired), keys, paired)
    return table


def _csv(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> bytes:
    """CSV with full-precision numbers (the Markdown rounds; a plot script should not)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(names), restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


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


# ---------------------------------------------------------------- seeds: one row per configuration


def config_keys(keys: Sequence[str]) -> list[str]:
    """The grid keys that tell configurations apart: all but `seed`."""
    return [k for k in keys if k != SEED]


def by_config(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per configuration, in grid order: its key values, `n` seeds that ran (status
    ok), `failed` seeds, and for each AGGREGATED column some run has, `X` the mean over the seeds
    that ran and `X_std` their sample std (ddof=1; None for fewer than two, where it is not
    defined). A failed seed has no results, and counting it as missing would bias the mean."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row[k]) for k in config_keys(keys)), []).append(row)
    present = [c for c in AGGREGATED if any(_is_number(r.get(c)) for r in rows)]
    return [
        _aggregate(dict(zip(config_keys(keys), values, strict=True)), runs, present)
        for values, runs in groups.items()
    ]


def _aggregate(
    values: dict[str, Any], runs: Sequence[Mapping[str, Any]], present: Sequence[str]
) -> dict[str, Any]:
    ok = [r for r in runs if r.get(STATUS) == "ok"]
    row: dict[str, Any] = {**values, COUNT: len(ok), FAILED: len(runs) - len(ok)}
    for column in present:
        numbers = [float(r[column]) for r in ok if _is_number(r.get(column))]
        row[column] = statistics.fmean(numbers) if numbers else None
        row[f"{column}_std"] = statistics.stdev(numbers) if len(numbers) > 1 else None
    return row


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _aggregated_present(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [c for c in AGGREGATED if any(c in r for r in configs)]


def config_columns(configs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """summary_by_config.csv's header: the configuration's keys, n, failed, then X, X_std."""
    stats = [name for c in _aggregated_present(configs) for name in (c, f"{c}_std")]
    return [*config_keys(keys), COUNT, FAILED, *stats]


def config_table(configs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """The Markdown of `by_config`: each result as `mean ± std`, a status that says how many
    seeds failed, and a line that says what the numbers are."""
    present = _aggregated_present(configs)
    names = [*config_keys(keys), COUNT, STATUS, *present]
    shown = [
        {**{k: r[k] for k in config_keys(keys)}, COUNT: r[COUNT], STATUS: _seeds_status(r),
         **{c: _mean_std(r[c], r[f"{c}_std"]) for c in present}}
        for r in configs
    ]  # fmt: skip
    note = "\nmean ± sample std (ddof=1) over the n seeds that ran; failed seeds are left out.\n"
    return markdown_table(shown, names) + note


def _seeds_status(row: Mapping[str, Any]) -> str:
    failed = row[FAILED]
    return "ok" if not failed else f"{failed} of {failed + row[COUNT]} failed"


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


# ---------------------------------------------------------------- paired differences over seeds


def check_reference(text: str, grid: Mapping[str, Sequence[str]]) -> Reference:
    """`--paired-with`'s value as (key, value): `key=value`, or a bare value of `algorithm`. The
    grid must repeat seeds, and vary the key over the value and at least one other."""
    key, sep, value = text.partition("=")
    key, value = (key.strip(), value.strip()) if sep else ("algorithm", text.strip())
    if SEED not in grid or len(grid[SEED]) < 1:
        raise UsageError(
            f"--paired-with {text}: pairing compares seed by seed, so the grid needs seed "
            "(--grid seed=0,1,2)"
        )
    if key == SEED or key not in grid:
        choices = ", ".join(k for k in grid if k != SEED) or "none"
        raise UsageError(
            f"--paired-with {text}: '{key}' is not a grid key other than seed; grid keys: {choices}"
        )
    if value not in grid[key] or len(grid[key]) < 2:
        raise UsageError(
            f"--paired-with {text}: the grid gives {key}={','.join(grid[key])}; name one of "
            "these, and give at least one other to compare with"
        )
    return key, value


def _paired_metrics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [m for m in PAIRED_METRICS if any(_is_number(r.get(m)) for r in rows)]


def paired_columns(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], paired: Reference
) -> list[str]:
    """summary_paired.csv's header, for the metrics the runs `rows` have."""
    metrics = _paired_metrics(rows)
    stats = [f"{m}_{part}" for m in metrics for part in ("diff", "diff_std", "positive")]
    return [*_context_keys(keys, paired), paired[0], "seeds", *stats]


def _context_keys(keys: Sequence[str], paired: Reference) -> list[str]:
    return [k for k in keys if k not in (SEED, paired[0])]


def paired_differences(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], paired: Reference
) -> list[dict[str, Any]]:
    """For every configuration that differs from the reference only in the paired key, and each
    of PAIRED_METRICS: the reference's value minus this configuration's, seed by seed over the
    seeds where both ran; `X_diff` their mean, `X_diff_std` their sample std (None for fewer than
    two), `X_positive` how many are above zero, `seeds` how many there are."""
    key, reference = paired
    context = _context_keys(keys, paired)
    runs: dict[tuple[tuple[str, ...], str], dict[str, Mapping[str, Any]]] = {}
    for run in rows:
        if run.get(STATUS) == "ok":
            where = (tuple(str(run[k]) for k in context), str(run[key]))
            runs.setdefault(where, {})[str(run[SEED])] = run
    table = []
    for (values, other), seeds in runs.items():
        if other == reference:
            continue
        base = runs.get((values, reference), {})
        common = [s for s in seeds if s in base]
        row: dict[str, Any] = {**dict(zip(context, values, strict=True)), key: other}
        row["seeds"] = len(common)
        for metric in _paired_metrics(rows):
            diffs = [
                float(base[s][metric]) - float(seeds[s][metric])
                for s in common
                if _is_number(base[s].get(metric)) and _is_number(seeds[s].get(metric))
            ]
            row[f"{metric}_diff"] = statistics.fmean(diffs) if diffs else None
            row[f"{metric}_diff_std"] = statistics.stdev(diffs) if len(diffs) > 1 else None
            row[f"{metric}_positive"] = f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
        table.append(row)
    return table


def paired_table(
    differences: Sequence[Mapping[str, Any]], keys: Sequence[str], paired: Reference
) -> str:
    """The Markdown of `paired_differences`, with a line that says what the numbers are."""
    key, reference = paired
    metrics = [m for m in PAIRED_METRICS if any(f"{m}_diff" in r for r in differences)]
    names = [*_context_keys(keys, paired), key, "seeds"]
    for metric in metrics:
        names += [f"{reference} - {key}: {metric}", f"{metric} > 0"]
    shown = [
        {**{k: r[k] for k in [*_context_keys(keys, paired), key, "seeds"]},
         **{name: value for metric in metrics for name, value in (
             (f"{reference} - {key}: {metric}",
              _mean_std(r[f"{metric}_diff"], r[f"{metric}_diff_std"])),
             (f"{metric} > 0", r[f"{metric}_positive"]))}}
        for r in differences
    ]  # fmt: skip
    note = (
        f"\n{key}={reference} minus each other {key}, seed by seed over the seeds where both ran "
        "(same partition, graph and initialisation): mean ± sample std, and how many seeds are "
        "above zero.\n"
    )
    return markdown_table(shown, names) + note
