"""What a run will need in memory, estimated from its config before anything is built.

A config that cannot fit (a ring of 10^12 workers, a synthetic task of dimension 10^10) would
otherwise fail deep inside numpy or torch with a MemoryError traceback, or be killed by the
operating system partway through a run. Checking the estimate first turns that into one line that
says what the config needs and what this machine has.

The estimates count only what a run surely allocates (the graph's arrays, the data, each worker's
parameter and momentum rows), so they are lower bounds: a config refused here cannot run on this
machine, while one accepted may still be tight.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from repgossip.algorithms import ALGORITHMS, Algorithm
from repgossip.architectures import MODELS, build_model
from repgossip.data import har
from repgossip.errors import UsageError
from repgossip.memory import (
    FLOAT_BYTES,
    SYNTHETIC_DEFAULT_SAMPLES,
    check_fits,
    format_bytes,
    int_text,
    synthetic_bytes,
)
from repgossip.schema import Config
from repgossip.topology import check_graph_fits, graph_bytes

# Per model copy, every worker holds a parameter row and a momentum row (Population._add_model_rows),
# and with Adam a second-moment row (its per-tensor step counts are too few to count).
ROWS_PER_PARAMETER = 2
ADAM_ROWS_PER_PARAMETER = 3


@dataclass(frozen=True)
class ImageSet:
    """A built-in image dataset's sizes: what loading it holds in memory, and its model's input."""

    train: int
    test: int
    shape: tuple[int, ...]
    classes: int

    @property
    def pixels(self) -> int:
        return math.prod(self.shape)


IMAGE_SETS = {
    "fmnist": ImageSet(60_000, 10_000, (1, 28, 28), 10),
    "cifar10": ImageSet(50_000, 10_000, (3, 32, 32), 10),
    "cifar100": ImageSet(50_000, 10_000, (3, 32, 32), 100),
}


def _data_bytes(cfg: Config) -> int:
    """The built-in datasets' arrays; 0 for a plug-in dataset, whose size only it knows."""
    if cfg.dataset == "synthetic":
        samples = cfg.samples_per_worker or SYNTHETIC_DEFAULT_SAMPLES
        return synthetic_bytes(cfg.workers, cfg.param("dim"), cfg.param("rank"), samples, samples)
    if cfg.dataset in IMAGE_SETS:
        data = IMAGE_SETS[cfg.dataset]
        loaded = (data.train + data.test) * data.pixels * (1 + FLOAT_BYTES)  # uint8, normalized
        wanted = cfg.workers * (cfg.samples_per_worker or data.train)
        shares = min(wanted, data.train) + min(wanted, data.test)  # capped by what exists
        return loaded + shares * data.pixels * FLOAT_BYTES
    return 0  # hapt's windows are tens of MB; a plug-in's size only it knows


def _input(cfg: Config) -> tuple[tuple[int, ...], int] | None:
    """(input shape, outputs) of a built-in dataset; None for a plug-in one."""
    if cfg.dataset == "synthetic":
        return (cfg.param("dim"),), 0
    if cfg.dataset in IMAGE_SETS:
        return IMAGE_SETS[cfg.dataset].shape, IMAGE_SETS[cfg.dataset].classes
    if cfg.dataset == "hapt":
        return (len(har.CHANNELS), har.WINDOW), len(har.ACTIVITIES)
    return None


def model_parameters(cfg: Config) -> int:
    """Parameters of a built-in model on a built-in dataset, counted on torch's meta device (no
    memory, no initialisation arithmetic); 0 where either is a plug-in, whose code is not run
    for an estimate, or where the model does not take the dataset's inputs."""
    shape = _input(cfg)
    if shape is None or cfg.model is None or cfg.model not in MODELS:
        return 0
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, *shape, cfg)
    except UsageError:
        return 0
    return sum(p.numel() for p in model.parameters())


def _workers_per_process(cfg: Config) -> int:
    """Workers whose rows one process holds: all of them under `sim`, an even share under `dist`
    when torchrun's WORLD_SIZE says how many processes there are."""
    if cfg.engine != "dist":
        return cfg.workers
    world = os.environ.get("WORLD_SIZE", "1")
    processes = int(world) if world.isascii() and world.isdigit() and int(world) > 0 else 1
    return -(-cfg.workers // processes)


def values_per_worker(cfg: Config, parameters: int, algorithm: Algorithm | None = None) -> int:
    """Float values each worker holds for a model of `parameters` parameters: a parameter and a
    momentum row (and Adam's second moment) for every model copy of the algorithm (Ditto has
    two), plus its extra state rows (DisPFL's mask is as wide as the parameters). Without the
    built `algorithm`, a plug-in's code is not run for an estimate: it counts as one copy, a
    lower bound like the rest."""
    per_copy = (
        ROWS_PER_PARAMETER if cfg.optimizer == "sgd" else ADAM_ROWS_PER_PARAMETER
    ) * parameters
    if algorithm is None:
        if cfg.algorithm not in ALGORITHMS:
            return per_copy
        algorithm = ALGORITHMS.get(cfg.algorithm)(cfg)
    copies = 1 + len(algorithm.extra_models())
    widths = [spec.width for spec in algorithm.extra_state().values()]
    state = sum(parameters if width == "params" else int(width) for width in widths)
    return copies * per_copy + state


def model_rows_bytes(cfg: Config, parameters: int, algorithm: Algorithm | None = None) -> int:
    """Bytes of the per-worker rows one process holds for a model of `parameters` parameters."""
    return _workers_per_process(cfg) * values_per_worker(cfg, parameters, algorithm) * FLOAT_BYTES


def estimate(cfg: Config) -> dict[str, int]:
    """Bytes one process of a run of `cfg` surely needs, by part: graph, data and model rows."""
    rows = model_rows_bytes(cfg, model_parameters(cfg))
    return {
        "graph": graph_bytes(cfg.topology, cfg.workers, _edge_prob(cfg)),
        "data": _data_bytes(cfg),
        "model rows": rows,
    }


def _edge_prob(cfg: Config) -> float:
    """erdos_renyi's edge_prob; no other topology's size depends on it."""
    return float(dict(cfg.params).get("edge_prob", 0.0))


def check_config(cfg: Config) -> None:
    """Refuse a config that cannot fit in this machine's memory, from the config alone.

    The graph is checked first with its own message (it says which topology is too dense); then
    the sum of all parts, naming the largest so the user knows which knob to turn.
    """
    check_graph_fits(cfg.topology, cfg.workers, _edge_prob(cfg))
    parts = estimate(cfg)
    largest = max(parts, key=lambda k: parts[k])
    shown = ", ".join(f"{name} {format_bytes(size)}" for name, size in parts.items())
    check_fits(
        sum(parts.values()),
        f"this config (workers={int_text(cfg.workers)}, dataset {cfg.dataset!r}: {shown})",
        f"most of it is the {largest}; {_advice(cfg, largest)}",
    )


def check_model_rows(cfg: Config, parameters: int, algorithm: Algorithm) -> None:
    """Refuse in one line, once the model is built and adapted, rows that cannot fit: the
    config-only check cannot size a plug-in model, a built-in one on a plug-in dataset, or a
    plug-in's extra state."""
    values = values_per_worker(cfg, parameters, algorithm)
    check_fits(
        model_rows_bytes(cfg, parameters, algorithm),
        f"holding the model rows of this config (workers={int_text(cfg.workers)}, model "
        f"{cfg.model!r} of {int_text(parameters)} parameters, algorithm {cfg.algorithm!r}: "
        f"{int_text(values)} values per worker)",
        _advice(cfg, "model rows"),
    )


def _advice(cfg: Config, largest: str) -> str:
    """Which knobs shrink the largest part of a config's memory."""
    if largest == "model rows":
        return "use fewer workers, a smaller model, or more processes (engine=dist)"
    if cfg.dataset == "synthetic":
        return "use fewer workers or smaller sizes (samples_per_worker, dim, rank)"
    if largest == "data":
        return "use fewer workers or a smaller samples_per_worker"
    return "use fewer workers"
