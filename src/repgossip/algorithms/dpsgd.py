"""D-PSGD (Lian et al., NeurIPS 2017): local SGD on the whole model, then gossip of the whole model.
One shared model for all workers: the non-personalized decentralized baseline."""

from __future__ import annotations

from repgossip.algorithms.base import JOINT, Algorithm


class DPSGD(Algorithm):
    name = "dpsgd"
    summary = "joint local training; gossip the whole model"
    phases = JOINT
    shared = "all"
