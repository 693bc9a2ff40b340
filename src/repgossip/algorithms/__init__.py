"""Algorithms: one module per algorithm on the `Algorithm` base, registered by name here.

Adding one is a new module with an `Algorithm` subclass and a line below (or, outside the package,
`--set algorithm=package.module:ClassName`); nothing else changes. See CONTRIBUTING.md.
"""

from __future__ import annotations

from repgossip.algorithms.base import (
    ALTERNATING,
    JOINT,
    MAIN_MODEL,
    Algorithm,
    Phase,
    RoundContext,
    StateSpec,
)
from repgossip.algorithms.deprl import DePRL
from repgossip.algorithms.dfedavgm import DFedAvgM
from repgossip.algorithms.dispfl import DisPFL
from repgossip.algorithms.ditto import Ditto
from repgossip.algorithms.dpsgd import DPSGD
from repgossip.algorithms.fedavg import FedAvg
from repgossip.algorithms.fedper import FedPer
from repgossip.algorithms.fedrep import FedRep
from repgossip.algorithms.fedrod import FedRoD
from repgossip.algorithms.local import Local
from repgossip.registry import Factory, Registry

ALGORITHMS: Registry[type[Algorithm]] = Registry(
    "algorithm", plugins=Factory(Algorithm, "repgossip.Algorithm", functions=False)
)
for _cls in (DePRL, DPSGD, Local, DFedAvgM, FedPer, FedRep, FedAvg, Ditto, FedRoD, DisPFL):
    ALGORITHMS.register(_cls.name, _cls)


def algorithm_class(name: str) -> type[Algorithm]:
    """The class registered as `name`, or the `package.module:ClassName` plug-in (the registry
    checks it is an Algorithm subclass)."""
    return ALGORITHMS.get(name)


__all__ = [
    "ALGORITHMS",
    "ALTERNATING",
    "JOINT",
    "MAIN_MODEL",
    "Algorithm",
    "Phase",
    "RoundContext",
    "StateSpec",
    "algorithm_class",
]
