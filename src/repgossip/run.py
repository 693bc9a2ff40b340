"""One experiment: build it from a Config, train round by round, evaluate, log, checkpoint, resume.

Output folder contract (DESIGN.md section 4): `config.yaml`, `metrics.jsonl`, `summary.json` and
`checkpoint.pt`. A folder that holds anything is never overwritten unless asked (`resume` continues
it, `force` clears it). Randomness is a function of (seed, worker, round), so the checkpoint needs
only parameters, optimizer state and counters for a resumed run to match an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repgossip.algorithms import Algorithm, get_algorithm
from repgossip.config import Config, build_config, changed_keys, dump_yaml, read_yaml
from repgossip.data.federation import Federation, build_federation
from repgossip.engines.sim import SimEngine
from repgossip.errors import UsageError
from repgossip.faults import maybe_crash_midwrite
from repgossip.gossip import GossipSchedule
from repgossip.metrics import accuracy_summary, consensus_distance, subspace_distance
from repgossip.models import build_model
from repgossip.population import Budget, Population, StepRule
from repgossip.topology import build_graph, mixing_matrix, spectral_gap

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE = (
    "config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"
)  # fmt: skip


class DivergenceError(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


@dataclass
class Experiment:
    cfg: Config
    algorithm: Algorithm
    federation: Federation
    population: Population
    engine: SimEngine
    spectral_gap: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def build_experiment(cfg: Config) -> Experiment:
    """Data, model, graph and population for `cfg`; all workers start from one initialisation."""
    algorithm = get_algorithm(cfg.algorithm)
    federation = build_federation(cfg)
    adjacency = build_graph(cfg.topology, cfg.workers, edge_prob=cfg.edge_prob, seed=cfg.seed)
    schedule = GossipSchedule(
        adjacency, cfg.mixing, cfg.link_failure_prob, cfg.worker_dropout_prob, cfg.seed
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(
            cfg.model or "", federation.input_shape, federation.num_classes, cfg.rank
        )
    population = Population(
        model,
        range(cfg.workers),
        (federation.train_x, federation.train_y),
        (federation.test_x, federation.test_y),
        regression=federation.regression,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
    )
    gap = spectral_gap(mixing_matrix(adjacency, cfg.mixing))  # of the graph without failures
    return Experiment(cfg, algorithm, federation, population, SimEngine(schedule), gap)


def budget(cfg: Config, which: str) -> Budget:
    return Budget(epochs=getattr(cfg, f"{which}_epochs"), steps=getattr(cfg, f"{which}_steps"))


def step_rule(cfg: Config, part: str, round_index: int) -> StepRule:
    base = {"head": cfg.lr_head, "body": cfg.lr_body}.get(part) or cfg.lr
    lr = base * cfg.lr_decay**round_index
    return StepRule(lr=lr, momentum=cfg.momentum or 0.0, weight_decay=cfg.weight_decay)


def train_round(exp: Experiment, round_index: int) -> int:
    """One round of the algorithm on every worker; returns the bytes gossiped."""
    pop, cfg = exp.population, exp.cfg
    plan = exp.engine.schedule.round_plan(round_index)
    active = None if plan.active.all() else set(np.flatnonzero(plan.active).tolist())
    for phase_index, phase in enumerate(exp.algorithm.phases):
        rule = step_rule(cfg, phase.part, round_index)
        pop.train(phase.part, budget(cfg, phase.budget), rule, round_index, phase_index, active)
    if exp.algorithm.shared is None:
        return 0
    return exp.engine.gossip(pop, exp.algorithm.shared, round_index)


def check_finite(exp: Experiment, round_index: int) -> None:
    finite = torch.isfinite(exp.population.params).all(dim=1)
    if not bool(finite.all()):
        worker = exp.population.worker_ids[int((~finite).nonzero()[0])]
        raise DivergenceError(
            f"training diverged in round {round_index + 1}: worker {worker} has NaN or inf "
            "parameters; lower lr (the last checkpoint, from before this round, is kept)"
        )


def evaluate(exp: Experiment) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(the metrics.jsonl record's metric keys, per-worker lists for summary.json)."""
    stats = exp.population.evaluate()
    shared_part = exp.algorithm.shared or "all"
    record = {
        "train_loss": float(stats["train_loss"].mean()),
        "test_loss_mean": float(stats["test_loss"].mean()),
        "consensus_dist": consensus_distance(exp.engine.shared_block(exp.population, shared_part)),
    }
    per_worker = {"per_worker_test_loss": stats["test_loss"].tolist()}
    if exp.federation.regression:
        body = exp.engine.shared_block(exp.population, "body").double().mean(0)
        weight = body.view(exp.cfg.rank, exp.cfg.dim).cpu().numpy()
        record["subspace_dist"] = subspace_distance(exp.federation.b_star, weight)
    else:
        record.update(accuracy_summary(stats["correct"], stats["count"]))
        per_worker["per_worker_acc"] = (stats["correct"] / stats["count"]).tolist()
    if not all(np.isfinite(v) for v in record.values()):
        raise DivergenceError(f"training diverged: non-finite metric in {record}")
    return record, per_worker


# ---------------------------------------------------------------- output folder and checkpoints


def check_output(out: Path, *, keep: bool, force: bool) -> None:
    """Refuse a non-empty `out` unless it is kept (`keep`, for resuming) or may be cleared (`force`)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (keep or force):
        raise UsageError(
            f"output folder '{out}' is not empty; pass --resume to continue it or --force to overwrite it"
        )


def claim_output(out: Path, *, keep: bool, force: bool) -> None:
    """Make `out` ours, clearing it if `force` and not `keep`. Call once nothing can fail any more."""
    check_output(out, keep=keep, force=force)
    if force and not keep and out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def resumable_config(out: Path, cfg: Config) -> None:
    """Refuse to resume `out` with a config whose results would differ from the saved run's."""
    if not (out / CHECKPOINT_FILE).is_file() or not (out / CONFIG_FILE).is_file():
        raise UsageError(f"cannot resume: '{out}' holds no {CHECKPOINT_FILE} and {CONFIG_FILE}")
    saved = build_config(read_yaml(out / CONFIG_FILE))
    changed = changed_keys(saved, cfg)
    if changed:
        key = changed[0]
        raise UsageError(
            f"cannot resume with a changed '{key}' ({getattr(saved, key)!r} -> {getattr(cfg, key)!r}); "
            "only rounds, eval_every, checkpoint_every and data_dir may change"
        )


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary file, fsync, rename, fsync the folder: a crash at any moment leaves the
    old file or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        maybe_crash_midwrite(path, handle, payload)
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_checkpoint(out: Path, exp: Experiment, round_done: int, wall_s: float, sent: int) -> None:
    """Everything a run's future depends on. Randomness is stateless in (seed, worker, round), so
    parameters, optimizer state and counters are all of it."""
    state = {
        "round": round_done,
        "params": exp.population.params.cpu(),
        "momentum": exp.population.momentum.cpu(),
        "wall_s": wall_s,
        "bytes_sent": sent,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(out / CHECKPOINT_FILE, buffer.getvalue())


CHECKPOINT_KEYS = ("round", "params", "momentum", "wall_s", "bytes_sent")


def load_checkpoint(out: Path, exp: Experiment) -> tuple[int, float, int]:
    """Restore parameters and optimizer state; returns (rounds done, wall seconds, bytes sent).

    `weights_only=True`: a checkpoint is data; a file that asks to run code is refused unread."""
    path = out / CHECKPOINT_FILE
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or malicious: one line, no traceback
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot read checkpoint '{path}': {reason}") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise UsageError(
            f"'{path}' is not a repgossip checkpoint (needs {', '.join(CHECKPOINT_KEYS)})"
        )
    pop = exp.population
    if tuple(state["params"].shape) != tuple(pop.params.shape):
        raise UsageError(f"checkpoint '{path}' does not match this config's model or workers")
    pop.params.copy_(state["params"])
    pop.momentum.copy_(state["momentum"])
    return int(state["round"]), float(state["wall_s"]), int(state["bytes_sent"])


def read_metrics(path: Path, up_to_round: int | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if up_to_round is None or r["round"] <= up_to_round]


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------- the loop

Progress = Callable[[int, dict[str, float]], None]


def run(
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run (or continue) the experiment `cfg` into folder `out`; returns the summary."""
    out = Path(out)
    check_output(out, keep=resume, force=force)
    if resume:
        resumable_config(out, cfg)
    exp = build_experiment(cfg)  # every input error surfaces here, before anything is written
    start, wall_before, sent = load_checkpoint(out, exp) if resume else (0, 0.0, 0)
    if start > cfg.rounds:
        raise UsageError(
            f"cannot resume with rounds={cfg.rounds}: the run already has {start} rounds"
        )
    claim_output(out, keep=resume, force=force)
    atomic_write(out / CONFIG_FILE, dump_yaml(cfg).encode())
    kept = read_metrics(out / METRICS_FILE, up_to_round=start) if resume else []
    atomic_write(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept).encode())
    bar = _progress_bar(cfg.rounds, start, progress)
    began = time.perf_counter()

    def elapsed() -> float:
        return wall_before + time.perf_counter() - began

    record: dict[str, Any] | None = None
    per_worker: dict[str, list[float]] = {}
    if start == 0:
        record, per_worker = _log(out, exp, 0, elapsed(), sent)
    for round_index in range(start, cfg.rounds):
        sent += train_round(exp, round_index)
        check_finite(exp, round_index)
        done = round_index + 1
        if done % cfg.eval_every == 0 or done == cfg.rounds:
            record, per_worker = _log(out, exp, done, elapsed(), sent)
            bar.set_postfix_str(_short(record))
        if done % cfg.checkpoint_every == 0 or done == cfg.rounds:
            save_checkpoint(out, exp, done, elapsed(), sent)
        bar.update(1)
    bar.close()
    if record is None:  # resumed a finished run: re-evaluate for the summary
        record, per_worker = evaluate(exp)
        record = {"round": start, "wall_s": elapsed(), **record, "bytes_sent": sent}
    summary = _summary(exp, record, per_worker)
    atomic_write(out / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _log(out: Path, exp: Experiment, done: int, wall_s: float, sent: int):
    metrics, per_worker = evaluate(exp)
    record = {"round": done, "wall_s": round(wall_s, 4), **metrics, "bytes_sent": sent}
    append_metrics(out / METRICS_FILE, record)
    return record, per_worker


def _short(record: dict[str, Any]) -> str:
    if "test_acc_mean" in record:
        return f"acc={record['test_acc_mean']:.3f} loss={record['train_loss']:.3f}"
    return f"subspace={record['subspace_dist']:.3f} loss={record['train_loss']:.4f}"


def _summary(exp: Experiment, record: dict[str, Any], per_worker: dict[str, list[float]]) -> dict:
    layout = exp.population.layout
    shared = layout.part(exp.algorithm.shared).stop if exp.algorithm.shared else 0
    if exp.algorithm.shared == "head":  # not used by any algorithm today, but keep the count right
        shared = layout.head_size
    return {
        **record,
        **per_worker,
        "spectral_gap": exp.spectral_gap,
        "rounds": record["round"],
        "params_shared": shared,
        "params_private": layout.size - shared,
    }


def _progress_bar(total: int, initial: int, enabled: bool | None):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit="round", dynamic_ncols=True)
