"""Local training: every worker trains its whole model on its own data and never communicates. The
lower reference of personalization: what a worker reaches alone."""

from __future__ import annotations

from repgossip.algorithms.base import JOINT, Algorithm


class Local(Algorithm):
    name = "local"
    summary = "joint local training, no communication"
    phases = JOINT
    shared = None
