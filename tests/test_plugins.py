"""Plug-ins from the command line: a user's model, dataset, algorithm, loss and metric named as
`package.module:name`, importable from the working directory, on both engines; and every way a
plug-in can be wrong, refused in one line with exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import assert_one_line_error

import repgossip
from repgossip.cli import main
from repgossip.errors import UsageError
from repgossip.runfolder import CHECKPOINT_FILE, checkpoint_bytes

from launch import assert_same_numbers, summary, torchrun

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SYNTHETIC = [
    "dataset=synthetic",
    "workers=6",
    "samples_per_worker=40",
    "rounds=3",
]  # 2 batches an epoch


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A working directory holding the example plug-ins, as a user's project folder would."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("mymodels.py", "mydata.py", "proxdeprl.py", "myobjectives.py"):
        shutil.copy(EXAMPLES / name, folder / name)
    monkeypatch.chdir(folder)
    return folder


def cli(*args: str) -> int:
    return main(["run", "--quiet", *args])


def test_a_model_plugin_runs_and_the_config_records_it(plugin_dir, capsys):
    out = plugin_dir / "run"
    assert cli("--set", "model=mymodels:tiny", "workers=4", "samples_per_worker=20", "rounds=2",
               "--out", str(out)) == 0  # fmt: skip
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == "mymodels:tiny" and saved["dataset"] == "fmnist"
    assert json.loads((out / "summary.json").read_text())["rounds"] == 2


def test_a_dataset_plugin_is_partitioned_by_the_configured_partition(plugin_dir):
    out = plugin_dir / "run"
    sets = ["dataset=mydata:blobs", "workers=6", "partition=shards", "classes_per_worker=2",
            "samples_per_worker=50", "rounds=3"]  # fmt: skip
    assert cli("--set", *sets, "--out", str(out)) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset"] == "mydata:blobs" and saved["model"] == "mlp"
    result = json.loads((out / "summary.json").read_text())
    assert len(result["per_worker_acc"]) == 6
    assert result["test_acc_mean"] > 0.5  # six separable classes, two per worker


def test_an_algorithm_plugin_changes_the_numbers_and_resumes_exactly(plugin_dir):
    whole, part = plugin_dir / "whole", plugin_dir / "part"
    assert cli("--set", "algorithm=proxdeprl:ProxDePRL", *SYNTHETIC, "--out", str(whole)) == 0
    assert cli("--set", "algorithm=deprl", *SYNTHETIC, "--out", str(plugin_dir / "plain")) == 0
    assert summary(whole) != summary(plugin_dir / "plain")  # the proximal term acts
    assert cli("--set", "algorithm=proxdeprl:ProxDePRL", *SYNTHETIC, "rounds=1",
               "--out", str(part)) == 0  # fmt: skip
    assert cli("--set", "rounds=3", "--out", str(part), "--resume") == 0
    assert summary(part) == summary(whole)  # the anchor state was checkpointed and restored


BLOBS = ["dataset=mydata:blobs", "workers=4", "samples_per_worker=40", "rounds=2"]
# a metric computing what test_acc_mean reports, and losses that are wrong in each possible way
CHECKS = """
import torch
import torch.nn.functional as F

def accuracy(outputs, targets):
    assert outputs.device.type == "cpu" and outputs.shape[0] == targets.shape[0]
    return (outputs.argmax(1) == targets).float().mean()

def mse(outputs, targets):
    return F.mse_loss(outputs, targets)

def ce(outputs, targets):
    return F.cross_entropy(outputs, targets)

def per_sample(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")

def raises(outputs, targets):
    raise ValueError("no good")

def text(outputs, targets):
    return "high"

def nan(outputs, targets):
    return float("nan")
"""


def test_a_loss_and_a_metric_plugin_train_and_are_reported(plugin_dir, capsys):
    out, plain = plugin_dir / "run", plugin_dir / "plain"
    pair = ["loss=myobjectives:smoothed", "metric=myobjectives:macro_f1"]
    assert cli("--set", *BLOBS, *pair, "--out", str(out)) == 0
    assert "test_metric_mean=" in capsys.readouterr().out  # the closing line shows it too
    assert cli("--set", *BLOBS, "--out", str(plain)) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["loss"], saved["metric"]) == ("myobjectives:smoothed", "myobjectives:macro_f1")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["test_metric_mean"] <= 1 for r in records) and len(records) == 3
    result = json.loads((out / "summary.json").read_text())
    assert len(result["per_worker_metric"]) == 4
    assert result["test_metric_mean"] == pytest.approx(sum(result["per_worker_metric"]) / 4)
    baseline = json.loads((plain / "summary.json").read_text())
    assert "test_metric_mean" not in baseline and "per_worker_metric" not in baseline
    assert result["per_worker_test_loss"] != baseline["per_worker_test_loss"]  # the loss acts


def test_a_metric_plugin_sees_each_workers_test_outputs(plugin_dir):
    (plugin_dir / "checks.py").write_text(CHECKS)
    out = plugin_dir / "run"
    assert cli("--set", *BLOBS, "metric=checks:accuracy", "--out", str(out)) == 0
    result = json.loads((out / "summary.json").read_text())
    assert result["per_worker_metric"] == pytest.approx(result["per_worker_acc"], abs=1e-7)


@pytest.mark.parametrize(("sets", "loss"), [(SYNTHETIC, "checks:mse"), (BLOBS, "checks:ce")])
def test_a_loss_plugin_equal_to_the_task_loss_gives_its_numbers(plugin_dir, sets, loss):
    """Synthetic regression's linear model trains and evaluates stacked; the blobs' mlp trains its
    head stacked, its body and evaluation worker by worker. The plug-in, called once per worker
    on either path, gives the task loss's numbers to float rounding (the order of a mean)."""
    (plugin_dir / "checks.py").write_text(CHECKS)
    assert cli("--set", *sets, f"loss={loss}", "--out", str(plugin_dir / "ours")) == 0
    assert cli("--set", *sets, "--out", str(plugin_dir / "plain")) == 0
    ours, theirs = summary(plugin_dir / "ours"), summary(plugin_dir / "plain")
    assert ours["per_worker_test_loss"] == pytest.approx(theirs["per_worker_test_loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("pair", "needles"),
    [
        (
            "loss=checks:per_sample",
            ["loss plug-in 'checks:per_sample'", "scalar tensor", "got shape ("],
        ),
        ("loss=checks:raises", ["loss plug-in 'checks:raises' raised ValueError: no good"]),
        ("metric=checks:text", ["metric plug-in 'checks:text' must return a number, got str"]),
        ("metric=checks:nan", ["metric plug-in 'checks:nan' returned nan for worker 0"]),
        ("metric=checks:raises", ["metric plug-in 'checks:raises' raised ValueError"]),
        ("loss=checks", ["loss must be package.module:function", "'checks'"]),
        ("metric=checks:missing", ["metric plug-in 'checks:missing'", "no 'missing'"]),
        ("loss=checks:torch", ["loss plug-in 'checks:torch' is a module, not a function"]),
    ],
)
def test_a_wrong_loss_or_metric_plugin_is_one_line_and_exit_2(plugin_dir, capsys, pair, needles):
    (plugin_dir / "checks.py").write_text(CHECKS)
    code = cli("--set", *BLOBS, pair, "--out", str(plugin_dir / "run"))
    assert_one_line_error(code, capsys.readouterr().err, *needles)


def test_loss_and_metric_functions_through_the_api(plugin_dir):
    def halved(outputs, targets):
        return torch.nn.functional.cross_entropy(outputs, targets) / 2

    def first_output(outputs, targets):
        return float(outputs[0, 0])

    config = dict(item.split("=") for item in BLOBS)
    result = repgossip.run(config, loss=halved, metric=first_output)
    assert result.summary["test_metric_mean"] == pytest.approx(
        sum(result.summary["per_worker_metric"]) / 4
    )
    recorded = result.experiment.cfg
    assert recorded.loss.startswith("python:") and recorded.metric.startswith("python:")


@pytest.mark.slow
def test_an_algorithm_plugin_gives_the_same_numbers_on_two_ranks(plugin_dir):
    sets = ["algorithm=proxdeprl:ProxDePRL", *SYNTHETIC]
    assert cli("--set", *sets, "--out", str(plugin_dir / "sim")) == 0
    done = torchrun(2, plugin_dir / "dist", *sets, cwd=plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_numbers(summary(plugin_dir / "dist"), summary(plugin_dir / "sim"))


@pytest.mark.slow
def test_batchnorm_and_dropout_give_the_same_numbers_on_two_ranks(plugin_dir):
    (plugin_dir / "bnmodels.py").write_text(
        "from torch import nn\n"
        "def bn(input_shape, num_classes):\n"
        "    m = nn.Module()\n"
        "    m.body = nn.Sequential(nn.Linear(input_shape[0], 8), nn.BatchNorm1d(8), nn.ReLU(),\n"
        "                           nn.Dropout(0.3))\n"
        "    m.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, 1))\n"
        "    return m\n"
    )
    sets = ["model=bnmodels:bn", *SYNTHETIC, "checkpoint_every=1"]
    assert cli("--set", *sets, "--out", str(plugin_dir / "sim")) == 0
    done = torchrun(2, plugin_dir / "dist", *sets, cwd=plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_numbers(summary(plugin_dir / "dist"), summary(plugin_dir / "sim"))


BAD_PLUGINS = {
    "nomodule.py": "",
    "raising.py": "raise RuntimeError('broken at import')\n",
    "shapes.py": (
        "from torch import nn\n"
        "def nobody(input_shape, num_classes):\n    return nn.Linear(3, 3)\n"
        "def wide(input_shape, num_classes):\n"
        "    m = nn.Module(); m.body = nn.Flatten(); m.head = nn.Linear(784, 3); return m\n"
        "def crash(num_classes):\n    raise ValueError('no such size')\n"
        "def outside(input_shape, num_classes):\n"
        "    m = nn.Module(); m.body = nn.Flatten(); m.head = nn.Linear(784, num_classes)\n"
        "    m.extra = nn.Linear(2, 2); return m\n"
        "def tied(input_shape, num_classes):\n"
        "    m = nn.Module(); layer = nn.Linear(784, 784)\n"
        "    m.body = nn.Sequential(nn.Flatten(), layer)\n"
        "    m.head = nn.Sequential(layer, nn.Linear(784, num_classes))\n"
        "    return m\n"
        "def alpha(input_shape, num_classes):\n"
        "    m = nn.Module(); m.body = nn.Sequential(nn.Flatten(), nn.AlphaDropout(0.1))\n"
        "    m.head = nn.Linear(784, num_classes); return m\n"
        "def floats(seed):\n"
        "    import torch\n"
        "    x = torch.randn(40, 3)\n"
        "    return (x, torch.rand(40) > 0.5), (x, torch.rand(40) > 0.5)\n"
        "def lists(workers):\n"
        "    import torch\n"
        "    return [torch.zeros(2, 3)] * workers, [torch.tensor([0, 9])] * workers, "
        "[torch.zeros(2, 3)] * workers, [torch.tensor([0, -1])] * workers\n"
        "def garbage():\n    return 'data'\n"
        "class NotAnAlgorithm:\n    pass\n"
        "from os import abort\n"
        "from signal import pause\n"
        "class Exits:\n    def __call__(self):\n        raise SystemExit(0)\n"
        "exits = Exits()\n"
    ),
}


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["model=missing_module:tiny"], "no module 'missing_module'"),
        (["model=raising:tiny"], "RuntimeError: broken at import"),
        (["model=shapes:absent"], "has no 'absent'"),
        (["model=shapes:nobody"], "'body' and 'head' submodules"),
        (["model=shapes:wide"], "outputs of shape (2, 3)"),
        (["model=shapes:crash"], "ValueError: no such size"),
        (["model=shapes:outside"], "parameter 'extra.weight' outside 'body' and 'head'"),
        (["model=shapes:tied"], "must not share weights"),
        (["model=shapes:alpha"], "AlphaDropout"),
        (["dataset=shapes:floats"], "integers (classes) or floats (regression), got bool"),
        (["dataset=shapes:lists", "workers=2"], "label -1; classes must be 0..9"),
        (["dataset=shapes:garbage"], "must be a Federation"),
        (["algorithm=shapes:NotAnAlgorithm"], "subclass of repgossip.Algorithm"),
        (
            ["model=not a reference"],
            "valid: cnn, mlp, linear, alexnet, vgg11, resnet18, or package.module:name",
        ),
    ],
)
def test_a_bad_plugin_is_one_line_with_exit_code_2(plugin_dir, capsys, sets, needle):
    for name, text in BAD_PLUGINS.items():
        if name != "nomodule.py":
            (plugin_dir / name).write_text(text)
    code = cli("--set", "workers=4", "samples_per_worker=20", "rounds=1", *sets,
               "--out", str(plugin_dir / "run"))  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and needle in err, err
    assert not (plugin_dir / "run").exists()


# ---------------------------------------------------------------- what a plug-in value may run

REGRESSION_NET = (
    "from torch import nn\n"
    "def net(input_shape):\n"
    "    m = nn.Module()\n"
    "    m.body = nn.Sequential(nn.Linear(input_shape[0], 4), nn.ReLU())\n"
    "    m.head = nn.Linear(4, 1)\n"
    "    m.squeeze_output = True\n"
    "    return m\n"
)


def cli_process(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m repgossip ARGS` in its own process: a target that exits, aborts or hangs must
    not take the test with it."""
    return subprocess.run(
        [sys.executable, "-m", "repgossip", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("key", "target"),
    [
        ("model", "sys:exit"),  # exited 0 having done nothing
        ("model", "os:abort"),  # aborted (SIGABRT)
        ("model", "signal:pause"),  # hung for ever
        ("dataset", "os:abort"),
        ("dataset", "sys:exit"),
        ("algorithm", "signal:pause"),
        ("model", "this:s"),  # importing `this` prints: a standard library module is not imported
        ("model", "shapes:NotAnAlgorithm"),  # a class of the user's, but not an nn.Module
        ("model", "shapes:abort"),  # os.abort, imported into the user's module
        ("dataset", "shapes:pause"),
        ("model", "shapes:exits"),  # a callable object, not a function or class
    ],
)
def test_a_target_that_is_not_a_factory_is_refused_before_it_is_called(plugin_dir, key, target):
    (plugin_dir / "shapes.py").write_text(BAD_PLUGINS["shapes.py"])
    config = plugin_dir / "hostile.yaml"
    config.write_text(yaml.safe_dump({"dataset": "synthetic", key: target}))
    try:
        done = cli_process("run", "--config", str(config), "--set", "workers=4",
                           "samples_per_worker=20", "rounds=1", "--out", "run",
                           cwd=plugin_dir, timeout=30)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{key}={target} hung")
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.count("\n") == 1 and f"{key} plug-in '{target}'" in done.stderr, done.stderr
    assert done.stdout == ""  # nothing that prints was imported, nothing ran
    assert not (plugin_dir / "run").exists()


def test_an_edited_config_yaml_cannot_call_a_target_on_resume(plugin_dir):
    out = plugin_dir / "run"
    assert cli("--set", *SYNTHETIC, "rounds=1", "--out", str(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("model: linear", "model: sys:exit"))
    done = cli_process("run", "--quiet", "--set", "rounds=2", "--out", "run", "--resume",
                       cwd=plugin_dir)  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.count("\n") == 1 and "model plug-in 'sys:exit'" in done.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "config.yaml"} == {
        k: v for k, v in before.items() if k != "config.yaml"
    }


def test_a_run_names_the_file_of_each_plugin_it_imports_unless_quiet(plugin_dir, capsys):
    (plugin_dir / "netmod.py").write_text(REGRESSION_NET)
    sets = ["model=netmod:net", *SYNTHETIC, "rounds=1"]
    assert main(["run", "--set", *sets, "--out", str(plugin_dir / "a")]) == 0
    err = capsys.readouterr().err
    line = f"plug-in model: netmod:net (file {plugin_dir / 'netmod.py'})"
    assert line in err.splitlines(), err
    assert cli("--set", *sets, "--out", str(plugin_dir / "b")) == 0
    assert "plug-in" not in capsys.readouterr().err


def test_a_plugin_whose_code_changed_is_not_resumed(plugin_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc of a same-size edit
    module = plugin_dir / "changing.py"
    module.write_text(REGRESSION_NET)
    sets = ["model=changing:net", *SYNTHETIC]
    whole, part = plugin_dir / "whole", plugin_dir / "part"
    assert cli("--set", *sets, "--out", str(whole)) == 0
    assert cli("--set", *sets, "rounds=1", "--out", str(part)) == 0
    module.write_text(REGRESSION_NET.replace("nn.ReLU()", "nn.Tanh()"))  # same shapes
    monkeypatch.delitem(sys.modules, "changing")  # a new process would import the new code
    before = (part / "metrics.jsonl").read_bytes()
    assert cli("--set", "rounds=3", "--out", str(part), "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "model plug-in 'changing:net'" in err and "changing.py" in err and "changed" in err
    assert (part / "metrics.jsonl").read_bytes() == before
    module.write_text(REGRESSION_NET)  # the code that wrote the run: it resumes exactly
    monkeypatch.delitem(sys.modules, "changing")
    assert cli("--set", "rounds=3", "--out", str(part), "--resume") == 0
    assert summary(part) == summary(whole)


API_SCRIPT = """
import sys
import repgossip
from torch import nn

def net(input_shape):
    m = nn.Module()
    m.body = nn.Sequential(nn.Linear(input_shape[0], 4), nn.ReLU())
    m.head = nn.Linear(4, 1)
    m.squeeze_output = True
    return m

rounds, resume = int(sys.argv[1]), sys.argv[2] == "resume"
config = dict(dataset="synthetic", workers=6, samples_per_worker=30, rounds=rounds)
try:
    repgossip.run(config, model=net, out="run", resume=resume)
except repgossip.UsageError as err:
    sys.exit(f"refused: {err}")
"""


def test_a_model_handed_to_the_api_from_a_script_is_bound_by_its_own_source(tmp_path):
    """Another script that defines the same function resumes the run; one whose function
    changed (same shapes) is refused."""
    (tmp_path / "train.py").write_text(API_SCRIPT)
    (tmp_path / "resume.py").write_text("# another script, the same model\n" + API_SCRIPT)
    (tmp_path / "changed.py").write_text(API_SCRIPT.replace("nn.ReLU()", "nn.Tanh()"))

    def script(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, name, *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    assert script("train.py", "1", "new").returncode == 0
    done = script("changed.py", "2", "resume")
    assert done.returncode == 1 and "the model plug-in 'python:net' changed" in done.stderr
    assert script("resume.py", "2", "resume").returncode == 0


def test_a_saved_config_naming_another_plugin_is_refused_without_importing_it(plugin_dir, capsys):
    """Resolving a saved config (to fill keys added since) must not import a plug-in this run does
    not name: comparing with another run's checkpoint or config.yaml runs none of its code."""
    (plugin_dir / "netmod.py").write_text(REGRESSION_NET)
    (plugin_dir / "trap.py").write_text("open('imported', 'w').close()\n" + REGRESSION_NET)
    out = plugin_dir / "run"
    assert cli("--set", "model=netmod:net", *SYNTHETIC, "rounds=1", "--out", str(out)) == 0
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    state.pop("checksum")
    state["config"] = state["config"].replace("model: netmod:net", "model: trap:net")
    (out / CHECKPOINT_FILE).write_bytes(checkpoint_bytes(state))
    assert cli("--set", "rounds=2", "--out", str(out), "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model='trap:net', not 'netmod:net'" in err, err
    assert not (plugin_dir / "imported").exists()
    config = out / "config.yaml"  # the same from the API, which does not read config.yaml first
    config.write_text(config.read_text().replace("model: netmod:net", "model: trap:net"))
    with pytest.raises(UsageError, match="trap:net"):
        repgossip.run({**dict(s.split("=") for s in SYNTHETIC), "model": "netmod:net",
                       "rounds": 2}, out=out, resume=True)  # fmt: skip
    assert not (plugin_dir / "imported").exists()


def test_a_plugins_traceback_is_shown_only_when_asked(tmp_path, monkeypatch, capsys):
    """A failing plug-in is one line; REPGOSSIP_TRACEBACK=1 prints, before it, the traceback of
    the plug-in's own exception, down to the line that raised it."""
    (tmp_path / "brokenmodel.py").write_text(
        "def broken(input_shape, num_classes):\n    return helper()\n\n\n"
        "def helper():\n    raise KeyError('no such layer')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["run", "--quiet", "--set", "model=brokenmodel:broken", "dataset=synthetic",
            "workers=4", "rounds=1"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KeyError: 'no such layer'" in err
    for off in ("", "0", "false", " Off "):
        monkeypatch.setenv("REPGOSSIP_TRACEBACK", off)
        assert main([*argv, "--out", str(tmp_path / f"b{off}")]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("REPGOSSIP_TRACEBACK", "1")
    assert main([*argv, "--out", str(tmp_path / "c")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert any("brokenmodel.py" in line and "in helper" in line for line in lines)
    assert lines[-1].startswith("repgossip: error: model 'brokenmodel:broken' raised KeyError")
    # repgossip's own refusals have no user code behind them: one line, the variable set or not
    for own in (["rounds=abc"], ["dataset=nosuch"]):
        assert main(["run", "--quiet", "--set", *own, "--out", str(tmp_path / "d")]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_a_plugin_algorithm_takes_its_own_parameter(plugin_dir, capsys):
    """`mu` is a key once proxdeprl is selected: given, checked, recorded, listed; with mu=0 the
    proximal term does nothing and the numbers are DePRL's."""
    prox = ["--set", "algorithm=proxdeprl:ProxDePRL", *SYNTHETIC]
    assert cli(*prox, "mu=0.1", "--out", str(plugin_dir / "a")) == 0
    assert yaml.safe_load((plugin_dir / "a" / "config.yaml").read_text())["mu"] == 0.1
    assert cli(*prox, "mu=0", "--out", str(plugin_dir / "zero")) == 0
    assert cli("--set", "algorithm=deprl", *SYNTHETIC, "--out", str(plugin_dir / "plain")) == 0
    assert summary(plugin_dir / "zero") == summary(plugin_dir / "plain")
    assert summary(plugin_dir / "a") != summary(plugin_dir / "plain")
    capsys.readouterr()
    assert cli(*prox, "mu=-1", "--out", str(plugin_dir / "b")) == 2
    assert capsys.readouterr().err.strip() == "repgossip: error: mu must be >= 0, got -1.0"
    assert (
        cli("--set", "algorithm=deprl", "mu=0.1", *SYNTHETIC, "--out", str(plugin_dir / "c")) == 2
    )
    assert "unknown config key 'mu'" in capsys.readouterr().err
    assert main(["keys", "proxdeprl:ProxDePRL"]) == 0
    assert "  mu = 0.5  (>= 0)  strength of the proximal term" in capsys.readouterr().out
    assert cli("--set", "rounds=4", "--out", str(plugin_dir / "a"), "--resume") == 0  # mu kept


def test_a_plugin_declaring_params_wrongly_is_one_line(plugin_dir, capsys):
    (plugin_dir / "badparams.py").write_text(
        "import repgossip\n\nclass Bad(repgossip.Algorithm):\n    params = ('mu',)\n\n"
        "class Clash(repgossip.Algorithm):\n    params = (repgossip.Param('lr', 0.1, 'x'),)\n"
    )
    for name, needle in (("Bad", "params must be a tuple of repgossip.Param"),
                         ("Clash", "parameter 'lr' is a core config key")):  # fmt: skip
        assert cli("--set", f"algorithm=badparams:{name}", *SYNTHETIC,
                   "--out", str(plugin_dir / name)) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
