"""Metric-versus-round curves of one run or of every run below a sweep folder, as one PNG."""

from __future__ import annotations

import json
from pathlib import Path

from repgossip.errors import UsageError

CLASSIFICATION_METRICS = ("test_acc_mean", "train_loss", "consensus_dist")
REGRESSION_METRICS = ("subspace_dist", "train_loss", "consensus_dist")
LOG_SCALE = ("consensus_dist", "subspace_dist", "train_loss")


def find_runs(folder: Path) -> dict[str, list[dict]]:
    """Label -> metrics records, for `folder` itself or its immediate sub-folders."""
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is not a folder with runs")
    candidates = [folder] if (folder / "metrics.jsonl").is_file() else sorted(folder.iterdir())
    runs = {}
    for run_dir in candidates:
        path = run_dir / "metrics.jsonl"
        if path.is_file():
            records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if records:
                runs[run_dir.name] = records
    if not runs:
        raise UsageError(f"no metrics.jsonl in '{folder}' or its sub-folders")
    return runs


def plot_runs(
    folder: str | Path, metrics: tuple[str, ...] | None = None, out: str | Path | None = None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    runs = find_runs(folder)
    first = next(iter(runs.values()))[0]
    metrics = metrics or (
        CLASSIFICATION_METRICS if "test_acc_mean" in first else REGRESSION_METRICS
    )
    unknown = [m for m in metrics if m not in first]
    if unknown:
        raise UsageError(f"unknown metric '{unknown[0]}'; valid: {', '.join(sorted(first))}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, records in runs.items():
            ax.plot([r["round"] for r in records], [r[metric] for r in records], label=label)
        ax.set_xlabel("round")
        ax.set_title(metric)
        if metric in LOG_SCALE:
            ax.set_yscale("log", nonpositive="mask")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    target = Path(out) if out else folder / "curves.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
