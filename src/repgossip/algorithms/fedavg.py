"""FedAvg (McMahan et al., 2017): joint local training with exact averaging of the whole model,
the centralized non-personalized reference (complete graph, W = 11^T/N)."""

from __future__ import annotations

from repgossip.algorithms.base import JOINT, Algorithm


class FedAvg(Algorithm):
    name = "fedavg"
    summary = "joint local training with exact averaging (centralized)"
    phases = JOINT
    shared = "all"
    exact_average = True
