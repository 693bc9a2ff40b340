"""The components a config selects (its algorithm, dataset, model, partition and topology) and the
parameters each declares (repgossip.params): one table from a config key to the registry of
that kind, so a new kind of component, or a new parameter, is a change in one place.

A component's parameters are config keys only while it is selected: `alpha` is a key of the
dirichlet partitions, `edge_prob` of erdos_renyi, `dim` of the synthetic dataset, `mu` of a plug-in
algorithm that declares it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from repgossip.algorithms import ALGORITHMS
from repgossip.architectures import MODELS
from repgossip.data.datasets import DATASETS
from repgossip.data.partition import PARTITIONS
from repgossip.params import Param, declared, table_row
from repgossip.registry import API_PREFIX, Registry, is_plugin_ref
from repgossip.schema import KEYS
from repgossip.topology import TOPOLOGIES

# The arguments components are called with besides their parameters (a dataset function's
# `config`, a topology builder's `name`, ...): no parameter may take one of these names.
CALL_ARGUMENTS = ("config", "name", "input_shape", "num_classes", "params")
# Each kind of component: the config key that selects it, and its registry.
REGISTRIES: dict[str, Registry[Any]] = {
    "algorithm": ALGORITHMS,
    "dataset": DATASETS,
    "model": MODELS,
    "partition": PARTITIONS,
    "topology": TOPOLOGIES,
}


def params_of(kind: str, name: str, component: Any = None) -> tuple[Param, ...]:
    """The parameters component `name` of `kind` declares: a built-in's, or a plug-in's (imported
    and checked); none for a topology file or an object handed to the Python API, unless that
    object (`component`) declares them itself."""
    registry = REGISTRIES[kind]
    if component is None:
        if name.startswith(API_PREFIX) or not (name in registry or is_plugin_ref(name)):
            return ()
        component = registry.get(name)
    label = f"{kind} '{getattr(component, 'name', '') or name}'"
    return declared(component, label, (*KEYS, *CALL_ARGUMENTS))


def selected(
    values: Mapping[str, Any], given: Mapping[str, Any] | None = None
) -> Iterator[tuple[str, str, tuple[Param, ...]]]:
    """(kind, name, parameters) of each component the resolved core `values` select; `given`
    maps a kind to the object an API caller handed over for it."""
    for kind in REGISTRIES:
        name = values.get(kind)
        if name is not None:
            yield kind, str(name), params_of(kind, str(name), (given or {}).get(kind))


def owners(key: str) -> list[tuple[str, str]]:
    """(kind, name) of every built-in component that declares parameter `key`."""
    return [
        (kind, name)
        for kind, registry in REGISTRIES.items()
        for name in registry.names()
        if key in {p.name for p in params_of(kind, name)}
    ]


def builtin_params() -> Iterator[tuple[str, str, tuple[Param, ...]]]:
    """(kind, name, parameters) of every built-in component that declares any, in registry
    order: what `repgossip keys` lists and the README's key table shows."""
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            params = params_of(kind, name)
            if params:
                yield kind, name, params


def key_rows() -> list[str]:
    """README's "Config keys" rows of every built-in component's parameters, one per key (a key
    that several components declare, such as alpha, names them all): what `tests/test_docs.py`
    finds there, so the table and the declarations cannot drift apart."""
    rows: dict[str, tuple[Param, list[str]]] = {}
    for _kind, name, params in builtin_params():
        for param in params:
            rows.setdefault(param.name, (param, []))[1].append(name)
    return [table_row(", ".join(names), param) for param, names in rows.values()]
