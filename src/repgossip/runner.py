"""One experiment: build it from a Config, train round by round, evaluate, log, checkpoint, resume.

The same loop runs in one process (`engine=sim`) and on every rank of a torch.distributed group
(`engine=dist`); the engine provides the few collective steps, and rank 0 alone writes the run
folder. Randomness is a function of (seed, worker, round), so a checkpoint needs only parameters,
optimizer state and counters for a resumed run to match an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from repgossip.algorithms import Algorithm, get_algorithm
from repgossip.config import Config, build_config, dump_yaml
from repgossip.data.federation import Federation, build_federation
from repgossip.engines import Engine, make_engine
from repgossip.errors import UsageError
from repgossip.faults import maybe_fail_rank
from repgossip.gossip import GossipSchedule
from repgossip.metrics import accuracy_summary, squared_deviation, subspace_distance
from repgossip.models import build_model
from repgossip.population import Budget, Population, StepRule
from repgossip.runfolder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    append_metrics,
    atomic_write,
    check_output,
    checkpoint_bytes,
    claim_output,
    read_checkpoint,
    read_metrics,
    resumable_config,
)
from repgossip.topology import build_graph, spectral_gap


class DivergenceError(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


@dataclass
class Experiment:
    cfg: Config
    algorithm: Algorithm
    federation: Federation
    population: Population
    schedule: GossipSchedule
    engine: Engine
    spectral_gap: float | None  # None where it could not be computed (see topology.spectral_gap)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def build_engine(cfg: Config) -> Engine:
    return make_engine(cfg.engine, cfg.workers, resolve_device(cfg.device), cfg.dist_timeout_s)


def build_experiment(cfg: Config, engine: Engine | None = None) -> Experiment:
    """Data, model, graph and this process's workers; all workers start from one initialisation."""
    engine = engine or Engine(cfg.workers)
    algorithm = get_algorithm(cfg.algorithm)
    # the graph first: it is cheaper than the data, and may be refused (too big, disconnected)
    graph = build_graph(cfg.topology, cfg.workers, edge_prob=cfg.edge_prob, seed=cfg.seed)
    federation = build_federation(cfg)
    schedule = GossipSchedule(
        graph, cfg.mixing, cfg.link_failure_prob, cfg.worker_dropout_prob, cfg.seed
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(
            cfg.model or "", federation.input_shape, federation.num_classes, cfg.rank
        )
    mine = engine.local_workers().tolist()
    population = Population(
        model,
        mine,
        ([federation.train_x[i] for i in mine], [federation.train_y[i] for i in mine]),
        ([federation.test_x[i] for i in mine], [federation.test_y[i] for i in mine]),
        regression=federation.regression,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
    )
    gap = spectral_gap(schedule.base_mixing)  # of the graph without failures
    return Experiment(cfg, algorithm, federation, population, schedule, engine, gap)


def budget(cfg: Config, which: str) -> Budget:
    return Budget(epochs=getattr(cfg, f"{which}_epochs"), steps=getattr(cfg, f"{which}_steps"))


def step_rule(cfg: Config, part: str, round_index: int) -> StepRule:
    base = {"head": cfg.lr_head, "body": cfg.lr_body}.get(part) or cfg.lr
    lr = base * cfg.lr_decay**round_index
    return StepRule(lr=lr, momentum=cfg.momentum or 0.0, weight_decay=cfg.weight_decay)


def train_round(exp: Experiment, round_index: int) -> int:
    """One round of the algorithm on this process's workers; returns the bytes gossiped by all."""
    pop, cfg = exp.population, exp.cfg
    plan = exp.schedule.round_plan(round_index)
    active = None if plan.active.all() else set(np.flatnonzero(plan.active).tolist())
    for phase_index, phase in enumerate(exp.algorithm.phases):
        rule = step_rule(cfg, phase.part, round_index)
        pop.train(phase.part, budget(cfg, phase.budget), rule, round_index, phase_index, active)
    if exp.algorithm.shared is None:
        return 0
    return exp.engine.gossip(pop, exp.algorithm.shared, plan)


def check_finite(exp: Experiment, round_index: int) -> None:
    """Stop every process if any worker's parameters became NaN or infinite."""
    finite = torch.isfinite(exp.population.params).all(dim=1)
    bad = (
        exp.population.worker_ids[int((~finite).nonzero()[0])]
        if not bool(finite.all())
        else exp.cfg.workers
    )
    worker = exp.engine.all_min(bad)
    if worker < exp.cfg.workers:
        raise DivergenceError(
            f"training diverged in round {round_index + 1}: worker {worker} has NaN or inf "
            "parameters; lower lr (the last checkpoint, from before this round, is kept)"
        )


def shared_mean(exp: Experiment, part: str) -> torch.Tensor:
    """The average over all workers of the `part` block, in float64."""
    rows = exp.population.params[:, exp.population.layout.part(part)].double()
    return exp.engine.all_sum(rows.sum(0)) / exp.cfg.workers


def consensus(exp: Experiment, part: str) -> float:
    """Mean over all workers of ||x_i - x_bar||^2 of the `part` block."""
    rows = exp.population.params[:, exp.population.layout.part(part)]
    deviation = squared_deviation(rows, shared_mean(exp, part)).reshape(1)
    return float(exp.engine.all_sum(deviation)) / exp.cfg.workers


def evaluate(exp: Experiment) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(the metrics.jsonl record's metric keys, per-worker lists for summary.json), on every rank."""
    local = exp.population.evaluate()
    names = [k for k in ("test_loss", "train_loss", "correct", "count") if len(local[k])]
    table = exp.engine.assemble(torch.from_numpy(np.stack([local[k] for k in names], axis=1)))
    stats = {k: table[:, i].numpy() for i, k in enumerate(names)}
    record = {
        "train_loss": float(stats["train_loss"].mean()),
        "test_loss_mean": float(stats["test_loss"].mean()),
        "consensus_dist": consensus(exp, exp.algorithm.shared or "all"),
    }
    per_worker = {"per_worker_test_loss": stats["test_loss"].tolist()}
    if exp.federation.regression:
        weight = shared_mean(exp, "body").view(exp.cfg.rank, exp.cfg.dim).cpu().numpy()
        record["subspace_dist"] = subspace_distance(exp.federation.b_star, weight)
    else:
        record.update(accuracy_summary(stats["correct"], stats["count"]))
        per_worker["per_worker_acc"] = (stats["correct"] / stats["count"]).tolist()
    if not all(np.isfinite(v) for v in record.values()):
        raise DivergenceError(f"training diverged: non-finite metric in {record}")
    return record, per_worker


# ---------------------------------------------------------------- checkpoints across processes


def save_checkpoint(out: Path, exp: Experiment, round_done: int, wall_s: float, sent: int) -> None:
    """Every worker's parameters and optimizer state, gathered on rank 0, in one rank-agnostic file
    (so a run resumes on any number of ranks, or in one process)."""
    params = exp.engine.gather_rows(exp.population.params)
    momentum = exp.engine.gather_rows(exp.population.momentum)
    if exp.engine.is_writer:
        state = {"round": round_done, "params": params.cpu(), "momentum": momentum.cpu(),
                 "wall_s": wall_s, "bytes_sent": sent}  # fmt: skip
        atomic_write(out / CHECKPOINT_FILE, checkpoint_bytes(state))


def restore_checkpoint(out: Path, exp: Experiment) -> tuple[int, float, int]:
    """Load the checkpoint on rank 0 and hand every process its workers' rows."""
    state: dict[str, Any] = {}

    def load() -> None:
        state.update(read_checkpoint(out))
        expected = (exp.cfg.workers, exp.population.layout.size)
        if tuple(state["params"].shape) != expected:
            raise UsageError(f"checkpoint in '{out}' does not match this config's model or workers")

    on_writer(exp.engine, load)
    pop = exp.population
    exp.engine.scatter_rows(state.get("params"), pop.params)
    exp.engine.scatter_rows(state.get("momentum"), pop.momentum)
    # the counters live on rank 0 only (zeros elsewhere): a sum hands them to every rank
    counters = torch.tensor([state.get("round", 0), state.get("bytes_sent", 0)], dtype=torch.int64)
    done, sent = (int(v) for v in exp.engine.all_sum(counters))
    wall = float(exp.engine.all_sum(torch.tensor([float(state.get("wall_s", 0.0))])))
    return done, wall, sent


def on_writer(engine: Engine, action: Callable[[], None]) -> None:
    """Run `action` on rank 0; if it refuses (UsageError), every rank stops with that reason."""
    error: UsageError | None = None
    if engine.is_writer:
        try:
            action()
        except UsageError as err:
            error = err
    if not engine.agree(error is None):
        raise error or UsageError("rank 0 refused this run (its message says why)")


def same_config_everywhere(engine: Engine, cfg: Config) -> Config:
    """Every rank runs rank 0's resolved config (a resumed run's base lives on rank 0's disk)."""
    if engine.world == 1:
        return cfg
    text = engine.broadcast_bytes(dump_yaml(cfg).encode())
    return build_config(yaml.safe_load(text.decode()))


# ---------------------------------------------------------------- the loop


def run(
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run (or continue) the experiment `cfg` into folder `out`; returns the summary."""
    engine = build_engine(cfg)
    try:
        return _run(engine, same_config_everywhere(engine, cfg), Path(out), resume, force, progress)
    finally:
        engine.close()


def _run(
    engine: Engine, cfg: Config, out: Path, resume: bool, force: bool, progress: bool | None
) -> dict:
    def check() -> None:
        check_output(out, keep=resume, force=force)
        if resume:
            resumable_config(out, cfg)

    on_writer(engine, check)
    exp = build_experiment(
        cfg, engine
    )  # every input error surfaces here, before anything is written
    start, wall_before, sent = restore_checkpoint(out, exp) if resume else (0, 0.0, 0)
    if start > cfg.rounds:
        raise UsageError(
            f"cannot resume with rounds={cfg.rounds}: the run already has {start} rounds"
        )
    on_writer(engine, lambda: _open_folder(out, cfg, resume, force, start))
    bar = _progress_bar(cfg.rounds, start, progress, engine.is_writer)
    began = time.perf_counter()

    def elapsed() -> float:
        return wall_before + time.perf_counter() - began

    record: dict[str, Any] | None = None
    per_worker: dict[str, list[float]] = {}
    if start == 0:
        record, per_worker = _log(out, exp, 0, elapsed(), sent)
    for round_index in range(start, cfg.rounds):
        maybe_fail_rank(engine.rank, round_index)
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
    if engine.is_writer:
        atomic_write(out / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _open_folder(out: Path, cfg: Config, resume: bool, force: bool, start: int) -> None:
    """Claim the folder, record the config, and drop evaluations past the checkpoint."""
    claim_output(out, keep=resume, force=force)
    atomic_write(out / CONFIG_FILE, dump_yaml(cfg).encode())
    kept = read_metrics(out / METRICS_FILE, up_to_round=start) if resume else []
    atomic_write(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept).encode())


def _log(out: Path, exp: Experiment, done: int, wall_s: float, sent: int):
    metrics, per_worker = evaluate(exp)
    record = {"round": done, "wall_s": round(wall_s, 4), **metrics, "bytes_sent": sent}
    if exp.engine.is_writer:
        append_metrics(out / METRICS_FILE, record)
    return record, per_worker


def _short(record: dict[str, Any]) -> str:
    if "test_acc_mean" in record:
        return f"acc={record['test_acc_mean']:.3f} loss={record['train_loss']:.3f}"
    return f"subspace={record['subspace_dist']:.3f} loss={record['train_loss']:.4f}"


def _summary(exp: Experiment, record: dict[str, Any], per_worker: dict[str, list[float]]) -> dict:
    layout = exp.population.layout
    shared = exp.algorithm.shared
    shared_params = 0 if shared is None else layout.part(shared).stop - layout.part(shared).start
    return {
        **record,
        **per_worker,
        "spectral_gap": exp.spectral_gap,
        "rounds": record["round"],
        "params_shared": shared_params,
        "params_private": layout.size - shared_params,
        "wire_bytes": int(exp.engine.all_sum(torch.tensor([exp.engine.wire_bytes]))),
    }


def _progress_bar(total: int, initial: int, wanted: bool | None, writer: bool):
    """On rank 0 only; by default only when stderr is a terminal."""
    from tqdm import tqdm

    enabled = writer and (sys.stderr.isatty() if wanted is None else wanted)
    return tqdm(total=total, initial=initial, disable=not enabled, unit="round", dynamic_ncols=True)
