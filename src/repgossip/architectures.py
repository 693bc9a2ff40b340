"""The built-in models and the model registry: the CNN of the DePRL/FedRep experiments, an MLP,
the synthetic task's linear model, and the networks of the DePRL paper's image experiments.

AlexNet (Fashion-MNIST, padded to 32x32), VGG-11 (CIFAR-10) and ResNet-18 (CIFAR-100), each
written for 32x32 inputs as a SplitModel: the body ends at the last hidden layer (its output is the
representation every worker shares), the head is the final Linear (private to each worker). No
pretrained weights: every layer starts from PyTorch's default initialisation under the run's seed.
BatchNorm layers (VGG-11, ResNet-18) keep per-worker running statistics (README, "BatchNorm and
Dropout"); Dropout layers draw from each worker's own random stream.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import nn

from repgossip.errors import UsageError, described, user_code_failed
from repgossip.models import ModelFunction, SplitModel, as_split_model, image_shape
from repgossip.params import Param, with_params
from repgossip.registry import Factory, Registry, call_with_accepted

if TYPE_CHECKING:
    from repgossip.schema import Config

MODELS: Registry[ModelFunction] = Registry(
    "model", plugins=Factory(nn.Module, "torch.nn.Module", returns=" that returns an nn.Module")
)


def cnn(input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
    """The CNN of the DePRL/FedRep experiments, for 28x28 images.

    The benchmarks compare this exact network."""
    channels, height, width = image_shape(input_shape, "cnn")
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


def linear(input_shape: tuple[int, ...], rank: int = 2) -> SplitModel:
    """The linear-representation model of the synthetic task: body B^T (d->k), head theta (k->1).

    No biases; k is the synthetic dataset's `rank` (build_model passes it; 2, that key's
    default, where no config selects it: a test checks the two agree)."""
    if len(input_shape) != 1:
        raise UsageError(f"model 'linear' needs feature vectors, got inputs of shape {input_shape}")
    (dim,) = input_shape
    return SplitModel(nn.Linear(dim, rank, bias=False), nn.Linear(rank, 1, bias=False), True)


def alexnet(input_shape: tuple[int, ...], num_classes: int, head_layers: int = 1) -> SplitModel:
    """AlexNet for 32x32 images, as commonly adapted to CIFAR in federated-learning papers.

    Five 3x3 convolutions (64, 192, 384, 256, 256 channels; the first with stride 2) with ReLU and
    three 2x2 max-pools leave 256x2x2 features; the classifier of Krizhevsky et al. (2012),
    Dropout-Linear-ReLU-Dropout-Linear-ReLU-Linear, is scaled down for 32x32 inputs from
    4096-4096 to 1024-512 hidden units. 28x28 images (Fashion-MNIST) are zero-padded to 32x32
    inside the body. Body: up to the 512-unit hidden layer; head: Linear(512, num_classes), or
    more of the classifier with `head_layers` (`_split_classifier`).
    """
    channels, height, width = image_shape(input_shape, "alexnet")
    if (height, width) not in ((28, 28), (32, 32)):
        raise UsageError(
            f"model 'alexnet' needs 28x28 or 32x32 images (channels, 28 or 32, 28 or 32), "
            f"got {height}x{width}"
        )
    pad: list[nn.Module] = [nn.ZeroPad2d(2)] if height == 28 else []
    features = nn.Sequential(
        *pad,
        nn.Conv2d(channels, 64, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip
    classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(256 * 2 * 2, 1024), nn.ReLU(),
        nn.Dropout(), nn.Linear(1024, 512), nn.ReLU(),
    )  # fmt: skip
    return _split_classifier(features, classifier, nn.Linear(512, num_classes), head_layers)


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")  # configuration A


def vgg11(input_shape: tuple[int, ...], num_classes: int, head_layers: int = 1) -> SplitModel:
    """VGG-11 (configuration A of Simonyan and Zisserman, 2015) with BatchNorm, for 32x32 images.

    Eight 3x3 convolutions, each followed by BatchNorm and ReLU, and five 2x2 max-pools leave
    512x1x1 features; the classifier is the small one of the common CIFAR VGGs,
    Dropout-Linear(512, 512)-ReLU twice. Body: up to that last 512-unit hidden layer; head:
    Linear(512, num_classes), or more of the classifier with `head_layers` (`_split_classifier`).
    """
    channels, height, width = image_shape(input_shape, "vgg11")
    if (height, width) != (32, 32):
        raise UsageError(
            f"model 'vgg11' needs 32x32 images (channels, 32, 32), got {height}x{width}"
        )
    layers: list[nn.Module] = []
    for item in VGG11:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            channels = item
    classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(512, 512), nn.ReLU(),
        nn.Dropout(), nn.Linear(512, 512), nn.ReLU(),
    )  # fmt: skip
    return _split_classifier(
        nn.Sequential(*layers), classifier, nn.Linear(512, num_classes), head_layers
    )


# The private head's depth in the classifier MLP: the DePRL authors' code keeps the whole
# classifier of its AlexNet and VGG-11 private (every key containing "classifier").
HEAD_LAYERS = Param(
    "head_layers", 1,
    "Linear layers of alexnet's or vgg11's classifier kept private: 1 the last one; 3 the whole "
    "classifier MLP, as the DePRL authors' code does",
    low=1, high=3,
)  # fmt: skip
BLOCK = 3  # Dropout, Linear, ReLU: one hidden layer of a classifier


def _split_classifier(
    features: nn.Module, classifier: nn.Sequential, last: nn.Linear, head_layers: int
) -> SplitModel:
    """Features, flatten and the classifier's hidden layers, the last `head_layers - 1` of them
    moved with the final Linear into the private head. Modules are built before this split, so
    every split starts from the same weights; head_layers=1 is the model as it always was."""
    keep = len(classifier) - (head_layers - 1) * BLOCK
    if head_layers == 1:
        body = nn.Sequential(
            OrderedDict(features=features, flatten=nn.Flatten(), classifier=classifier)
        )
        return SplitModel(body, last)
    parts: OrderedDict[str, nn.Module] = OrderedDict(features=features, flatten=nn.Flatten())
    if keep > 0:  # hidden layers left in the body
        parts["classifier"] = classifier[:keep]
    private = classifier[keep:]
    head = nn.Sequential(OrderedDict(classifier=private, out=last))
    return SplitModel(nn.Sequential(parts), head)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
    """ResNet-18 (He et al., 2016) in its usual CIFAR form, for 32x32 images.

    A 3x3 stride-1 stem (64 channels, BatchNorm, ReLU) without max-pool, four stages of two
    BasicBlocks (64, 128, 256, 512 channels; stride 2 from the second stage on), adaptive average
    pooling and flatten. Body: up to the pooled 512 features; head: Linear(512, num_classes).
    Thanks to the adaptive pooling other image sizes run too, from 8x8 up.
    """
    channels, height, width = image_shape(input_shape, "resnet18")
    if min(height, width) < 8:
        raise UsageError(
            f"model 'resnet18' needs images of at least 8x8 (channels, 32, 32 as in CIFAR), "
            f"got {height}x{width}"
        )
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
    )
    inputs = 64
    for index, (outputs, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
        stages[f"layer{index}"] = nn.Sequential(
            BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)
        )
        inputs = outputs
    stages["pool"] = nn.AdaptiveAvgPool2d(1)
    stages["flatten"] = nn.Flatten()
    return SplitModel(nn.Sequential(stages), nn.Linear(512, num_classes))


with_params(alexnet, HEAD_LAYERS)
with_params(vgg11, HEAD_LAYERS)
for _fn in (cnn, mlp, linear, alexnet, vgg11, resnet18):
    MODELS.register(_fn.__name__, _fn)


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    config: Config | None = None,
    function: ModelFunction | nn.Module | None = None,
) -> SplitModel:
    """The model `name` (or the given `function`, or a copy of a given module instance) for inputs
    of `input_shape`, as a SplitModel (a UserModel for a module of the user's own form).

    `num_classes` is 0 for regression. Call under the run's seed: the initialisation drawn here is
    every worker's starting point (an instance's own weights, when an instance is given).
    """
    fn = function if function is not None else MODELS.get(name)
    if isinstance(fn, nn.Module):  # an instance: callable, but calling it would run its forward
        return as_split_model(copy.deepcopy(fn), name, config)
    if not callable(fn):
        raise UsageError(f"model '{name}' must be a function returning a module, got {fn!r}")
    try:
        own = dict(config.params) if config is not None else {}  # the selected components'
        module = call_with_accepted(
            fn, input_shape=tuple(input_shape), num_classes=num_classes, config=config, **own
        )
    except UsageError:
        raise
    except Exception as err:
        raise user_code_failed(f"model '{name}' raised {described(err)}", err) from None
    return as_split_model(module, name, config)
