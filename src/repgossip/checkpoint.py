"""Checkpoints across processes: every worker's rows gathered to the writer and scattered back on
resume, bound to the config, the plug-ins' sources and the data they were trained with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from repgossip.config import Config, changed_keys, dump_yaml, saved_config
from repgossip.engines import Engine
from repgossip.errors import UsageError
from repgossip.experiment import Experiment, Supplied
from repgossip.runfolder import (
    CHECKPOINT_FILE,
    PLUGINS_KEY,
    atomic_write,
    checkpoint_bytes,
    read_checkpoint,
)

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
            f"checkpoint '{path}' was written with {key}={saved.to_dict().get(key)!r}, not "
            f"{exp.cfg.to_dict().get(key)!r}; it belongs to another run (was config.yaml edited?)"
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
            f"the {key} plug-in '{exp.cfg.to_dict().get(key)}' changed since checkpoint '{path}' was "
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
