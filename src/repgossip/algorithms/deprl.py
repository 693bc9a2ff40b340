"""DePRL (Xiong, Yan, Wang, Li, AAAI 2024): personalized decentralized learning with a shared
representation. Each round: SGD on the private head with the body frozen, SGD on the body with the
new head frozen, then gossip of the body with W. Heads never leave the worker."""

from __future__ import annotations

from repgossip.algorithms.base import ALTERNATING, Algorithm


class DePRL(Algorithm):
    name = "deprl"
    summary = "head, then body; gossip the body"
    phases = ALTERNATING
    shared = "body"
