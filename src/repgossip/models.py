"""Models with an explicit representation (`body`) and a private `head`, and the model registry.

The split is declared by the architecture, never guessed from parameter names: the body is what
DePRL-style algorithms share, the head is what stays with the worker. A model function (built in,
`--set model=package.module:function`, or `repgossip.run(model=...)`) returns a module with `body`
and `head` submodules; the output is `head(body(x))`. It is called with whichever of
`input_shape`, `num_classes` and `config` its signature names.

BatchNorm buffers are per-worker state and Dropout draws from the worker's own random stream
(repgossip.population), so such models run in `sim` and `dist` with the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from repgossip.errors import UsageError
from repgossip.registry import Factory, Registry, call_with_accepted

if TYPE_CHECKING:
    from repgossip.config import Config

ModelFunction = Callable[..., nn.Module]
MODELS: Registry[ModelFunction] = Registry(
    "model", plugins=Factory(nn.Module, "torch.nn.Module", returns=" that returns an nn.Module")
)
# Random layers that draw from the global generator cannot follow a worker's own stream.
UNSUPPORTED_RANDOM = (nn.AlphaDropout, nn.FeatureAlphaDropout)


class SplitModel(nn.Module):
    """`head(body(x))`, with the two halves as named submodules."""

    def __init__(self, body: nn.Module, head: nn.Module, squeeze_output: bool = False) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.squeeze_output = squeeze_output

    def forward(self, x: torch.Tensor, stage: str = "full") -> torch.Tensor:
        """`stage` "full" maps inputs to outputs, "body" inputs to features, "head" features to
        outputs: one entry point that runs any part of the model."""
        if stage == "body":
            return self.body(x)
        if stage == "head":
            return self.head_forward(x)
        return self.head_forward(self.body(x))

    def head_forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.head(features)
        return out.squeeze(-1) if self.squeeze_output else out


def cnn(input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
    """The CNN of the DePRL/FedRep experiments, for 28x28 images.

    The benchmarks compare this exact network."""
    channels, height, width = _image_shape(input_shape, "cnn")
    if (height, width) != (28, 28):
        raise UsageError(f"model 'cnn' needs 28x28 images, got {height}x{width}; use model 'mlp'")
    body = nn.Sequential(
        nn.Conv2d(channels, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(512, 128), nn.ReLU(),
    )  # fmt: skip
    return SplitModel(body, nn.Linear(128, num_classes))


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> SplitModel:
    """Two hidden layers of 128 units; inputs flattened; one output for regression."""
    inputs = math.prod(input_shape)
    body = nn.Sequential(
        nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
    )
    return SplitModel(body, nn.Linear(hidden, max(num_classes, 1)), squeeze_output=not num_classes)


def linear(input_shape: tuple[int, ...], config: Config | None = None) -> SplitModel:
    """The linear-representation model of the synthetic task: body B^T (d->k), head theta (k->1).

    No biases; k is the config's `rank` (2 without a config, the config's default)."""
    if len(input_shape) != 1:
        raise UsageError(f"model 'linear' needs feature vectors, got inputs of shape {input_shape}")
    (dim,) = input_shape
    rank = config.rank if config is not None else 2
    return SplitModel(nn.Linear(dim, rank, bias=False), nn.Linear(rank, 1, bias=False), True)


def _image_shape(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UsageError(
            f"model '{name}' needs images (channels, height, width), got inputs of shape "
            f"{input_shape}"
        )
    return input_shape[0], input_shape[1], input_shape[2]


for _fn in (cnn, mlp, linear):
    MODELS.register(_fn.__name__, _fn)


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    config: Config | None = None,
    function: ModelFunction | None = None,
) -> SplitModel:
    """The model `name` (or the given `function`) for inputs of `input_shape`, as a SplitModel.

    `num_classes` is 0 for regression. Call under the run's seed: the initialisation drawn here is
    every worker's starting point.
    """
    fn = function if function is not None else MODELS.get(name)
    if not callable(fn):
        raise UsageError(f"model '{name}' must be a function returning a module, got {fn!r}")
    try:
        module = call_with_accepted(
            fn, input_shape=tuple(input_shape), num_classes=num_classes, config=config
        )
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(
            f"model '{name}' raised {type(err).__name__}: {_first_line(err)}"
        ) from None
    return as_split_model(module, name)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def as_split_model(module: Any, name: str) -> SplitModel:
    """`module` as a SplitModel, or a one-line UsageError naming the expected form."""
    if isinstance(module, SplitModel):
        split = module
    else:
        body, head = getattr(module, "body", None), getattr(module, "head", None)
        if not isinstance(module, nn.Module) or not all(
            isinstance(m, nn.Module) for m in (body, head)
        ):
            raise UsageError(
                f"model '{name}' must return an nn.Module with 'body' and 'head' submodules "
                f"(output = head(body(x))), got {type(module).__name__}"
            )
        _check_nothing_outside(module, name)
        assert isinstance(body, nn.Module) and isinstance(head, nn.Module)  # checked above
        split = SplitModel(body, head, squeeze_output=bool(getattr(module, "squeeze_output", 0)))
    _check_split(split, name)
    return split


def _check_nothing_outside(module: nn.Module, name: str) -> None:
    """Every parameter and buffer lives in the body or the head: anything else would not be
    trained, shared or checkpointed, so it is refused rather than silently dropped."""
    for kind, named in (
        ("parameter", module.named_parameters()),
        ("buffer", module.named_buffers()),
    ):
        for qualified, _ in named:
            if not qualified.startswith(("body.", "head.")):
                raise UsageError(
                    f"model '{name}' has {kind} '{qualified}' outside 'body' and 'head'; "
                    "move it into one of them"
                )


def _check_split(model: SplitModel, name: str) -> None:
    body = {id(p) for p in model.body.parameters()}
    shared = [n for n, p in model.head.named_parameters() if id(p) in body]
    if shared:
        raise UsageError(
            f"model '{name}': head parameter '{shared[0]}' is also a body parameter; the body "
            "and the head must not share weights"
        )
    for qualified, sub in model.named_modules():
        if isinstance(sub, UNSUPPORTED_RANDOM):
            raise UsageError(
                f"model '{name}': layer '{qualified}' ({type(sub).__name__}) draws from the "
                "global random generator; use nn.Dropout, which follows each worker's stream"
            )
    if not any(True for _ in model.parameters()):
        raise UsageError(f"model '{name}' has no parameters to train")
    _check_tensors(model, name)


def _check_tensors(model: SplitModel, name: str) -> None:
    """Parameters are float32 rows trained whole, buffers float32 or int64 rows (BatchNorm's
    kinds): anything else would be silently converted or ignored, so it is refused."""
    for qualified, param in model.named_parameters():
        if param.dtype != torch.float32:
            raise UsageError(
                f"model '{name}': parameter '{qualified}' is {param.dtype}; repgossip trains "
                "float32 parameters"
            )
        if not param.requires_grad:
            raise UsageError(
                f"model '{name}': parameter '{qualified}' has requires_grad=False; repgossip "
                "trains every parameter of a phase's part (register a fixed tensor as a buffer)"
            )
    for qualified, buffer in model.named_buffers():
        if buffer.dtype not in (torch.float32, torch.int64):
            raise UsageError(
                f"model '{name}': buffer '{qualified}' is {buffer.dtype}; per-worker buffers are "
                "float32 or int64 (as BatchNorm's)"
            )


class WorkerDropout(nn.Module):
    """nn.Dropout (or Dropout1d/2d/3d) drawing its mask from a generator the engine sets per
    worker and phase, instead of the global one: a worker's numbers then do not depend on which
    other workers run in the same process or thread, so `sim` and `dist` agree."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.p = float(getattr(original, "p", 0.5))
        self.channelwise = not isinstance(original, nn.Dropout)  # Dropout1d/2d/3d drop channels
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0  # all dropped, the graph kept (as torch's dropout does)
        shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.channelwise else x.shape
        keep = torch.rand(shape, generator=self.generator) >= self.p
        return x * keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.p)


DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def use_worker_dropout(module: nn.Module) -> list[WorkerDropout]:
    """Replace every dropout layer of `module` (a private copy) by a WorkerDropout; returns them,
    so the engine can hand each the generator of the worker it is running."""
    replaced = []
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, DROPOUT_TYPES):
                worker = WorkerDropout(child)
                setattr(parent, child_name, worker)
                replaced.append(worker)
    return replaced


@torch.no_grad()
def check_fits(model: SplitModel, sample: torch.Tensor, num_classes: int, name: str) -> None:
    """Run `model` (eval mode, so no statistics move) on two training samples and refuse, in one
    line, outputs that the loss cannot take: (batch, num_classes) logits for classification, one
    value per sample for regression (a trailing dimension of 1 is squeezed)."""
    was_training = model.training
    model.eval()
    try:
        features = model.body(sample[:2])
        if not isinstance(features, torch.Tensor):
            raise UsageError(
                f"model '{name}': its body must return a tensor of features, got "
                f"{type(features).__name__}"
            )
        out = model.head_forward(features)
        if not isinstance(out, torch.Tensor):
            raise UsageError(
                f"model '{name}': its head must return a tensor, got {type(out).__name__}"
            )
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(
            f"model '{name}' cannot take inputs of shape {tuple(sample.shape[1:])}: "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None
    finally:
        model.train(was_training)
    batch = len(sample[:2])
    if num_classes == 0 and out.shape == (batch, 1) and not model.squeeze_output:
        model.squeeze_output = True
        out = out.squeeze(-1)
    expected = (batch, num_classes) if num_classes else (batch,)
    if tuple(out.shape) != expected:
        want = f"(batch, {num_classes}) logits" if num_classes else "one value per sample"
        raise UsageError(
            f"model '{name}' gives outputs of shape {tuple(out.shape)} for a batch of {batch}; "
            f"expected {want}"
        )


from repgossip import architectures  # noqa: E402,F401  (registers the paper's models)
