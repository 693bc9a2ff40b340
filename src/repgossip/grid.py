"""A sweep's grid: the product of `--grid key=v1,v2` lists, and each point's folder name (readable
where it can be, a hash where it cannot, never a name two points share)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from repgossip.config import split_assignment
from repgossip.errors import UsageError

MAX_NAME = 100  # characters of a point's folder name (file systems stop at 255 bytes)
HASH_MARK = "~"  # precedes a name's hash; never in a readable name, so the two kinds never meet
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # what a folder name may not hold, on any system


# ---------------------------------------------------------------- the grid


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """`["algorithm=deprl,local", "lr=0.1"]` -> {"algorithm": ["deprl", "local"], "lr": ["0.1"]}.
    A key given twice is refused rather than merged or dropped: which values were meant is not
    ours to guess."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, values = _grid_entry(spec)
        if key in grid:
            raise UsageError(
                f"--grid gives '{key}' twice; give all values of '{key}' in one --grid {key}=a,b"
            )
        grid[key] = values
    if not grid:
        raise UsageError("sweep needs at least one --grid key=v1,v2")
    return grid


def _grid_entry(spec: str) -> tuple[str, list[str]]:
    """One `key=v1,v2` of --grid, refusing an unknown key, no values, an empty or repeated value
    (each would run nothing, fail later, or run one point twice)."""
    key, text = split_assignment(spec, "--grid", "key=v1,v2,...")
    values = [v.strip() for v in text.split(",")]
    if not any(values):
        raise UsageError(f"--grid '{spec}' gives no values for '{key}'; write {key}=v1,v2")
    if not all(values):
        raise UsageError(f"--grid '{spec}' has an empty value; write none for no value")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise UsageError(f"--grid '{spec}' lists '{twice}' twice; give each value once")
    return key, values


def grid_points(grid: Mapping[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _readable(point: Mapping[str, str]) -> str:
    return "__".join(f"{k}-{_UNSAFE.sub('_', v)}" for k, v in point.items())


def point_hash(point: Mapping[str, str]) -> str:
    """8 hex digits of sha256 over the exact point: what tells apart points whose readable names
    are equal or cut short."""
    return hashlib.sha256(json.dumps(dict(point), sort_keys=True).encode()).hexdigest()[:8]


def run_name(point: Mapping[str, str], collides: bool = False) -> str:
    """The folder name of `point`: `key-value__key-value`, unsafe characters as `_`; with `~hash`
    appended (the readable part cut to fit) when characters were replaced, the name is over
    MAX_NAME characters, or another point has the same readable name (`collides`). Readable
    names never contain `~`, so the names of one grid's points are all distinct."""
    readable = _readable(point)
    lossy = any(_UNSAFE.search(v) for v in point.values())
    if not (lossy or collides or len(readable) > MAX_NAME):
        return readable
    return readable[: MAX_NAME - 9] + HASH_MARK + point_hash(point)


def run_names(points: Sequence[Mapping[str, str]]) -> list[str]:
    """The folder names of a grid's points, distinct and at most MAX_NAME characters."""
    counts = Counter(_readable(p) for p in points)
    return [run_name(p, counts[_readable(p)] > 1) for p in points]
