"""The paper's networks (AlexNet, VGG-11, ResNet-18): shapes, the body/head split, parameter
counts, per-worker BatchNorm statistics, and one-line refusals of inputs they cannot take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import repgossip
from repgossip.architectures import MODELS, build_model

# (model, input shape, body parameters, head parameters for 10 classes, for 100 classes)
COUNTS = [
    ("alexnet", (1, 28, 28), 3_824_832, 5_130, 51_300),
    ("alexnet", (3, 32, 32), 3_825_984, 5_130, 51_300),
    ("vgg11", (3, 32, 32), 9_751_296, 5_130, 51_300),
    ("resnet18", (3, 32, 32), 11_168_832, 5_130, 51_300),
]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(body, head for 10 classes, head for 100 classes) parameters of model `name`."""
    ten, hundred = build_model(name, input_shape, 10), build_model(name, input_shape, 100)
    return count(ten.body), count(ten.head), count(hundred.head)


def print_table() -> None:
    """The README's table: `python -c "import test_architectures as t; t.print_table()"` from
    tests/."""
    print("| model | input | body parameters | head parameters (10 classes / 100 classes) |")
    print("|---|---|---|---|")
    for name, shape, *_ in COUNTS:
        body, head10, head100 = parameter_counts(name, shape)
        size = "x".join(map(str, shape))
        print(f"| {name} | {size} | {body:,} | {head10:,} / {head100:,} |")


@pytest.mark.parametrize(("name", "shape", "body", "head10", "head100"), COUNTS)
def test_shapes_split_and_parameter_counts(name, shape, body, head10, head100):
    torch.manual_seed(0)
    model = build_model(name, shape, 10)  # built once: the 100-class head is Linear(k, 100)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 10
    x = torch.randn(2, *shape)
    model.eval()
    with torch.no_grad():
        features = model.body(x)
        assert features.shape == (2, model.head.in_features)  # the representation, (batch, k)
        assert model(x).shape == (2, 10)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (count(model.body), count(model.head)) == (body, head10)
    assert (model.head.in_features + 1) * 100 == head100


def test_the_models_are_registered():
    assert {"alexnet", "vgg11", "resnet18"} <= set(MODELS.names())


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("alexnet", (3, 64, 64), "model 'alexnet' needs 28x28 or 32x32 images"),
        ("vgg11", (1, 28, 28), "model 'vgg11' needs 32x32 images"),
        ("resnet18", (3, 4, 4), "model 'resnet18' needs images of at least 8x8"),
        ("resnet18", (3072,), r"model 'resnet18' needs images \(channels, height, width\)"),
    ],
)
def test_inputs_they_cannot_take_are_refused_in_one_line(name, shape, message):
    with pytest.raises(repgossip.UsageError, match=message) as caught:
        build_model(name, shape, 10)
    assert "\n" not in str(caught.value)


def cifar_shaped(workers: int = 3, n: int = 8, classes: int = 10):
    gen = torch.Generator().manual_seed(0)
    out: tuple[list[torch.Tensor], ...] = ([], [], [], [])
    for worker in range(workers):
        for split in (0, 2):
            out[split].append(torch.randn(n, 3, 32, 32, generator=gen) + worker)
            out[split + 1].append(torch.randint(0, classes, (n,), generator=gen))
    return out


def test_batchnorm_statistics_stay_private_per_worker():
    result = repgossip.run(
        {"model": "vgg11"}, data=cifar_shaped(), rounds=1, batch_size=4, lr=0.01,
        head_epochs=1, body_epochs=1,
    )  # fmt: skip
    state = [result.worker_state(w) for w in range(3)]
    key = "body.features.1.running_mean"  # the first BatchNorm
    assert key in state[0] and int(state[0]["body.features.1.num_batches_tracked"]) > 0
    means = [tuple(s[key].tolist()) for s in state]
    assert len(set(means)) == 3


@pytest.mark.parametrize(("name", "shape"), [("alexnet", (1, 28, 28)), ("vgg11", (3, 32, 32))])
def test_head_layers_moves_the_classifier_into_the_head_from_the_same_weights(name, shape):
    """head_layers=1 is the model as it always was; 2 and 3 move hidden layers of the classifier
    into the private head, starting from the same weights and computing the same outputs."""
    from repgossip.architectures import MODELS

    models = []
    for head_layers in (1, 2, 3):
        torch.manual_seed(0)
        models.append(MODELS.get(name)(shape, 10, head_layers=head_layers).eval())
    flat = [torch.cat([p.flatten() for p in m.parameters()]) for m in models]
    assert all(torch.equal(flat[0], f) for f in flat[1:])
    x = torch.randn(2, *shape)
    assert all(torch.equal(models[0](x), m(x)) for m in models[1:])
    heads = [sum(p.numel() for p in m.head.parameters()) for m in models]
    assert heads[0] == 512 * 10 + 10 and heads[0] < heads[1] < heads[2]
    if name == "vgg11":
        assert heads[2] == 530_442  # the DePRL authors' VGG-11 head
