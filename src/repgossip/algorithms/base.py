"""The algorithm interface: what one round of a decentralized algorithm does, as data and hooks.

An algorithm declares its local phases (which part of which model copy SGD updates, for how long),
the part it gossips, and optionally:
- extra model copies per worker (Ditto's personal model), trained by phases that name them;
- extra per-worker state rows (a mask, a buffer), initialised by `init_state`;
- a gradient hook that changes a phase's update (a proximal term, a mask);
- its own communication (`communicate`), for messages other than a dense mixed block;
- an end-of-round hook (mask evolution, schedules).
All of it is stored as rows of the worker population: checkpointed, and moved by the distributed
engine exactly like parameters. The engine calls these hooks; it never names an algorithm.

One round, as the run loop performs it:

    for phase in algorithm.phases: population trains phase.model's phase.part for phase.budget
    bytes = algorithm.communicate(context)          # default: gossip `shared` with W
    algorithm.end_round(context)

(with `communicate_first`, communication comes before the phases instead).
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from repgossip.errors import RepgossipError, UsageError, described, user_code_failed
from repgossip.layout import MAIN_MODEL, PARTS, ROW_KINDS, RowLayout, StateSpec, row_key
from repgossip.params import Param

if TYPE_CHECKING:
    from repgossip.engines.base import Engine
    from repgossip.gossip import RoundPlan
    from repgossip.models import SplitModel
    from repgossip.population import Population
    from repgossip.schema import Config

BUDGETS = ("head", "body")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # row-set names: no dots (those join copy and kind)


@dataclass(frozen=True)
class Phase:
    """One local phase of a round: SGD on `part` of the worker's `model` copy, the rest frozen.

    `part` is "body", "head", "all", or module prefixes joined by "+" that form one block of the
    model's parameters (FedRoD's "head.personal"); the model must have parameters there.

    `budget` names whose keys set its length: "head" (head_steps/head_epochs, lr_head) or "body"
    (body_steps/body_epochs, lr_body). Joint-training phases use both budgets in turn, so every
    algorithm takes the same number of SGD steps per round.
    """

    part: str
    budget: str
    model: str = MAIN_MODEL

    def __post_init__(self) -> None:
        if not self.part or not isinstance(self.part, str):
            raise ValueError(f"Phase part must be {', '.join(PARTS)} or module prefixes")
        if self.budget not in BUDGETS:
            raise ValueError(f"Phase budget must be 'head' or 'body', got '{self.budget}'")


ALTERNATING = (Phase("head", "head"), Phase("body", "body"))  # DePRL, FedRep
JOINT = (Phase("all", "head"), Phase("all", "body"))  # the joint-training baselines


@dataclass
class RoundContext:
    """What the communication and end-of-round hooks may use: this process's workers, the
    engine, the round's plan (graph, W, who is active) and the config."""

    population: Population
    engine: Engine
    plan: RoundPlan
    round_index: int
    config: Config


Rows = Callable[[str], torch.Tensor]  # name of a row set -> its rows for the workers being stepped


class Algorithm:
    """Base of every algorithm. Subclasses set the class attributes and override hooks they need.

    Instances are built from the resolved config (`Algorithm(config)`), so an algorithm reads its
    own keys from it; the defaults below make a plain subclass a valid algorithm.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    phases: ClassVar[tuple[Phase, ...]] = ALTERNATING
    shared: ClassVar[str | None] = "body"  # the part gossiped after the local phases; None: none
    exact_average: ClassVar[bool] = False  # centralized references: complete graph, W = 11^T/N
    default_momentum: ClassVar[float] = 0.0
    evaluated_model: ClassVar[str] = MAIN_MODEL  # the copy whose accuracy is reported
    # Communicate before the local phases instead of after (the DePRL authors' code and DisPFL
    # do): a worker is then evaluated on the model it trained last, not on a fresh mix.
    communicate_first: ClassVar[bool] = False
    # Whether a schedule reads the run's number of rounds (DisPFL anneals over them): then a run
    # cannot be resumed to more rounds with the numbers an uninterrupted longer run would give.
    schedule_reads_rounds: ClassVar[bool] = False
    # The algorithm's own parameters: config keys when it is selected (repgossip.params)
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, config: Config | None = None) -> None:
        self.config = config

    def param(self, name: str) -> Any:
        """The value of this algorithm's parameter `name`: the config's, or without a config its
        declared default."""
        if self.config is not None and name in dict(self.config.params):
            return self.config.param(name)
        declared = {p.name: p for p in type(self).params}
        return declared[name].default

    # ------------------------------------------------------------------ per-worker state

    def extra_models(self) -> tuple[str, ...]:
        """Names of model copies each worker holds besides `params` (each with its own momentum
        and BatchNorm buffers); they start as copies of the common initialisation."""
        return tuple(sorted({p.model for p in self.phases} - {MAIN_MODEL}))

    def extra_state(self) -> Mapping[str, StateSpec]:
        """Named per-worker rows the algorithm keeps besides models (a mask, a counter)."""
        return {}

    def init_state(self, population: Population) -> None:
        """Fill the extra state once, after the common initialisation (default: the specs' fill)."""

    # ------------------------------------------------------------------ the model

    def adapt_model(self, model: SplitModel, num_classes: int) -> SplitModel:
        """The architecture every worker trains, from the configured one (default: unchanged);
        `num_classes` is 0 for regression. FedRoD adds a personal head beside the generic one
        here. Called under the run's seed, before any worker exists."""
        return model

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class scores (or regression values) from the model's outputs, for evaluation
        (default: the outputs themselves)."""
        return outputs

    # ------------------------------------------------------------------ the local step

    def loss(
        self,
        phase: Phase,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        rows: Rows,
    ) -> torch.Tensor:
        """The loss a phase minimises on one worker's batch (default: the task's loss, cross
        entropy or mean squared error). `rows(name)` gives that worker's whole row of a row set,
        e.g. its class counts for a balanced softmax. An algorithm that overrides this trains
        worker by worker (the stacked path computes the task loss only)."""
        return task_loss(outputs, targets)

    def adjust_gradient(
        self, phase: Phase, grad: torch.Tensor, weights: torch.Tensor, rows: Rows
    ) -> None:
        """Change a phase's gradient in place before the SGD update (default: leave it).

        `weights` and `grad` hold the trained columns of the workers being stepped (one worker:
        1-D; a stack of workers: 2-D, one row each); `rows(name)` gives another row set (a model
        copy or extra state) for the same workers and columns, e.g. `rows("params")` for a
        proximal term toward the worker's shared model.
        """

    # ------------------------------------------------------------------ communication

    def communicate(self, ctx: RoundContext) -> int:
        """Exchange with neighbours after the local phases; returns the bytes all workers sent
        (the `bytes_sent` metric). Default: gossip the `shared` part of `params` with W."""
        if self.shared is None:
            return 0
        return ctx.engine.gossip(ctx.population, self.shared, ctx.plan)

    def end_round(self, ctx: RoundContext) -> None:
        """Anything after communication (mask evolution, schedules); default: nothing."""

    # ------------------------------------------------------------------ checks

    def check_declarations(self) -> None:
        """Refuse in one line declarations the engine cannot honour whatever the model: called
        right after the algorithm is built, before anything (the memory check, push-sum's check)
        reads its phases, model copies or state, so a plug-in's mistake is not a traceback.
        Widths and fills of extra state wait for `check`: they may depend on the model."""
        label = self._label()
        phases = self._declared("phases", lambda: self.phases)
        if not isinstance(phases, (tuple, list)) or not phases:
            raise UsageError(f"{label}: phases must be a non-empty tuple of Phase")
        for phase in phases:
            if not isinstance(phase, Phase) or not isinstance(phase.model, str):
                raise UsageError(f"{label}: phases must hold Phase objects, got {phase!r}")
        models = self._declared("extra_models()", self.extra_models)
        if not isinstance(models, (tuple, list)) or not all(isinstance(m, str) for m in models):
            raise UsageError(
                f"{label}: extra_models() must return a tuple of names, got {models!r}"
            )
        taken = {MAIN_MODEL, *ROW_KINDS}
        for model in models:
            if not _NAME.match(model) or model in taken or models.count(model) > 1:
                raise UsageError(
                    f"{label}: model copy '{model}' must be a plain name, given once, other than "
                    f"{', '.join(sorted(taken))}"
                )
        copies = (MAIN_MODEL, *models)
        for phase in phases:
            if phase.model not in copies:
                raise UsageError(
                    f"{label}: a phase trains model copy '{phase.model}', which is not one of its "
                    f"model copies ({', '.join(copies)}); declare it in extra_models()"
                )
        evaluated = self._declared("evaluated_model", lambda: self.evaluated_model)
        if evaluated not in copies:
            raise UsageError(
                f"{label}: evaluated_model {evaluated!r} is not one of its model copies "
                f"({', '.join(copies)})"
            )
        shared = self._declared("shared", lambda: self.shared)
        if shared is not None and (not isinstance(shared, str) or not shared):
            raise UsageError(f"{label}: shared must be a part name or None, got {shared!r}")
        self._state_specs()

    def _state_specs(self) -> Mapping[str, StateSpec]:
        """`extra_state()`, refused in one line unless it maps names to StateSpec."""
        label = self._label()
        specs = self._declared("extra_state()", self.extra_state)
        if not isinstance(specs, Mapping) or not all(
            isinstance(name, str) and isinstance(spec, StateSpec) for name, spec in specs.items()
        ):
            raise UsageError(
                f"{label}: extra_state() must return a mapping of names to StateSpec, got "
                f"{reprlib.repr(specs)}"
            )
        return specs

    def _declared(self, what: str, read: Callable[[], Any]) -> Any:
        """A declaration read from a plug-in, its failure reported in one line."""
        try:
            return read()
        except RepgossipError:
            raise
        except Exception as err:
            raise user_code_failed(
                f"{self._label()}: {what} raised {described(err)}", err
            ) from None

    def check(self, layout: RowLayout) -> None:
        """Refuse in one line extra state and parts the engine cannot honour for a model of
        `layout`: called once the model is adapted (extra state may depend on it, FedRoD's class
        prior is as wide as the classes), after `check_declarations`."""
        label = self._label()
        models = self.extra_models()
        rows = {row_key(m, kind) for m in (MAIN_MODEL, *models) for kind in ROW_KINDS}
        for name, spec in self._state_specs().items():
            if not _NAME.match(name) or name in rows:
                raise UsageError(
                    f"{label}: extra state '{name}' must be a plain name that no model row "
                    f"uses ({', '.join(sorted(rows))})"
                )
            width, fill = spec.width, spec.fill
            ok = width == "params" or (type(width) is int and width > 0)
            finite = type(fill) in (int, float) and math.isfinite(fill)
            if not ok or not finite:
                raise UsageError(
                    f"{label}: extra state '{name}' needs width 'params' or an int > 0 and a "
                    f"finite number as fill, got width={width!r} fill={fill!r}"
                )
        for part in [p.part for p in self.phases] + ([self.shared] if self.shared else []):
            try:
                cols = layout.part(part)
            except ValueError as err:
                raise UsageError(f"{label}: {err}") from None
            if cols.stop <= cols.start:
                raise UsageError(f"{label}: part '{part}' names no parameter of the model")

    def _label(self) -> str:
        return f"algorithm '{self.name or type(self).__name__}'"
