"""Decentralized FedPer (Arivazhagan et al., 2019): joint local training of body and head, then
gossip of the body only; heads stay private."""

from __future__ import annotations

from repgossip.algorithms.base import JOINT, Algorithm


class FedPer(Algorithm):
    name = "fedper"
    summary = "joint local training; gossip the body"
    phases = JOINT
    shared = "body"
