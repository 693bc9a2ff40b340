"""An experiment built from a Config: its data, model, algorithm, graph schedule, engine and
worker population (`build_experiment`), with the plug-ins and objects an API caller supplied
(`Supplied`); `preflight` raises what building would, before anything is written."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from repgossip import footprint
from repgossip.algorithms import MAIN_MODEL, Algorithm, algorithm_class
from repgossip.architectures import build_model
from repgossip.config import PLUGIN_REGISTRIES, Config
from repgossip.data.datasets import load_federation, recorded_config
from repgossip.data.federation import Federation
from repgossip.engines import Engine, make_engine
from repgossip.errors import RepgossipError, UsageError, described, user_code_failed
from repgossip.gossip import GossipSchedule
from repgossip.layout import RowLayout, row_key
from repgossip.models import ModelFunction, SplitModel, check_fits
from repgossip.objectives import checked_loss, checked_metric, resolve
from repgossip.population import PUSH_WEIGHT, Population
from repgossip.registry import API_PREFIX, PluginCode, is_plugin_ref, plugin_code
from repgossip.text import shown
from repgossip.topology import Graph, build_graph, spectral_gap
from repgossip.training import check_batch_norm_batches


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
        cfg.topology, cfg.workers, seed=cfg.seed, directed=cfg.directed, **dict(cfg.params)
    )
    if graph.directed:
        _check_push_sum(algorithm, cfg)
    if cfg.eval_model == "average":
        _check_averaged_evaluation(algorithm, cfg, graph.directed)
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


def _check_averaged_evaluation(algorithm: Algorithm, cfg: Config, directed: bool) -> None:
    """eval_model=average averages the part an algorithm gossips within the copy it evaluates, as
    the default gossip mixes it: one without a gossiped part (local), evaluating another copy
    (ditto's personal model, which is never gossiped) or communicating its own way (dispfl's
    masks) has no such average to evaluate, nor has push-sum on a directed graph."""
    if directed:
        raise UsageError(
            "eval_model=average on a directed graph: push-sum's workers hold de-biased values, "
            "whose plain mean is not the average its gossip conserves; use own"
        )
    label = f"eval_model=average: algorithm '{cfg.algorithm}'"
    if type(algorithm).communicate is not Algorithm.communicate:
        raise UsageError(
            f"{label} communicates through its own communicate(), so the plain average over "
            "workers need not be a model it would hold (dispfl's masks); use own"
        )
    if algorithm.shared is None:
        raise UsageError(f"{label} gossips nothing, so there is no average to evaluate; use own")
    if algorithm.evaluated_model != MAIN_MODEL:
        raise UsageError(
            f"{label} evaluates its model copy '{algorithm.evaluated_model}', which it does not "
            "gossip; use own"
        )


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
        raise user_code_failed(
            f"algorithm '{cfg.algorithm}' cannot be built from a config: {described(err)}", err
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
        raise user_code_failed(
            f"algorithm '{cfg.algorithm}': init_state raised {described(err)}", err
        ) from None
    gap = spectral_gap(parts.schedule.base_mixing)  # of the graph without failures
    return Experiment(
        cfg, algorithm, federation, population, parts.schedule, engine, gap, plugins=plugins
    )


def _span(ids: Sequence[int]) -> str:
    return f"{ids[0]}..{ids[-1]}" if ids else "(none)"
