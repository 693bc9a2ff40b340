"""The keys that exist for the study's ablations: gossip_first, reset_momentum, mixing=uniform_row.

Each must change the numbers exactly where it changes the algorithm, and nothing elsewhere."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import repgossip
from repgossip.algorithms.deprl import DePRL
from repgossip.config import build_config
from repgossip.errors import UsageError

SMALL = {"dataset": "synthetic", "workers": 6, "samples_per_worker": 20, "rounds": 3,
         "head_steps": 2, "body_steps": 2, "eval_every": 3}  # fmt: skip


def _params(**keys: Any) -> torch.Tensor:
    result = repgossip.run(SMALL | keys)
    return result.experiment.population.params.clone()


def test_gossip_first_none_is_the_algorithms_own_order() -> None:
    assert torch.equal(_params(), _params(gossip_first=False))  # deprl gossips after training
    assert torch.equal(_params(algorithm="dispfl"), _params(algorithm="dispfl", gossip_first=True))


def test_gossip_first_changes_the_order() -> None:
    assert not torch.equal(_params(), _params(gossip_first=True))
    dispfl = _params(algorithm="dispfl")
    assert not torch.equal(dispfl, _params(algorithm="dispfl", gossip_first=False))


def test_reset_momentum_without_momentum_changes_nothing() -> None:
    assert torch.equal(_params(), _params(reset_momentum=False))


def test_reset_momentum_zeroes_it_each_round_and_only_then() -> None:
    kept = repgossip.run(SMALL | {"momentum": 0.9, "rounds": 1, "reset_momentum": False})
    reset = repgossip.run(SMALL | {"momentum": 0.9, "rounds": 1})  # the default: reset
    # the first round starts from zero momentum either way
    assert torch.equal(kept.experiment.population.params, reset.experiment.population.params)
    momentum = reset.experiment.population.momentum
    assert momentum.abs().sum() > 0  # the round's own momentum is left for inspection
    assert not torch.equal(_params(momentum=0.9), _params(momentum=0.9, reset_momentum=False))


class _ZeroMomentumAtRoundEnd(DePRL):
    """Another route to the same semantics: momentum zeroed after each round's gossip."""

    def end_round(self, ctx: Any) -> None:
        ctx.population.momentum.zero_()


def test_reset_momentum_equals_a_fresh_optimizer_each_round() -> None:
    reset = _params(momentum=0.9, reset_momentum=True)
    fresh = repgossip.run(
        SMALL | {"momentum": 0.9, "reset_momentum": False}, algorithm=_ZeroMomentumAtRoundEnd
    )
    assert torch.equal(reset, fresh.experiment.population.params)


def test_uniform_row_equals_metropolis_on_a_ring_and_differs_on_a_star() -> None:
    assert torch.equal(_params(), _params(mixing="uniform_row"))  # a ring is regular
    star = {"topology": "star"}
    assert not torch.equal(_params(**star), _params(**star, mixing="uniform_row"))


def test_gossip_first_refuses_other_words_naming_none_as_valid() -> None:
    assert build_config({"gossip_first": "none"}).gossip_first is None
    with pytest.raises(
        UsageError, match=r"^gossip_first must be true, false or none, got 'maybe'$"
    ):
        build_config({"gossip_first": "maybe"})
    with pytest.raises(UsageError, match=r"^reset_momentum must be true or false, got '2'$"):
        build_config({"reset_momentum": "2"})
