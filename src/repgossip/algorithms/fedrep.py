"""FedRep (Collins et al., ICML 2021): DePRL's alternating phases with exact averaging of the body,
the centralized reference (complete graph, W = 11^T/N)."""

from __future__ import annotations

from repgossip.algorithms.base import ALTERNATING, Algorithm


class FedRep(Algorithm):
    name = "fedrep"
    summary = "DePRL with exact averaging of the body (centralized)"
    phases = ALTERNATING
    shared = "body"
    exact_average = True
