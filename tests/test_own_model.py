"""A user's own nn.Module: trained and evaluated through its own forward, its head named by the
`head` key, accepted as an instance; the fast path only where torch.fx shows it is the same function.

Before this, the engine rebuilt every model as head(body(x)): two models differing only in forward
gave identical numbers, a torchvision-style model was refused for lacking `body`/`head`, and an
instance was called as if it were a factory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import repgossip
from repgossip.architectures import build_model
from repgossip.cli import main
from repgossip.config import build_config
from repgossip.models import SplitModel, UserModel, traced_split

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
TINY = {"workers": 3, "samples_per_worker": 24, "rounds": 2, "batch_size": 8}


class TorchvisionStyle(nn.Module):
    """Named as torchvision names things: `features`, a flatten in forward, the head `fc`."""

    def __init__(self, scale: float = 1.0, after: str = "none") -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(4))
        self.fc = nn.Linear(4 * 6 * 6, 10)
        self.scale, self.after = scale, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.flatten(self.features(x), 1))
        if self.after == "relu":
            out = torch.relu(out)
        return out / self.scale if self.scale != 1.0 else out


class WithClassifier(nn.Module):
    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        norm: nn.Module = nn.BatchNorm1d(16) if batch_norm else nn.Identity()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), norm, nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x))


def run(model, **keys):
    torch.manual_seed(0)
    return repgossip.run(model=model, **{**TINY, **keys}).summary


def test_the_users_forward_is_what_trains_and_evaluates():
    plain = run(TorchvisionStyle(), head="fc")
    for changed in (TorchvisionStyle(scale=4.0), TorchvisionStyle(after="relu")):
        numbers = run(changed, head="fc")
        assert numbers["per_worker_test_loss"] != plain["per_worker_test_loss"]


def test_a_body_head_module_with_its_own_forward_runs_that_forward():
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU())
            self.head = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 3.0 * self.head(self.body(x))

    class Plain(Doubled):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    torch.manual_seed(1)
    doubled = Doubled()
    plain = Plain()
    plain.load_state_dict(doubled.state_dict())
    assert run(doubled)["per_worker_test_loss"] != run(plain)["per_worker_test_loss"]


def test_the_head_is_what_the_head_key_names():
    summary = run(TorchvisionStyle(), head="fc")
    assert summary["params_private"] == 4 * 6 * 6 * 10 + 10
    summary = run(WithClassifier(), head="classifier")
    assert summary["params_private"] == 16 * 16 + 16 + 16 * 10 + 10
    summary = run(WithClassifier(), head="classifier.2+trunk.1")
    assert summary["params_private"] == 16 * 10 + 10 + 784 * 16 + 16


def test_an_instance_is_copied_and_every_worker_starts_from_its_weights():
    instance = TorchvisionStyle()
    before = {k: v.clone() for k, v in instance.state_dict().items()}
    model = build_model("mine", (1, 28, 28), 10, build_config({"head": "fc"}), instance)
    assert model.head.weight is not instance.fc.weight
    assert torch.equal(model.head.weight, instance.fc.weight)
    run(instance, head="fc")
    assert all(torch.equal(v, before[k]) for k, v in instance.state_dict().items())


def test_a_provably_separable_model_takes_the_fast_path_with_the_library_models_bits():
    """The user's copy of the built-in cnn, traced, gives the built-in cnn's numbers exactly."""

    class UserCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(512, 128), nn.ReLU(),
            )  # fmt: skip
            self.head = nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    built = build_model("mine", (1, 28, 28), 10, build_config({}), UserCNN())
    assert type(built) is SplitModel and built.separable
    keys = {**TINY, "model": "cnn"}
    torch.manual_seed(0)
    library = repgossip.run(keys).summary
    mine = run(lambda: UserCNN())
    library.pop("wall_s"), mine.pop("wall_s")
    assert mine == library


class SkipAroundHead(WithClassifier):
    """The output mixes the head's logits with the features: not g(head(features))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        return self.classifier(features) + features[:, :10]


class LearnedTemperature(WithClassifier):
    """A parameter after the head: it would be trained by neither half."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x)) / self.temperature


@pytest.mark.parametrize(
    ("module", "head"),
    [
        (SkipAroundHead(), "classifier"),  # features used after the head
        (LearnedTemperature(), "classifier"),  # a parameter after the head
        (WithClassifier(batch_norm=True), "classifier"),  # eval-mode features differ
        (TorchvisionStyle(), "features.0"),  # the head's output is not the model's
    ],
)
def test_the_fast_path_is_refused_where_it_is_not_provably_the_same_function(module, head):
    assert traced_split(module, (head,), False) is None
    assert isinstance(build_model("m", (1, 28, 28), 10, build_config({"head": head}), module),
                      UserModel)  # fmt: skip


def test_a_forward_that_branches_on_training_mode_is_not_traced():
    class Branchy(WithClassifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.trunk(x)
            return self.classifier(features * 0.5 if self.training else features)

    assert traced_split(Branchy(), ("classifier",), False) is None
    assert traced_split(WithClassifier(), ("classifier",), False) is not None


@pytest.mark.parametrize("algorithm", ["deprl", "fedrod", "ditto", "dispfl", "fedper"])
def test_every_kind_of_algorithm_runs_a_users_model_through_its_forward(algorithm):
    summary = run(TorchvisionStyle(scale=2.0), head="fc", algorithm=algorithm, rounds=1)
    assert 0.0 <= summary["test_acc_mean"] <= 1.0


@pytest.mark.parametrize(
    ("head", "needle"),
    [
        ("nope", "no submodule 'nope'"),
        ("fc+fc", "names a module twice"),
        ("features+features.0", "inside another head"),
    ],
)
def test_a_bad_head_is_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch, head, needle):
    (tmp_path / "usermodel.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.features = nn.Sequential(nn.Flatten(), nn.Linear(784, 8))\n"
        "        self.fc = nn.Linear(8, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.features(x))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["run", "--quiet", "--set", "model=usermodel:Net", f"head={head}", "--out", "r"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_a_workers_state_loads_into_the_users_own_module():
    for module, head in ((TorchvisionStyle(scale=2.0), "fc"), (WithClassifier(), "classifier"),
                         (WithClassifier(), "classifier.2+trunk.1")):  # fmt: skip
        torch.manual_seed(0)
        result = repgossip.run(model=module, head=head, **TINY)
        fresh = type(module)()
        fresh.load_state_dict(result.worker_state(1))  # strict: every name is the module's own
        trained = "fc.weight" if head == "fc" else "trunk.1.weight"
        assert not torch.equal(fresh.state_dict()[trained], module.state_dict()[trained])
        assert fresh(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_a_directed_networkx_graph_runs_by_push_sum():
    nx = pytest.importorskip("networkx")
    ring = nx.DiGraph([(i, (i + 1) % 3) for i in range(3)])
    summary = run(TorchvisionStyle(), head="fc", graph=ring, rounds=1)
    assert 0.0 <= summary["test_acc_mean"] <= 1.0
    with pytest.raises(repgossip.UsageError, match="not strongly connected"):
        run(TorchvisionStyle(), head="fc", graph=nx.DiGraph([(0, 1), (1, 2)]), rounds=1)


def test_storage_error_is_exported():
    from repgossip.errors import StorageError

    assert repgossip.StorageError is StorageError and "StorageError" in repgossip.__all__


class ReadsItsHead(nn.Module):
    """A forward that reads its head module's attributes, as tied or checked layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        assert features.shape[1] == self.fc.in_features
        return features @ self.fc.weight.T + self.fc.bias


def test_a_forward_may_read_its_heads_attributes():
    """Before: the head's place held a stand-in without the head's attributes, so this model
    was refused with "'_HeadSlot' object has no attribute 'in_features'"."""
    module = ReadsItsHead()
    built = build_model("m", (1, 28, 28), 10, build_config({"head": "fc"}), module)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(built(x), module(x))
    summary = run(module, head="fc", rounds=1)
    assert 0.0 <= summary["test_acc_mean"] <= 1.0


def test_an_algorithm_replacing_the_head_refuses_several_head_modules_in_one_line():
    """Before: fedrod on head=a+b ended in a bare AssertionError from the head's stand-in."""
    with pytest.raises(
        repgossip.UsageError, match="needs one head module; head 'trunk.1\\+classifier'"
    ):
        run(WithClassifier(), head="trunk.1+classifier", algorithm="fedrod", rounds=1)


class WithUnusedState(TorchvisionStyle):
    """A module holding a layer and a buffer its forward does not use (an auxiliary head, a
    counter): the fast path's traced graph keeps only what forward uses."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(4, 3)
        self.register_buffer("seen", torch.zeros(2))


def test_a_traced_model_keeps_the_state_its_forward_does_not_use():
    """Before: the traced fast path dropped `aux` and `seen`, so worker_state did not load back
    into the user's module (strict load_state_dict: missing keys)."""
    module = WithUnusedState()
    torch.manual_seed(0)
    result = repgossip.run(model=module, head="fc", **TINY)
    WithUnusedState().load_state_dict(result.worker_state(1))


@pytest.mark.parametrize("module", [TorchvisionStyle(scale=2.0), TorchvisionStyle(after="relu")])
def test_parameter_free_work_after_the_head_stays_on_the_fast_path(module):
    """A temperature or a ReLU on the logits is g(head(features)): the head phase still trains
    on features computed once, and the split computes exactly the user's forward."""
    split = traced_split(module, ("fc",), False)
    assert split is not None and split.after_head is not None
    x = torch.rand(5, 1, 28, 28)
    module.eval(), split.eval()
    assert torch.equal(split(x), module(x))
    assert torch.equal(split.head_forward(split(x, stage="body")), module(x))
