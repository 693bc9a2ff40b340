"""One experiment: build it from a Config, train round by round, evaluate, log, checkpoint, resume.

The same loop runs in one process (`engine=sim`) and on every rank of a torch.distributed group
(`engine=dist`); the engine provides the few collective steps, and rank 0 alone writes the run
folder and calls the callbacks. Randomness is a function of (seed, worker, round), so a checkpoint
needs only the workers' rows (parameters, optimizer state, buffers, algorithm state) and counters
for a resumed run to match an uninterrupted one. `repgossip.run` (repgossip.api) and the CLI are
thin layers over `run_experiment`.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repgossip import evaluation, footprint, provenance
from repgossip.algorithms import Algorithm, RoundContext, algorithm_class
from repgossip.architectures import build_model
from repgossip.callbacks import (
    Callback,
    CallbackList,
    RunInfo,
    TensorBoardLogger,
    default_callbacks,
)
from repgossip.config import (
    PLUGIN_REGISTRIES,
    Config,
    changed_keys,
    dump_yaml,
    saved_config,
    shown,
)
from repgossip.data.datasets import load_federation, recorded_config
from repgossip.data.federation import Federation
from repgossip.engines import Engine, make_engine
from repgossip.errors import DivergenceError, RepgossipError, UsageError, described
from repgossip.faults import maybe_fail_rank
from repgossip.gossip import GossipSchedule
from repgossip.layout import RowLayout, row_key
from repgossip.metrics import accuracy_summary, squared_deviations
from repgossip.models import ModelFunction, SplitModel, check_fits
from repgossip.objectives import check_finite_metric, checked_loss, checked_metric, resolve
from repgossip.population import PUSH_WEIGHT, Population
from repgossip.registry import API_PREFIX, PluginCode, is_plugin_ref, plugin_code
from repgossip.runfolder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FOLDER,
    METRICS_FILE,
    PLUGINS_KEY,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    FolderClaim,
    append_metrics,
    atomic_write,
    check_entry,
    check_output,
    checkpoint_bytes,
    read_checkpoint,
    read_metrics,
    resolve_out,
    resumable_config,
)
from repgossip.threads import single_threaded
from repgossip.topology import Graph, build_graph, spectral_gap
from repgossip.training import budget, check_batch_norm_batches, step_rule, train_phase


@dataclass(frozen=True)
class Supplied:
    """Objects handed to the Python API in place of registered names (the config records a
    reference to each): a model function, the data, a graph, an algorithm class, a loss and a
    metric function."""

    model: ModelFunction | None = None
    data: Any = None
    graph: Graph | None = None
    algorithm: type[Algorithm] | None = None
    mixing: np.ndarray | None = None  # W, in place of a rule or a file
    loss: Callable[..., Any] | None = None
    metric: Callable[..., Any] | None = None


def plugin_codes(cfg: Config, supplied: Supplied | None = None) -> dict[str, PluginCode]:
    """What built each plug-in of the run, by config key: an import path that names no built-in,
    or a function or class handed to the Python API (data and graphs handed to it are data: the
    checkpoint's data digest covers them). Built-ins are not listed: they are repgossip's own
    code, identified by the version and commit provenance.json records."""
    supplied = supplied or Supplied()
    handed: dict[str, Any] = {"algorithm": supplied.algorithm, "model": supplied.model}
    codes = {}
    for key, registry in PLUGIN_REGISTRIES.items():
        reference, obj = getattr(cfg, key) or "", handed.get(key)
        if obj is None and reference not in registry and is_plugin_ref(reference):
            obj = registry.get(reference)
        if obj is not None:
            codes[key] = plugin_code(reference, obj)
    return codes


@dataclass
class Experiment:
    cfg: Config
    algorithm: Algorithm
    federation: Federation
    population: Population
    schedule: GossipSchedule
    engine: Engine
    spectral_gap: float | None  # None where it could not be computed (see topology.spectral_gap)
    data_digest: str | None = None  # of the federation, once a checkpoint needs it
    plugins: dict[str, PluginCode] = field(default_factory=dict)  # what built its plug-ins

    def worker_state(
        self, worker: int, gathered: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """A copy of the state_dict of worker `worker`'s whole model (the evaluated copy),
        BatchNorm buffers included, under the names the model's own module uses (a user's module
        loads it with `load_state_dict`). For the workers of this process, or for any worker
        when `gathered` holds every worker's rows (see `gather_states`)."""
        names = self.population.model.state_name
        return {names(k): v for k, v in self._state(worker, gathered).items()}

    def worker_model(self, worker: int) -> torch.nn.Module:
        """A copy of worker `worker`'s model (the run's architecture holding its state), in eval
        mode, on the run's device: to read or evaluate, not to change the run."""
        model = copy.deepcopy(self.population.model)
        model.load_state_dict(self._state(worker, None))
        return model.eval()

    def _state(
        self, worker: int, gathered: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """The state under the run's own names (body.*, head.*). `worker` is an integer (a numpy
        one too); a string, float or bool is refused, as `"1" in ids` would only say it is not
        among them."""
        pop = self.population
        ids = list(range(self.cfg.workers)) if gathered is not None else pop.worker_ids
        where = f"{'this rank' if len(ids) < self.cfg.workers else 'the run'}'s workers"
        if isinstance(worker, bool) or not isinstance(worker, (int, np.integer)):
            raise UsageError(
                f"worker must be an integer, one of {where} {_span(ids)}; got {shown(worker)}"
            )
        if worker not in ids:
            raise UsageError(f"worker {worker} is not among {where} {_span(ids)}")
        model = self.algorithm.evaluated_model
        tensors: dict[str, torch.Tensor] = {}
        for kind, layout in (("params", pop.layout), ("buffers", pop.buffer_layout),
                             ("int_buffers", pop.int_buffer_layout)):  # fmt: skip
            row = (gathered[kind][int(worker)] if gathered is not None
                   else pop.rows[row_key(model, kind)][pop.worker_ids.index(int(worker))])  # fmt: skip
            tensors |= layout.views(row)
        return {name: tensors[name].clone() for name in pop.model.state_dict()}


def resolve_device(name: str) -> torch.device:
    """The device `name` names, refused in one line where this machine does not have it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            have = f"GPUs cuda:0..cuda:{count - 1}" if count else "no CUDA device"
            raise UsageError(
                f"device '{name}' requested but this machine has {have}; use auto or cpu"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(
            f"device '{name}' requested but MPS is not available here; use auto or cpu"
        )
    return device


def build_engine(cfg: Config) -> Engine:
    return make_engine(cfg.engine, cfg.workers, resolve_device(cfg.device), cfg.dist_timeout_s)


@dataclass
class Parts:
    """What an experiment is made of before any worker exists: everything that can refuse a
    config (graph, data, model, mixing) is built here."""

    algorithm: Algorithm
    federation: Federation
    schedule: GossipSchedule
    model: SplitModel
    cfg: Config  # as the run records it (recorded_config: how the data was really split)


def build_parts(cfg: Config, supplied: Supplied | None = None) -> Parts:
    """The algorithm, data, gossip schedule and initial model of `cfg`; raises UsageError for any
    input that a run would trip over, so `preflight` can check a config before anything is
    written or removed."""
    supplied = supplied or Supplied()
    algorithm = _instantiate(supplied.algorithm or algorithm_class(cfg.algorithm), cfg)
    algorithm.check_declarations()
    # the graph first: it is cheaper than the data, and may be refused (too big, disconnected)
    graph = supplied.graph or build_graph(
        cfg.topology, cfg.workers, edge_prob=cfg.edge_prob, seed=cfg.seed, directed=cfg.directed
    )
    if graph.directed:
        _check_push_sum(algorithm, cfg)
    federation = load_federation(cfg, supplied.data)
    cfg = recorded_config(cfg, federation)
    mixing = cfg.mixing if supplied.mixing is None else supplied.mixing
    if isinstance(mixing, str) and mixing.startswith(API_PREFIX):
        raise UsageError(
            f"mixing '{mixing}' was an array handed to repgossip.run(); pass it again there"
        )
    schedule = GossipSchedule(
        graph, mixing, cfg.link_failure_prob, cfg.worker_dropout_prob, cfg.seed
    )
    model_name = cfg.model or ""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(
            model_name, federation.input_shape, federation.num_classes, cfg, supplied.model
        )
    check_fits(model, federation.train_x[0], federation.num_classes, model_name)
    check_batch_norm_batches(model, federation.train_sizes(), cfg)
    if cfg.augment and len(federation.input_shape) != 3:
        raise UsageError(
            f"augment crops and flips images (channels, height, width); this dataset's inputs "
            f"are {federation.input_shape}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = algorithm.adapt_model(model, federation.num_classes)
    layout = RowLayout.parameters(model)
    algorithm.check(layout)  # extra state is valid: the memory check may size it
    footprint.check_model_rows(cfg, layout.size, algorithm)
    return Parts(algorithm, federation, schedule, model, cfg)


def _check_push_sum(algorithm: Algorithm, cfg: Config) -> None:
    """On a directed graph only the default gossip knows push-sum weights: an algorithm with its
    own communication would mix de-biased values with a column-stochastic P and drift, so it is
    refused; so is extra state that would shadow the weights' row set."""
    label = f"algorithm '{cfg.algorithm}'"
    if type(algorithm).communicate is not Algorithm.communicate:
        raise UsageError(
            f"{label} has its own communicate(), which push-sum gossip on the directed topology "
            f"{cfg.topology!r} does not cover; use an undirected topology"
        )
    if PUSH_WEIGHT in algorithm.extra_state():
        raise UsageError(
            f"{label}: extra state '{PUSH_WEIGHT}' is the row set of push-sum weights on a "
            "directed topology; rename it"
        )


def _instantiate(cls: type[Algorithm], cfg: Config) -> Algorithm:
    """`cls(cfg)`, a plug-in's failure reported in one line."""
    try:
        return cls(cfg)
    except RepgossipError:
        raise
    except Exception as err:
        raise UsageError(
            f"algorithm '{cfg.algorithm}' cannot be built from a config: {described(err)}"
        ) from None


def preflight(cfg: Config, supplied: Supplied | None = None) -> None:
    """Raise the UsageError a run of `cfg` would raise while being built, and nothing else: what a
    sweep checks for every grid point, and `--force` before it replaces anything."""
    build_parts(cfg, supplied)


def build_experiment(
    cfg: Config,
    engine: Engine | None = None,
    supplied: Supplied | None = None,
    threads: int | None = None,
    plugins: dict[str, PluginCode] | None = None,
) -> Experiment:
    """Data, model, graph and this process's workers; all workers start from one initialisation.
    `threads`: how many workers train side by side (default: torch's thread count). `plugins` is
    what built the run's plug-ins, when the caller has read it already."""
    engine = engine or Engine(cfg.workers)
    supplied = supplied or Supplied()
    plugins = plugin_codes(cfg, supplied) if plugins is None else plugins
    parts = build_parts(cfg, supplied)
    cfg = parts.cfg
    loss = resolve("loss", cfg.loss, supplied.loss)
    metric = resolve("metric", cfg.metric, supplied.metric)
    mine = engine.local_workers().tolist()
    federation, algorithm = parts.federation, parts.algorithm
    population = Population(
        parts.model,
        mine,
        ([federation.train_x[i] for i in mine], [federation.train_y[i] for i in mine]),
        ([federation.test_x[i] for i in mine], [federation.test_y[i] for i in mine]),
        regression=federation.regression,
        batch_size=cfg.batch_size,
        last_batch=cfg.last_batch,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
        models=algorithm.extra_models(),
        extra_state=algorithm.extra_state(),
        share_buffers=cfg.share_bn_stats,
        augment=cfg.augment,
        sources=[federation.sources[i] for i in mine] if federation.sources else None,
        push_sum=parts.schedule.directed,
        threads=threads,
        optimizer=cfg.optimizer,
        loss_fn=checked_loss(str(cfg.loss), loss) if loss else None,
        metric_fn=checked_metric(str(cfg.metric), metric) if metric else None,
    )
    try:
        algorithm.init_state(population)
    except RepgossipError:
        raise
    except Exception as err:
        raise UsageError(
            f"algorithm '{cfg.algorithm}': init_state raised {described(err)}"
        ) from None
    gap = spectral_gap(parts.schedule.base_mixing)  # of the graph without failures
    return Experiment(
        cfg, algorithm, federation, population, parts.schedule, engine, gap, plugins=plugins
    )


def train_round(exp: Experiment, round_index: int) -> int:
    """One round of the algorithm on this process's workers; returns the bytes sent by all."""
    pop, cfg, algorithm = exp.population, exp.cfg, exp.algorithm
    plan = exp.schedule.round_plan(round_index)
    active = None if plan.active.all() else set(np.flatnonzero(plan.active).tolist())
    ctx = RoundContext(pop, exp.engine, plan, round_index, cfg)
    first = algorithm.communicate_first if cfg.gossip_first is None else cfg.gossip_first
    if cfg.reset_momentum:
        pop.reset_momentum()
    sent = algorithm.communicate(ctx) if first else 0
    for phase_index, phase in enumerate(algorithm.phases):
        train_phase(
            pop,
            phase.part,
            budget(cfg, phase.budget),
            step_rule(cfg, phase.part, round_index),
            round_index,
            phase_index,
            active,
            model=phase.model,
            hook=_gradient_hook(algorithm, phase),
            loss=_loss_hook(algorithm, phase, pop),
        )
    if not first:
        sent = algorithm.communicate(ctx)
    algorithm.end_round(ctx)
    if isinstance(sent, bool) or not isinstance(sent, (int, np.integer)) or sent < 0:
        raise UsageError(
            f"algorithm '{cfg.algorithm}': communicate() must return the bytes sent as an int "
            f">= 0, got {sent!r}"
        )
    return int(sent)


def _gradient_hook(algorithm: Algorithm, phase: Any) -> Callable[..., None] | None:
    """The algorithm's gradient hook for `phase`, or None where it keeps the base class's no-op
    (so the plain SGD step pays for no extra call)."""
    if type(algorithm).adjust_gradient is Algorithm.adjust_gradient:
        return None
    return lambda grad, weights, rows: algorithm.adjust_gradient(phase, grad, weights, rows)


def _loss_hook(algorithm: Algorithm, phase: Any, pop: Population) -> Callable[..., Any] | None:
    """The algorithm's loss for `phase`, or None where it keeps the task's loss."""
    if type(algorithm).loss is Algorithm.loss:
        return None
    return lambda outputs, targets, rows: algorithm.loss(phase, outputs, targets, pop.loss, rows)


def check_finite(exp: Experiment, round_index: int) -> None:
    """Stop every process if any worker's parameters (of any model copy) became NaN or infinite."""
    pop = exp.population
    finite = torch.stack(
        [torch.isfinite(pop.rows[row_key(m, "params")]).all(dim=1) for m in pop.models]
    ).all(dim=0)
    bad = pop.worker_ids[int((~finite).nonzero()[0])] if not bool(finite.all()) else exp.cfg.workers
    worker = exp.engine.all_min(bad)
    if worker < exp.cfg.workers:
        raise DivergenceError(
            f"training diverged in round {round_index + 1}: worker {worker} has NaN or inf "
            "parameters; lower lr"
        )


def shared_mean(exp: Experiment, part: str) -> torch.Tensor:
    """The average over all workers of the `part` block, in float64, added in worker order."""
    rows = exp.population.params[:, exp.population.layout.part(part)]
    return exp.engine.ordered_sum(rows) / exp.cfg.workers


def consensus(exp: Experiment, part: str) -> float:
    """Mean over all workers of ||x_i - x_bar||^2 of the `part` block: each worker's term on its
    own, all of them summed exactly (math.fsum), so no process layout changes a bit."""
    rows = exp.population.params[:, exp.population.layout.part(part)]
    deviations = exp.engine.assemble(squared_deviations(rows, shared_mean(exp, part)).cpu())
    return math.fsum(deviations.tolist()) / exp.cfg.workers


def evaluate(exp: Experiment, round_done: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(the metrics.jsonl record's metric keys, per-worker lists for summary.json), on every rank.
    Accuracy is that of the algorithm's evaluated model copy (Ditto: the personal model)."""
    algorithm = exp.algorithm
    predict = (
        None if type(algorithm).predictions is Algorithm.predictions else algorithm.predictions
    )
    local = evaluation.evaluate(exp.population, algorithm.evaluated_model, predict)
    keys = ("test_loss", "train_loss", "correct", "count", "metric")
    names = [k for k in keys if len(local[k])]
    table = exp.engine.assemble(torch.from_numpy(np.stack([local[k] for k in names], axis=1)))
    stats = {k: table[:, i].numpy() for i, k in enumerate(names)}
    record = {
        "train_loss": float(stats["train_loss"].mean()),
        "test_loss_mean": float(stats["test_loss"].mean()),
        "consensus_dist": consensus(exp, exp.algorithm.shared or "all"),
    }
    per_worker = {"per_worker_test_loss": stats["test_loss"].tolist()}
    if exp.federation.body_metrics is not None:  # the task's own (synthetic: subspace_dist)
        mean_body = shared_mean(exp, "body")
        record.update(exp.federation.body_metrics(mean_body, exp.population.model.body))
    if not exp.federation.regression:
        record.update(accuracy_summary(stats["correct"], stats["count"]))
        per_worker["per_worker_acc"] = (stats["correct"] / stats["count"]).tolist()
    _check_metrics(record, stats, round_done)
    if "metric" in stats:  # checked apart: a metric plug-in's NaN is no divergence
        check_finite_metric(str(exp.cfg.metric), stats["metric"].tolist())
        record["test_metric_mean"] = float(stats["metric"].mean())
        per_worker["per_worker_metric"] = stats["metric"].tolist()
    return record, per_worker


def _check_metrics(record: dict[str, float], stats: dict[str, np.ndarray], round_done: int) -> None:
    """Stop with the round and the first worker whose loss is NaN or infinite."""
    if all(np.isfinite(v) for v in record.values()):
        return
    losses = np.stack([stats["train_loss"], stats["test_loss"]])
    bad = np.flatnonzero(~np.isfinite(losses).all(axis=0))
    key = next(k for k, v in record.items() if not np.isfinite(v))
    who = (
        f"worker {int(bad[0])}'s loss is {losses[:, bad[0]].max()}"
        if len(bad)
        else f"{key} is not finite"
    )
    raise DivergenceError(f"training diverged by round {round_done}: {who}; lower lr")


# ---------------------------------------------------------------- checkpoints across processes

TOP_LEVEL_ROWS = ("params", "momentum")  # the rest of the row sets live under "rows"


def _stored_rows(exp: Experiment) -> list[str]:
    """Row sets a checkpoint holds: every one that has columns (an empty row set, such as the
    buffers of a model without BatchNorm, has nothing to save)."""
    return [name for name, rows in exp.population.rows.items() if rows.shape[1]]


def save_checkpoint(out: Path, exp: Experiment, round_done: int, wall_s: float, sent: int) -> None:
    """Every worker's rows (parameters, optimizer state, buffers, algorithm state), gathered on
    rank 0, in one rank-agnostic file (so a run resumes on any number of ranks, or in one
    process), bound to the run's config and data split."""
    gathered = {n: exp.engine.gather_rows(exp.population.rows[n]) for n in _stored_rows(exp)}
    if exp.engine.is_writer:
        rows = {n: t.cpu() for n, t in gathered.items() if t is not None}
        state = {"round": round_done, "wall_s": wall_s, "bytes_sent": sent,
                 **{n: rows.pop(n) for n in TOP_LEVEL_ROWS}, "rows": rows,
                 "config": dump_yaml(exp.cfg), "data_digest": _data_digest(exp),
                 PLUGINS_KEY: {k: dict(p.digests) for k, p in exp.plugins.items()}}  # fmt: skip
        atomic_write(out / CHECKPOINT_FILE, checkpoint_bytes(state))


def _data_digest(exp: Experiment) -> str:
    """The federation's digest, computed once per experiment."""
    if exp.data_digest is None:
        exp.data_digest = exp.federation.digest()
    return exp.data_digest


def _check_binding(path: Path, state: dict[str, Any], exp: Experiment, supplied: Supplied) -> None:
    """Refuse a checkpoint written by another config, other plug-in code or on other data, naming
    what differs. The saved config is resolved as a fresh one (`saved_config`): a key added since
    the checkpoint was written is not a difference."""
    saved = saved_config(state["config"], f"checkpoint '{path}'", supplied.algorithm, exp.cfg)
    changed = changed_keys(saved, exp.cfg)
    if changed:
        key = changed[0]
        raise UsageError(
            f"checkpoint '{path}' was written with {key}={getattr(saved, key)!r}, not "
            f"{getattr(exp.cfg, key)!r}; it belongs to another run (was config.yaml edited?)"
        )
    _check_plugin_code(path, state.get(PLUGINS_KEY), exp)
    if state["data_digest"] != _data_digest(exp):
        raise UsageError(
            f"checkpoint '{path}' was trained on other data than this config gives (the data "
            "files or the dataset plug-in changed); it cannot be resumed"
        )


def _check_plugin_code(
    path: Path, saved: dict[str, dict[str, str]] | None, exp: Experiment
) -> None:
    """Refuse, naming the plug-in and the module, a checkpoint whose plug-ins were built from
    other source files than this run's (same shapes, other numbers). A checkpoint of a release
    that recorded none (None) is not checked."""
    if saved is None:
        return
    for key in sorted(set(saved) | set(exp.plugins)):
        code = exp.plugins.get(key)
        old, new = saved.get(key, {}), code.digests if code else {}
        module = next((m for m in sorted(set(old) | set(new)) if old.get(m) != new.get(m)), None)
        if module is None:
            continue
        file = (code.files.get(module) if code else None) or "no file now"
        raise UsageError(
            f"the {key} plug-in '{getattr(exp.cfg, key)}' changed since checkpoint '{path}' was "
            f"written: module '{module}' ({file}) had sha256 {_short(old.get(module))}, now "
            f"{_short(new.get(module))}; restore its code to resume, or rerun without --resume"
        )


def _short(digest: str | None) -> str:
    if digest is None:
        return "none"
    return f"{digest[:12]}..." if len(digest) == 64 else digest


def restore_checkpoint(
    out: Path, exp: Experiment, supplied: Supplied | None = None
) -> tuple[int, float, int]:
    """Load the checkpoint on rank 0 and hand every process its workers' rows; a folder without
    one (a run stopped before its first checkpoint) resumes from round 0."""
    has_one = (out / CHECKPOINT_FILE).is_file() if exp.engine.is_writer else True
    if not exp.engine.agree(has_one):
        return 0, 0.0, 0
    state: dict[str, Any] = {}
    pop = exp.population
    names = _stored_rows(exp)

    def load() -> None:
        state.update(read_checkpoint(out))
        _check_binding(out / CHECKPOINT_FILE, state, exp, supplied or Supplied())
        saved = {**state.get("rows", {}), **{n: state[n] for n in TOP_LEVEL_ROWS}}
        for name in names:
            expected = (exp.cfg.workers, pop.rows[name].shape[1])
            found = saved.get(name)
            if not isinstance(found, torch.Tensor) or tuple(found.shape) != expected:
                raise UsageError(
                    f"checkpoint in '{out}' does not match this config's model, algorithm or "
                    f"workers (row set '{name}')"
                )
        state["all_rows"] = saved

    on_writer(exp.engine, load)
    for name in names:
        exp.engine.scatter_rows(state.get("all_rows", {}).get(name), pop.rows[name])
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


def same_config_everywhere(engine: Engine, cfg: Config, supplied: Supplied) -> Config:
    """Every rank runs rank 0's resolved config (a resumed run's base lives on rank 0's disk)."""
    if engine.world == 1:
        return cfg
    text = engine.broadcast_bytes(dump_yaml(cfg).encode())
    return saved_config(text.decode(), "the config rank 0 sent", supplied.algorithm)


# ---------------------------------------------------------------- the loop


@dataclass
class RunResult:
    """What a run returns: every evaluation record, the summary, and each worker's state."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    experiment: Experiment = field(repr=False)
    # Under engine=dist with gathering asked for: every worker's rows of the evaluated model copy,
    # by row kind, on rank 0 (so worker_state answers for any worker there); else None.
    gathered: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def worker_state(self, worker: int) -> dict[str, torch.Tensor]:
        """The state_dict of worker `worker`'s whole model (the evaluated copy), BatchNorm
        buffers included, under the names the model's own module uses (so a user's module
        loads it with `load_state_dict`). Under `engine=dist`, for the workers of this rank, or
        for every worker on rank 0 when the run gathered them (`repgossip.run` does)."""
        return self.experiment.worker_state(worker, self.gathered)

    def worker_model(self, worker: int) -> torch.nn.Module:
        """That model as a module: a copy of the run's architecture in eval mode (this
        process's workers only)."""
        return self.experiment.worker_model(worker)


def gather_states(exp: Experiment) -> dict[str, torch.Tensor] | None:
    """Every worker's rows of the evaluated model copy on the writer (None elsewhere): a
    collective, so every rank calls it, before the process group is closed."""
    model = exp.algorithm.evaluated_model
    rows = {}
    for kind in ("params", "buffers", "int_buffers"):  # every kind on every rank: a collective
        full = exp.engine.gather_rows(exp.population.rows[row_key(model, kind)])
        if full is not None:  # the writer
            rows[kind] = full
    return rows or None


def _span(ids: Sequence[int]) -> str:
    return f"{ids[0]}..{ids[-1]}" if ids else "(none)"


def run_experiment(
    cfg: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
    supplied: Supplied | None = None,
    gather: bool = False,
) -> RunResult:
    """Run (or continue) the experiment `cfg`, into folder `out` when given (None: in memory).
    `gather`: under engine=dist, bring every worker's final state to rank 0's result."""
    supplied = supplied or Supplied()
    if resume and out is None:
        raise UsageError("resume needs the folder of the run to continue (out)")
    with single_threaded() as threads:  # no number may depend on a thread count
        engine = build_engine(cfg)
        try:
            cfg = same_config_everywhere(engine, cfg, supplied)
            folder = resolve_out(out, link_ok=not (resume or force)) if out is not None else None
            return _run(
                engine, cfg, folder, resume, force, progress, callbacks, supplied, threads, gather
            )
        finally:
            engine.close()


def _run(
    engine: Engine,
    cfg: Config,
    out: Path | None,
    resume: bool,
    force: bool,
    progress: bool | None,
    user_callbacks: Sequence[Callback],
    supplied: Supplied,
    threads: int,
    gather: bool = False,
) -> RunResult:
    if out is not None:
        on_writer(engine, lambda: _check_folder(out, cfg, resume, force, supplied))
    plugins = plugin_codes(cfg, supplied)
    if engine.is_writer and progress is not False:
        for key, code in plugins.items():  # before anything calls them
            print(code.announcement(key), file=sys.stderr)
    # every input error surfaces here, before writing
    exp = build_experiment(cfg, engine, supplied, threads, plugins)
    cfg = exp.cfg  # with the split the data really got
    if engine.is_writer and progress is not False:
        print(f"repgossip: data: {exp.federation.describe()}", file=sys.stderr, flush=True)
    start, wall_before, sent = (
        restore_checkpoint(out, exp, supplied) if resume and out else (0, 0.0, 0)
    )
    if start > cfg.rounds:
        raise UsageError(
            f"cannot resume with rounds={cfg.rounds}: the run already has {start} rounds"
        )
    history: list[dict[str, Any]] = []
    claim = FolderClaim(out, keep=resume, force=force) if out and engine.is_writer else None
    try:
        if out is not None:
            on_writer(engine, lambda: history.extend(_open_folder(out, exp, start, claim)))
        callbacks = _callbacks(engine, cfg, out, start, progress, user_callbacks)
        try:
            callbacks.on_run_start(RunInfo(cfg, out, start, cfg.rounds, exp))
            summary = _rounds(exp, out, start, wall_before, sent, history, callbacks, claim)
            gathered = gather_states(exp) if gather and engine.world > 1 else None
            callbacks.on_run_end(dict(summary))
        finally:
            callbacks.close()
    except DivergenceError as err:
        if claim is None:
            raise
        raise DivergenceError(f"{err} ({_kept_after_divergence(claim)})") from None
    finally:
        if claim is not None:
            claim.close()  # before its first record, a failed run puts a replaced folder back
    return RunResult(history, summary, exp, gathered)


def _kept_after_divergence(claim: FolderClaim) -> str:
    """What a diverged run leaves, said in its error: a diverged run is a result, so a new folder
    keeps its record (config, metrics so far, checkpoint if any); a folder it was replacing with
    --force is put back instead, as for any run that fails before it has trained a round."""
    out = claim.out
    if claim.aside is not None and not claim.committed:
        return "the folder it was replacing is back in its place"
    claim.commit()
    saved = "its last checkpoint" if (out / CHECKPOINT_FILE).is_file() else "no checkpoint yet"
    # --resume would refuse a changed lr, and with the same lr diverge again
    return f"the run folder keeps its config, metrics so far and {saved}; rerun with --force"


def _check_folder(out: Path, cfg: Config, resume: bool, force: bool, supplied: Supplied) -> None:
    check_output(out, keep=resume, force=force)
    if resume:
        resumable_config(out, cfg, supplied.algorithm)
        if cfg.tensorboard:  # a file by that name: one line now, not a traceback in round 0
            check_entry(out / TENSORBOARD_DIR, FOLDER)


def _callbacks(
    engine: Engine,
    cfg: Config,
    out: Path | None,
    start: int,
    progress: bool | None,
    user: Sequence[Callback],
) -> CallbackList:
    """The writer's callbacks: progress display, TensorBoard when asked, then the user's."""
    if not engine.is_writer:
        return CallbackList()
    chosen: list[Callback] = default_callbacks(progress, cfg.rounds, start)
    if cfg.tensorboard:
        if out is None:
            raise UsageError("tensorboard=true writes into the run folder; give an output folder")
        chosen.append(TensorBoardLogger(out / TENSORBOARD_DIR))
    return CallbackList([*chosen, *user])


def _rounds(
    exp: Experiment,
    out: Path | None,
    start: int,
    wall_before: float,
    sent: int,
    history: list[dict[str, Any]],
    callbacks: CallbackList,
    claim: FolderClaim | None,
) -> dict[str, Any]:
    """Train rounds `start`..`cfg.rounds`, evaluating, logging and checkpointing as configured,
    until a callback asks to stop (StopRun): that round is then evaluated and checkpointed too.
    Returns the summary (written to `out` when there is one)."""
    cfg, engine = exp.cfg, exp.engine
    began = time.perf_counter()

    def elapsed() -> float:
        return wall_before + time.perf_counter() - began

    def log(done: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
        metrics, per_worker = evaluate(exp, done)
        record = {"round": done, "wall_s": round(elapsed(), 4), **metrics, "bytes_sent": sent}
        if engine.is_writer:
            if out is not None:
                append_metrics(out / METRICS_FILE, record)
            if claim is not None and done > 0:
                claim.commit()  # the new run has trained a round: a replaced folder may go
            history.append(record)
            # copies: a callback cannot change the log or the summary
            callbacks.on_evaluation({**record, **{k: list(v) for k, v in per_worker.items()}})
        return record, per_worker

    def checkpoint(done: int) -> None:
        assert out is not None
        save_checkpoint(out, exp, done, elapsed(), sent)
        if claim is not None:
            claim.commit()  # the new run can be resumed

    record: dict[str, Any] | None = None
    per_worker: dict[str, list[float]] = {}
    if start == 0:
        record, per_worker = log(0)
    done, saved = start, (start if start > 0 else None)  # a resumed run's checkpoint: `start`
    stop = _agreed_stop(engine, callbacks) if start < cfg.rounds else None
    for round_index in range(start, cfg.rounds):
        if stop is not None:
            break
        maybe_fail_rank(engine.rank, round_index)
        sent += train_round(exp, round_index)
        check_finite(exp, round_index)
        done = round_index + 1
        if done % cfg.eval_every == 0 or done == cfg.rounds:
            record, per_worker = log(done)
        if out is not None and (done % cfg.checkpoint_every == 0 or done == cfg.rounds):
            checkpoint(saved := done)
        callbacks.on_round_end(done)
        if done < cfg.rounds:
            stop = _agreed_stop(engine, callbacks)
    if stop is not None:  # a finished run at `done`: its last record and checkpoint are there
        if record is not None and record["round"] != done:
            record, per_worker = log(done)
        if out is not None and saved != done:
            checkpoint(done)
    if record is None:  # resumed a finished (or at once stopped) run: re-evaluate for the summary
        record, per_worker = evaluate(exp, start)
        record = {"round": start, "wall_s": elapsed(), **record, "bytes_sent": sent}
    summary = _summary(exp, record, per_worker)
    if stop is not None:
        summary["stopped_early"] = stop
    if engine.is_writer and out is not None:
        atomic_write(out / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    if claim is not None:
        claim.commit()
    return summary


def _agreed_stop(engine: Engine, callbacks: CallbackList) -> str | None:
    """The reason a callback (on rank 0) gave to stop, on every rank, or None to go on: every rank
    leaves the loop after the same round. One all-reduce per round, none in one process."""
    reason = callbacks.stop_reason  # None on the ranks that run no callbacks
    if engine.agree(reason is None):
        return None
    return engine.broadcast_bytes((reason or "").encode()).decode(errors="replace")


def _open_folder(
    out: Path, exp: Experiment, start: int, claim: FolderClaim | None
) -> list[dict[str, Any]]:
    """Claim and lock the folder, record the config and this session's provenance (with what
    built its plug-ins), and drop evaluations past the checkpoint (and a torn last line); returns
    the evaluations kept."""
    assert claim is not None  # the writer holds the claim
    claim.open()
    atomic_write(out / CONFIG_FILE, dump_yaml(exp.cfg).encode())
    plugins = {key: code.provenance() for key, code in exp.plugins.items()}
    provenance.record(out, {**provenance.collect(), "plugins": plugins})
    kept = read_metrics(out / METRICS_FILE, up_to_round=start) if start > 0 else []
    atomic_write(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept


def _summary(exp: Experiment, record: dict[str, Any], per_worker: dict[str, list[float]]) -> dict:
    layout = exp.population.layout
    shared = exp.algorithm.shared
    shared_params = 0 if shared is None else layout.part(shared).stop - layout.part(shared).start
    return {
        **record,
        **per_worker,
        "per_worker_train_samples": exp.federation.train_sizes(),
        "spectral_gap": exp.spectral_gap,
        "rounds": record["round"],
        "params_shared": shared_params,
        "params_private": layout.size - shared_params,
        "wire_bytes": int(exp.engine.all_sum(torch.tensor([exp.engine.wire_bytes]))),
    }
