"""The Python API, the command line's twin: `repgossip.run(config, model=..., data=..., ...)`.

    import repgossip
    result = repgossip.run({"algorithm": "deprl", "workers": 8, "rounds": 20},
                           model=make_model, data=(train_x, train_y, test_x, test_y),
                           graph=networkx_graph, callbacks=[...], out=None)
    result.history, result.summary, result.worker_state(3)

Every config key may also be given as a keyword. Objects handed over (a model function, data, a
graph, an algorithm class, a `loss` or `metric` function) take the place of registered names;
`config.yaml` records an import path for each that has one (so `repgossip run --resume` can
continue the run), else `python:<name>`, and resuming such a run needs the same objects again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from repgossip.algorithms import Algorithm
from repgossip.callbacks import Callback
from repgossip.config import Config, as_it_ran, build_config
from repgossip.configfile import read_yaml
from repgossip.data.datasets import GIVEN_SPLIT_KEYS
from repgossip.data.federation import comes_per_worker, workers_of
from repgossip.errors import UsageError
from repgossip.experiment import Supplied
from repgossip.registry import API_PREFIX, reference_of
from repgossip.runfolder import CONFIG_FILE, resolve_out
from repgossip.runner import RunResult, run_experiment
from repgossip.text import shown
from repgossip.topology import as_array, graph_from_object


def run(
    config: Mapping[str, Any] | Config | str | Path | None = None,
    *,
    model: Any = None,
    data: Any = None,
    graph: Any = None,
    algorithm: type[Algorithm] | str | None = None,
    callbacks: Sequence[Callback] = (),
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = False,
    **keys: Any,
) -> RunResult:
    """Run one experiment and return its history, summary and worker states.

    `config` is a mapping of config keys, a Config, or a YAML file; `keys` override it. `model`
    is a function returning a module with `body` and `head` (called with whichever of
    `input_shape`, `num_classes`, `config` it names); `data` is per-worker tensors or torch
    Datasets, used as given (recorded as partition=natural), or centralized tensors, a Dataset or
    a DataLoader, split whole and iid unless the config sets the split (repgossip.data.federation
    lists the forms); `graph` a networkx graph or an (N, N)
    adjacency; `algorithm` an Algorithm subclass; the keys `loss` and `metric` may be functions
    (repgossip.objectives has their signatures). `out` writes the usual run folder; None keeps
    everything in memory. `progress` None shows a bar on a terminal and plain lines elsewhere.
    """
    base = _base_config(config)
    _check_callbacks(callbacks)
    # A name is the config key of the same name ("any config key may also be a keyword").
    if isinstance(model, str):
        keys, model = {**keys, "model": model}, None
    if isinstance(algorithm, str):
        keys, algorithm = {**keys, "algorithm": algorithm}, None
    mixing = None
    if "mixing" in keys and not isinstance(keys["mixing"], (str, os.PathLike)):
        mixing = as_array(keys["mixing"])  # W itself, checked against the graph when built
        keys = {**keys, "mixing": f"{API_PREFIX}{type(keys['mixing']).__name__}"}
    _check_out(out)
    if isinstance(graph, (str, Path)):
        raise UsageError(
            f"graph must be a networkx graph or an (N, N) adjacency; to name a topology or a "
            f"file, use topology={str(graph)!r}"
        )
    given = {**base, **keys}
    if resume and out is not None:  # a folder of an older release continues as it ran
        given |= _as_it_ran(Path(out), given)
    references = {
        "model": model,
        "dataset": data,
        "topology": graph,
        "algorithm": algorithm,
    }
    for key, obj in references.items():
        if obj is not None:
            reference = _reference(key, obj)
            named = str(given.get(key, reference))
            if named != reference and not named.startswith(API_PREFIX):
                what = {"dataset": "data", "topology": "graph"}.get(key, key)
                raise UsageError(f"give {key} or {what}, not both (got {key}={named!r})")
            given[key] = reference
    graph_object = None
    if graph is not None:
        graph_object = graph_from_object(graph, given.get("workers"))
        given.setdefault("workers", graph_object.workers)
    if data is not None and comes_per_worker(data):  # used as given: recorded so
        given |= GIVEN_SPLIT_KEYS
        given.setdefault("workers", workers_of(data))
    if algorithm is not None and not (
        isinstance(algorithm, type) and issubclass(algorithm, Algorithm)
    ):
        raise UsageError(f"algorithm must be a subclass of repgossip.Algorithm, got {algorithm!r}")
    functions = {key: given[key] for key in ("loss", "metric") if callable(given.get(key))}
    for key, function in functions.items():
        given[key] = reference_of(function)
    # resuming, a saved config's keys of other components are left out; the caller's are checked
    stated = {k: v for k, v in given.items() if k in keys}
    cfg = build_config(
        {k: v for k, v in given.items() if k not in keys}, stated, algorithm=algorithm,
        foreign="drop" if resume else "refuse", foreign_overrides="refuse",
    )  # fmt: skip
    supplied = Supplied(
        model=model, data=data, graph=graph_object, algorithm=algorithm, mixing=mixing,
        loss=functions.get("loss"), metric=functions.get("metric"),
    )  # fmt: skip
    return run_experiment(
        cfg, out, resume=resume, force=force, progress=progress, callbacks=callbacks,
        supplied=supplied, gather=True,
    )  # fmt: skip


def _check_out(out: Any) -> None:
    """A folder path as str or os.PathLike (of str), or None: anything else (an int, bytes) would
    end in a TypeError from deep inside pathlib."""
    if out is None:
        return
    with suppress(TypeError):  # os.fspath's answer to what is no path at all
        if isinstance(os.fspath(out), str):
            return
    raise UsageError(f"out must be a folder path (a str or os.PathLike) or None, got {shown(out)}")


def _check_callbacks(callbacks: Any) -> None:
    """A list of Callback instances (a class or a bare function is a common slip)."""
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise UsageError(f"callbacks must be a list of Callback objects, got {callbacks!r}")
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise UsageError(
                f"each callback must be an instance of a repgossip.Callback subclass, got "
                f"{callback!r}"
            )


def _base_config(config: Mapping[str, Any] | Config | str | Path | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, (str, Path)):
        return read_yaml(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise UsageError(f"config must be a mapping, a Config or a YAML file path, got {config!r}")


def _reference(key: str, obj: Any) -> str:
    """What config.yaml records for an object handed over for `key`: an import path for functions
    and classes that have one, `python:<name>` otherwise (data and graphs always)."""
    if key in ("model", "algorithm") and callable(obj):
        return reference_of(obj)
    return f"{API_PREFIX}{type(obj).__name__}"


def _as_it_ran(out: Path, given: Mapping[str, Any]) -> dict[str, Any]:
    """What resuming `out`, written by an older release, must keep (`config.as_it_ran`); nothing
    where it holds no readable config.yaml (resuming says why)."""
    try:
        path = resolve_out(out, link_ok=True) / CONFIG_FILE
        return as_it_ran(read_yaml(path), given) if path.is_file() else {}
    except UsageError:
        return {}
