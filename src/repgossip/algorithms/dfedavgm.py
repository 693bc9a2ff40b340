"""DFedAvgM (Sun et al., 2022): decentralized FedAvg with local momentum SGD, then gossip of the
whole model. D-PSGD's phases with momentum 0.9 unless `momentum` is given."""

from __future__ import annotations

from repgossip.algorithms.base import JOINT, Algorithm


class DFedAvgM(Algorithm):
    name = "dfedavgm"
    summary = "local momentum SGD; gossip the whole model"
    phases = JOINT
    shared = "all"
    default_momentum = 0.9
