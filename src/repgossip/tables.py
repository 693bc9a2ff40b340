"""A sweep's tables: one row per run (summary.csv, summary.md, the printed table) and, with `seed`
in the grid, one row per configuration with the mean and sample std over its seeds
(summary_by_config.csv)."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from repgossip.runfolder import (
    atomic_write,
    remove_file,
)

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
COUNT, FAILED = "n", "failed"  # by-config columns: seeds that ran, seeds that failed


# ---------------------------------------------------------------- tables


def columns(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """The grid keys, `status`, then the result columns some row has, in RESULT_COLUMNS order."""
    results = [c for c in RESULT_COLUMNS if c not in keys and any(c in r for r in rows)]
    return [*keys, STATUS, *results]


def write_tables(out: Path, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """summary.csv, one row per run, and summary.md: the same rows, or with `seed` a grid key,
    one row per configuration (then also summary_by_config.csv, which is removed otherwise: a
    table of an earlier grid must not pass for this one's)."""
    names = columns(rows, keys)
    atomic_write(out / "summary.csv", _csv(rows, names))
    if SEED in keys:
        configs = by_config(rows, keys)
        atomic_write(out / BY_CONFIG_FILE, _csv(configs, config_columns(configs, keys)))
        table = config_table(configs, keys)
    else:
        remove_file(out / BY_CONFIG_FILE)
        table = markdown_table(rows, names)
    atomic_write(out / "summary.md", table.encode())


def printed_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """The Markdown a sweep prints: as summary.md, less `rounds` unless a grid key (it is
    the same in every row otherwise)."""
    if SEED in keys:
        return config_table(by_config(rows, keys), keys)
    return markdown_table(rows, [c for c in columns(rows, keys) if c != "rounds" or c in keys])


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
