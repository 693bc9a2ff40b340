"""Config text read safely: a file of bounded size, UTF-8, safe YAML without anchors, aliases or
deep nesting, a flat mapping of key: value; every failure is one line naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from repgossip.errors import UsageError
from repgossip.schema import KEYS
from repgossip.text import quoted_path, shown

MAX_CONFIG_BYTES = 1 << 20  # a config is a short mapping; a bigger file is a mistake or an attack
MAX_YAML_DEPTH = 20  # a config is flat (depth 2); deeper nesting only risks a RecursionError


class _Refused(Exception):
    """A construct that a config file may not use, and where in the file it is."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = getattr(mark, "line", -1) + 1


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases, and with a nesting limit.

    A config needs neither, and both are attacks on memory: a few hundred bytes of nested aliases
    ("billion laughs") stand for gigabytes once anything walks the value, and thousands of nested
    brackets overflow the composer's recursion. Both are refused while composing, before any value
    is built.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                "uses a YAML anchor or alias (& or *); write each value out", event.start_mark
            )
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(
                f"nests deeper than {MAX_YAML_DEPTH} levels; a config is a mapping of key: value",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_config_text(path: Path) -> str:
    """The file's text, reading at most MAX_CONFIG_BYTES + 1 bytes (so /dev/zero or a huge file
    costs nothing); every failure is one line naming the file."""
    name = quoted_path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"config file {name} not found") from None
    except OSError as err:
        raise UsageError(f"cannot read config file {name}: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(
            f"config file {name} is larger than {MAX_CONFIG_BYTES >> 20} MiB; "
            "a config is a short mapping of key: value"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"config file {name} is not UTF-8 text (byte {err.start})") from None


def _parse_yaml(text: str, name: str) -> Any:
    """Safe YAML without anchors, aliases or deep nesting; every failure is one line, starting
    with `name` (what the text is: "config file '...'")."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: no arbitrary objects
    except _Refused as err:
        raise UsageError(f"{name} {err.problem} (line {err.line})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"{name} is not valid YAML{line}") from None
    except RecursionError:
        raise UsageError(f"{name} nests too deeply to read") from None
    except (ValueError, TypeError, OverflowError) as err:
        # a scalar that YAML's constructors cannot build: a date in year 0, an int past 4,300 digits
        reason = " ".join(str(err).split())[:200]
        raise UsageError(f"{name} holds a value YAML cannot read: {reason}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping. Safe YAML only; every failure is one line naming the file."""
    path = Path(path)
    return parse_mapping(read_config_text(path), f"config file {quoted_path(path)}")


def parse_mapping(text: str, name: str) -> dict[str, Any]:
    """The mapping of key: value that config text holds (`name` says what the text is, for the
    one-line errors). Safe YAML only."""
    data = _parse_yaml(text, name)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{name} must hold a mapping of key: value, not a list or scalar")
    for key in data:
        if not isinstance(key, str):
            raise UsageError(
                f"{name}: key {shown(key)} is not a name; valid keys: {', '.join(KEYS)}"
            )
    return data
