"""Algorithms as data: the local phases of a round and the part that is gossiped.

One round of any algorithm is

    for phase in algorithm.phases: population.train(phase.part, budget of phase.budget)
    if algorithm.shared: engine.gossip(algorithm.shared)

DePRL trains the head (body frozen), then the body (new head frozen), then gossips the body. The
joint-training baselines train the whole model for the same number of local steps (the head budget,
then the body budget, as in the FedRep and DePRL reference code), so every algorithm takes the same
number of SGD steps per round. FedRep and FedAvg are the centralized references: exact averaging,
which is gossip on the complete graph with W = 11^T/N.
"""

from __future__ import annotations

from dataclasses import dataclass

from repgossip.errors import UsageError


@dataclass(frozen=True)
class Phase:
    part: str  # which parameters SGD updates: "head", "body" or "all"
    budget: str  # whose budget keys set its length: "head" (head_steps/epochs) or "body"


@dataclass(frozen=True)
class Algorithm:
    name: str
    phases: tuple[Phase, ...]
    shared: str | None  # the part gossiped after the local phases; None: no communication
    exact_average: bool = False  # the centralized references: complete graph, W = 11^T/N
    default_momentum: float = 0.0
    summary: str = ""


ALTERNATING = (Phase("head", "head"), Phase("body", "body"))
JOINT = (Phase("all", "head"), Phase("all", "body"))

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("deprl", ALTERNATING, "body", summary="head, then body; gossip the body"),
        Algorithm("local", JOINT, None, summary="joint local training, no communication"),
        Algorithm("dpsgd", JOINT, "all", summary="joint local training; gossip the whole model"),
        Algorithm("dfedavgm", JOINT, "all", default_momentum=0.9,
                  summary="local momentum SGD; gossip the whole model"),
        Algorithm("fedper", JOINT, "body", summary="joint local training; gossip the body"),
        Algorithm("fedrep", ALTERNATING, "body", exact_average=True,
                  summary="DePRL with exact averaging of the body (centralized)"),
        Algorithm("fedavg", JOINT, "all", exact_average=True,
                  summary="joint local training with exact averaging (centralized)"),
    )
}  # fmt: skip


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise UsageError(f"unknown algorithm '{name}'; valid: {', '.join(ALGORITHMS)}") from None
