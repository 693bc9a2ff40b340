"""`repgossip run | sweep | plot | topology`: thin wrappers over the library.

Bad input of any kind ends in one line on stderr and exit code 2; divergence in exit code 3; a lost
or hung peer of the distributed engine in exit code 4.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from repgossip.config import build_config, coerce, coerce_as, parse_assignments, with_legacy_values
from repgossip.configfile import read_yaml
from repgossip.errors import RepgossipError, UsageError, plugin_traceback

EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # 128 + SIGINT, 128 + SIGPIPE


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump) and go through UsageError."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("repgossip").strip()
        raise UsageError(f"{command}: {message}" if command else message)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="base config (YAML mapping)")
    parser.add_argument(
        "--set", dest="assignments", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
        help="override config keys; repeatable, later values win",
    )  # fmt: skip


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue the run(s) in the folder")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def registries() -> dict[str, Any]:
    """Every registry of named components, by the config key that names them."""
    from repgossip.algorithms import ALGORITHMS
    from repgossip.architectures import MODELS
    from repgossip.data.datasets import DATASETS
    from repgossip.data.partition import PARTITIONS
    from repgossip.topology import MIXING_RULES, TOPOLOGIES

    return {
        "algorithm": ALGORITHMS,
        "dataset": DATASETS,
        "model": MODELS,
        "partition": PARTITIONS,
        "topology": TOPOLOGIES,
        "mixing": MIXING_RULES,
    }


def _choices_epilog() -> str:
    lines = [f"  {key}: {registry.valid()}" for key, registry in registries().items()]
    return "choices (repgossip list shows them with descriptions):\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="repgossip", description="Personalized decentralized learning (DePRL).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    epilog, formatter = _choices_epilog(), argparse.RawDescriptionHelpFormatter

    run_p = sub.add_parser(
        "run", help="run one experiment", epilog=epilog, formatter_class=formatter
    )
    _add_config_options(run_p)
    run_p.add_argument(
        "--out", metavar="DIR", help="output folder (default runs/ALGO-DATASET-TIME)"
    )
    run_p.add_argument(
        "--callback", dest="callbacks", metavar="MODULE:NAME", action="append", default=[],
        help="a repgossip.Callback: an instance, or a subclass or function called without "
        "arguments; repeatable (give it again with --resume)",
    )  # fmt: skip
    _add_output_options(run_p)

    sweep_p = sub.add_parser(
        "sweep",
        help="run the product of a grid of configs",
        epilog=epilog,
        formatter_class=formatter,
    )
    sweep_p.add_argument(
        "--grid", metavar="KEY=V1,V2", nargs="+", action="extend", default=[], required=True,
        help="keys and their values; repeatable",
    )  # fmt: skip
    _add_config_options(sweep_p)
    sweep_p.add_argument("--out", metavar="DIR", required=True)
    sweep_p.add_argument(
        "--jobs", type=int, default=1, metavar="J",
        help="grid points run side by side, one process and one torch thread each (default 1)",
    )  # fmt: skip
    sweep_p.add_argument(
        "--paired-with", metavar="KEY=VALUE",
        help="with seed in the grid: the differences of this configuration (KEY=VALUE, or an "
        "algorithm) to each other value of KEY, seed by seed (summary.md, summary_paired.csv)",
    )  # fmt: skip
    _add_output_options(sweep_p)

    from repgossip.plots import BANDS, FIGURE_FORMATS, X_AXES  # no matplotlib: cheap

    plot_p = sub.add_parser(
        "plot", help="draw metric curves of a run or sweep folder (seeds: mean and a band)"
    )
    plot_p.add_argument("folder")
    plot_p.add_argument("--metrics", nargs="+", help="metrics to draw (default by task)")
    plot_p.add_argument("--out", metavar="FILE.png", help="default FOLDER/curves.FORMAT")
    plot_p.add_argument(
        "--x", choices=X_AXES, default="round", help="the x axis (default round)"
    )  # fmt: skip
    plot_p.add_argument(
        "--format", choices=FIGURE_FORMATS, default="png",
        help="image format (default png; a suffix of --out decides instead)",
    )  # fmt: skip
    plot_p.add_argument(
        "--band", choices=BANDS, default="std",
        help="the band around a mean over seeds: +-1 sample std, or min to max (default std)",
    )  # fmt: skip

    topo_p = sub.add_parser("topology", help="describe a graph and its mixing matrix as JSON")
    topo_p.add_argument("name", help=registries()["topology"].valid())
    topo_p.add_argument("--workers", type=int, required=True)
    topo_p.add_argument(
        "--set", dest="assignments", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
        help="mixing, seed, directed, and the topology's own keys (erdos_renyi: edge_prob)",
    )  # fmt: skip
    bench_p = sub.add_parser("bench", help="time a training round against its compute bound (JSON)")
    _add_config_options(bench_p)
    bench_p.add_argument(
        "--rounds-measured", type=int, default=5, metavar="N",
        help="rounds timed after one warm-up round; the median is reported (default 5)",
    )  # fmt: skip
    bench_p.add_argument(
        "--reference", action="store_true",
        help="also time the straightforward per-worker simulator and report the speedup",
    )  # fmt: skip
    bench_p.add_argument("--threads", type=int, metavar="N", help="torch intra-op threads")
    keys_p = sub.add_parser(
        "keys", help="every config key with its default; each component's own, with range and doc"
    )
    keys_p.add_argument(
        "name", nargs="?",
        help="one component only (a registered name, or a plug-in package.module:name), or one "
        "key (where it comes from, its default and doc)",
    )  # fmt: skip
    keys_p.add_argument(
        "--kind", choices=["algorithm", "dataset", "model", "partition", "topology"],
        help="the kind of NAME, where a plug-in could be of several (default: algorithm)",
    )  # fmt: skip
    list_p = sub.add_parser("list", help="the registered algorithms, datasets, models, ...")
    list_p.add_argument("kind", nargs="?", choices=list(registries()), help="one registry only")
    return parser


def _config_from(args: argparse.Namespace, resume_dir: Path | None = None):
    base: dict[str, Any] = {}
    if resume_dir is not None and (resume_dir / "config.yaml").is_file():
        # resume: the saved run is the base, keys it lacks read as its release ran them
        base.update(with_legacy_values(read_yaml(resume_dir / "config.yaml")))
    if args.config:
        base.update(read_yaml(args.config))
    return base, parse_assignments(args.assignments)


def restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def default_out(algorithm: str, dataset: str) -> Path:
    """runs/ALGO-DATASET-TIME, in characters any file system takes, and not one that exists (two
    runs started in the same second get -2, -3, ...)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{algorithm}-{dataset}")[:100]
    base = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, count = base, 1
    while out.exists():
        count += 1
        out = base.with_name(f"{base.name}-{count}")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from repgossip.callbacks import callback_from_ref
    from repgossip.runfolder import resolve_out
    from repgossip.runner import run_experiment

    out = resolve_out(args.out, link_ok=not (args.resume or args.force)) if args.out else None
    if args.resume and out is None:
        raise UsageError("--resume needs --out DIR, the folder of the run to continue")
    callbacks = [callback_from_ref(ref) for ref in args.callbacks]
    if restarted_by_torchrun() and out is not None and (out / "checkpoint.pt").is_file():
        args.resume = True  # torchrun --max-restarts relaunched us: continue from the checkpoint
    base, overrides = _config_from(args, out if args.resume else None)
    # resuming, the saved config's keys of other components are left out; the user's are checked
    cfg = build_config(
        base, overrides, foreign="drop" if args.resume else "refuse", foreign_overrides="refuse"
    )
    if out is None:
        out = default_out(cfg.algorithm, cfg.dataset)
    result = run_experiment(
        cfg, out, resume=args.resume, force=args.force,
        progress=None if not args.quiet else False, callbacks=callbacks,
    )  # fmt: skip
    summary = result.summary
    keys = (
        "test_acc_mean",
        "test_acc_pooled",
        "test_metric_mean",
        "subspace_dist",
        "train_loss",
        "wall_s",
    )
    shown = "  ".join(f"{k}={summary[k]:.4g}" for k in keys if k in summary)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"{cfg.algorithm} on {cfg.dataset}, {summary['rounds']} rounds: {shown}")
        if "stopped_early" in summary:
            print(f"stopped early: {summary['stopped_early']} (--resume continues it)")
        print(f"results in {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the grid; print its table (with `seed` a grid key, one row per configuration), then
    one line on stderr per point that failed. Exits 0 when every point ran, else with the failed
    points' largest exit code (3: one diverged)."""
    from repgossip.grid import parse_grid
    from repgossip.sweep import one_line, sweep
    from repgossip.tables import printed_table

    grid = parse_grid(args.grid)
    base, overrides = _config_from(args)
    result = sweep(grid, {**base, **overrides}, args.out, resume=args.resume, force=args.force,
                   progress=None if not args.quiet else False, jobs=args.jobs,
                   paired_with=args.paired_with)  # fmt: skip
    print(printed_table(result.rows, result.keys, result.paired), end="")
    print(f"tables in {Path(args.out) / 'summary.csv'} and summary.md")
    for name, err in result.failed.items():
        print(f"repgossip: error: grid point {name} failed: {one_line(err)}", file=sys.stderr)
    return result.exit_code


def cmd_plot(args: argparse.Namespace) -> int:
    from repgossip.plots import plot_runs

    metrics = tuple(args.metrics) if args.metrics else None
    path = plot_runs(args.folder, metrics, args.out, x=args.x, fmt=args.format, band=args.band)
    print(f"wrote {path}")
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    from repgossip.components import params_of
    from repgossip.threads import single_threaded
    from repgossip.topology import describe

    settings: dict[str, Any] = {"mixing": "metropolis", "seed": 0, "directed": False}
    own = {p.name: p for p in params_of("topology", args.name)}  # erdos_renyi's edge_prob
    settings |= {name: param.default for name, param in own.items()}
    for key, value in parse_assignments(args.assignments).items():
        if key in own:
            settings[key] = coerce_as(key, value, own[key].kind)
            own[key].check(settings[key])
        elif key in settings:
            settings[key] = coerce(key, value)
        else:
            raise UsageError(f"topology takes --set {', '.join(settings)}, not '{key}'")
    build_config({"mixing": settings["mixing"]})  # validate
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    with single_threaded():  # the spectral gap's eigenvalues, the same on any thread count
        info = describe(args.name, args.workers, **settings)
    print(json.dumps(info))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from repgossip.bench import measure

    base, overrides = _config_from(args)
    cfg = build_config(base, overrides)
    result = measure(cfg, args.rounds_measured, args.reference, args.threads)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(result))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for key, registry in registries().items():
        if args.kind not in (None, key):
            continue
        print(f"{key}:")
        for name, item in registry.items():
            print(f"  {name:<12} {_describe(item)}".rstrip())
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """The core keys with their defaults, then each component's own parameters (declared next to
    its code, repgossip.params), which are keys when it is selected. With a NAME (an algorithm,
    dataset, model, partition or topology, built in or a plug-in), that component's alone; with a
    key's name, that key alone (a component's: with each component that declares it)."""
    from repgossip.components import REGISTRIES, builtin_params, owners, params_of
    from repgossip.params import describe
    from repgossip.registry import is_plugin_ref
    from repgossip.schema import DEFAULTS, key_doc

    if args.name is None:
        print("keys of every run:")
        for key, default in DEFAULTS.items():
            print(f"  {key} = {default}  {key_doc(key)}")
        listed = list(builtin_params())
    elif (
        args.kind is None
        and not any(args.name in r for r in REGISTRIES.values())
        and (args.name in DEFAULTS or owners(args.name))
    ):  # a key, not a component: where it comes from, its default and doc
        if args.name in DEFAULTS:
            print(f"key of every run:\n  {args.name} = {DEFAULTS[args.name]}  {key_doc(args.name)}")
        listed = [(kind, name, tuple(p for p in params_of(kind, name) if p.name == args.name))
                  for kind, name in owners(args.name)]  # fmt: skip
    else:  # a plug-in reference is an algorithm's unless --kind says otherwise
        kinds = [args.kind] if args.kind else [k for k, r in REGISTRIES.items() if args.name in r]
        if not kinds and not is_plugin_ref(args.name):
            _refuse_unknown_key_or_component(args.name)
        kinds = kinds or ["algorithm"]
        for kind in kinds:
            REGISTRIES[kind].get(args.name)  # an unknown name: one line with the valid choices
        listed = [(kind, args.name, params_of(kind, args.name)) for kind in kinds]
    for kind, name, params in listed:
        print(f"{kind} {name}:" + ("" if params else " no keys of its own"))
        for param in params:
            print(describe(param))
    return 0


def _refuse_unknown_key_or_component(name: str) -> None:
    """`keys NAME` where NAME is no key and no component: the closest key if one is near (a
    misspelt key), else the algorithms (a misspelt component's most likely kind)."""
    from repgossip.components import REGISTRIES
    from repgossip.config import builtin_param_names, closest_key
    from repgossip.text import shown

    close = closest_key(name, builtin_param_names())
    if close:
        raise UsageError(f"no key or component {shown(name)}; did you mean '{close}'?")
    REGISTRIES["algorithm"].get(name)  # one line with the valid choices


def _describe(item: Any) -> str:
    """A registered item's one-line description: its summary, else its docstring's first line."""
    summary = getattr(item, "summary", "")
    doc = (getattr(item, "__doc__", None) or "").strip().splitlines()
    return summary or (doc[0] if doc else "")


COMMANDS = {
    "run": cmd_run,
    "sweep": cmd_sweep,
    "plot": cmd_plot,
    "topology": cmd_topology,
    "bench": cmd_bench,
    "list": cmd_list,
    "keys": cmd_keys,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except RepgossipError as err:
        shown = plugin_traceback(err)
        if shown:  # REPGOSSIP_TRACEBACK=1: where user code failed, for its author
            print(shown, end="", file=sys.stderr)
        print(f"repgossip: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # `repgossip ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("repgossip: interrupted; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
