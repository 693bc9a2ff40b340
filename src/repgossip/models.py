"""Models with a shared representation (`body`) and a private `head`: the split and its checks.

The split is declared, never guessed from parameter names: the body is what DePRL-style algorithms
share, the head is what stays with the worker. Two forms:

- The library's own, `SplitModel(body, head)`: its output is `head(body(x))` by construction, so a
  frozen body's features can be computed once per phase and a small head trained on them, and small
  models can train many workers at once as batched kernels. Every built-in model is one.
- The user's own module (`UserModel`): any nn.Module, run through its own `forward`. The head is the
  submodule(s) that the config key `head` names (`head=fc`, `head=classifier`, prefixes joined by
  `+`; default `head`); the body is the rest. Nothing about its forward is assumed, so it always
  trains and evaluates through that forward, and the fast paths are never used for it.

A model function (built in, `--set model=package.module:function`, or `repgossip.run(model=...)`)
returns either; `repgossip.run` also takes a module instance. A function is called with whichever
of `input_shape`, `num_classes` and `config` its signature names.

BatchNorm buffers are per-worker state and Dropout draws from the worker's own random stream
(repgossip.population), so such models run in `sim` and `dist` with the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from repgossip.errors import UsageError, described, user_code_failed

if TYPE_CHECKING:
    from repgossip.schema import Config

ModelFunction = Callable[..., nn.Module]
# Random layers that draw from the global generator cannot follow a worker's own stream.
UNSUPPORTED_RANDOM = (nn.AlphaDropout, nn.FeatureAlphaDropout)


class SplitModel(nn.Module):
    """`head(body(x))`, with the two halves as named submodules."""

    # Whether the output is head(body(x)) with body and head as they stand: what lets a frozen
    # body's features be computed once and a head be trained on them alone.
    separable = True

    def __init__(self, body: nn.Module, head: nn.Module, squeeze_output: bool = False) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.squeeze_output = squeeze_output
        # Parameter-free operations a user's forward applies to the head's output (a
        # temperature, a scale): part of head_forward, so still head(body(x)) for the phases.
        self.after_head: nn.Module | None = None

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
        if self.after_head is not None:
            out = self.after_head(out)
        return out.squeeze(-1) if self.squeeze_output else out

    # Where the head modules sit in the user's own module (empty: the library's names are the
    # module's own): what `state_name` maps back to.
    head_at: tuple[str, ...] = ()

    def state_name(self, name: str) -> str:
        """The name that tensor `name` of this model has in the module it was made from (its
        state_dict key there): a user's module's own names, not body.*/head.*."""
        if not self.head_at:
            return name
        part, _, rest = name.partition(".")
        if part == "body":
            return rest
        if len(self.head_at) == 1:
            return f"{self.head_at[0]}.{rest}"
        key, _, leaf = rest.partition(".")
        return f"{next(p for p in self.head_at if _slot_key(p) == key)}.{leaf}"

    def replace_head(self, head: nn.Module) -> None:
        """Put `head` where the head was (an algorithm that widens the head, as FedRoD's two)."""
        self.head = head


class _HeadSlot(nn.Module):
    """Stands in the user's network where a head module was, and calls that module, which now
    lives under the model's `head`: the user's forward runs unchanged while every head parameter
    is named `head.*` (the part DePRL keeps private). Holds no parameters of its own."""

    def __init__(self, owner: UserModel, key: str | None) -> None:
        super().__init__()
        self.__dict__["_owner"] = owner  # a plain reference: the owner is not a submodule
        self.key = key

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.target()(*args, **kwargs)

    def target(self) -> nn.Module:
        """The head module this slot stands for, as it is now (an algorithm may replace it)."""
        head: nn.Module = self.__dict__["_owner"].head
        if self.key is not None:
            assert isinstance(head, nn.ModuleDict)
            head = head[self.key]
        return head

    def __getattr__(self, name: str) -> Any:
        """What the user's forward reads of its head (`self.fc.weight`, `self.fc.in_features`)
        is the head module's: the slot has only `key` of its own."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "_owner" not in self.__dict__:
                raise
            return getattr(self.target(), name)


class UserModel(SplitModel):
    """A user's network run through its own `forward`, its head modules (named by `prefixes`)
    moved under `head` and the rest of it kept as `body`. Not separable: whatever its forward
    does around the head (a flatten, a temperature, a skip connection) is part of the function
    trained and evaluated."""

    separable = False

    def __init__(self, net: nn.Module, prefixes: tuple[str, ...], squeeze_output: bool) -> None:
        heads = {prefix: net.get_submodule(prefix) for prefix in prefixes}
        head: nn.Module = (
            heads[prefixes[0]]
            if len(prefixes) == 1
            else nn.ModuleDict({_slot_key(p): m for p, m in heads.items()})
        )
        super().__init__(net, head, squeeze_output)
        self.head_at = prefixes
        for prefix in prefixes:
            parent, _, attribute = prefix.rpartition(".")
            key = None if len(prefixes) == 1 else _slot_key(prefix)
            setattr(net.get_submodule(parent), attribute, _HeadSlot(self, key))

    def replace_head(self, head: nn.Module) -> None:
        """As SplitModel's, for a head of one module: each of several head modules is called from
        its own place in the user's forward, so no one module can stand for them all."""
        if len(self.head_at) > 1:
            raise UsageError(
                f"an algorithm that replaces the model's head (as fedrod does) needs one head "
                f"module; head {'+'.join(self.head_at)!r} names {len(self.head_at)}"
            )
        super().replace_head(head)

    def forward(self, x: torch.Tensor, stage: str = "full") -> torch.Tensor:
        if stage != "full":
            raise ValueError(f"a user's model runs whole, through its own forward, not {stage!r}")
        out = self.body(x)
        return out.squeeze(-1) if self.squeeze_output else out


def _slot_key(prefix: str) -> str:
    return prefix.replace(".", "__")  # a ModuleDict key cannot hold a dot


def head_prefixes(spec: str | None) -> tuple[str, ...]:
    """The module names of the `head` key: 'fc', 'classifier', 'head_a+head_b' (default 'head')."""
    return tuple(p.strip() for p in (spec or DEFAULT_HEAD).split("+"))


DEFAULT_HEAD = "head"


def as_split_model(module: Any, name: str, config: Config | None = None) -> SplitModel:
    """`module` as a SplitModel: the library's own form as it is; any other nn.Module as a
    UserModel, its head named by the config's `head` key; else a one-line UsageError."""
    if not isinstance(module, nn.Module):
        raise UsageError(
            f"model '{name}' must return an nn.Module (or be one), got {type(module).__name__}"
        )
    spec = config.head if config is not None else None
    squeeze = bool(getattr(module, "squeeze_output", False))
    if spec in (None, DEFAULT_HEAD) and isinstance(module, SplitModel) and _is_library_form(module):
        split = module
    elif spec in (None, DEFAULT_HEAD) and _without_forward(module):
        split = _declared_halves(module, name, squeeze)
    else:
        prefixes = _checked_head(module, head_prefixes(spec), name)
        split = traced_split(module, prefixes, squeeze) or UserModel(module, prefixes, squeeze)
    _check_split(split, name)
    return split


def _without_forward(module: nn.Module) -> bool:
    """A module that declares `body` and `head` and no forward of its own: its output is
    head(body(x)) by the documented contract, with nothing of the user's to run instead."""
    return type(module).forward is nn.Module.forward and all(
        isinstance(getattr(module, half, None), nn.Module) for half in ("body", "head")
    )


def _declared_halves(module: nn.Module, name: str, squeeze: bool) -> SplitModel:
    _check_nothing_outside(module, name)
    body, head = module.get_submodule("body"), module.get_submodule("head")
    return SplitModel(body, head, squeeze_output=squeeze)


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


# Layers whose output depends on train/eval mode: a frozen body's features are computed in eval mode,
# so a body holding one computes another function there than the user's forward in train mode.
MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


class _HeadTracer(fx.Tracer):
    """torch.fx's tracer, keeping the head module as one call (not traced into)."""

    def __init__(self, head: str) -> None:
        super().__init__()
        self.head = head

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.head or super().is_leaf_module(module, qualified_name)


def traced_split(net: nn.Module, prefixes: tuple[str, ...], squeeze: bool) -> SplitModel | None:
    """The user's network as the library's form, head(body(x)), where its forward provably is
    that function; None where it cannot be shown (then it runs as a UserModel, through forward).

    Shown by torch.fx: the forward is traced (a forward with data-dependent control flow cannot
    be, and is left alone) the same in train and eval mode (so no Python branch on
    `self.training`); its one head module is called once, on one tensor; what the forward does
    with the head's output uses nothing else (no input, no feature, no parameter, no module: a
    temperature or a scale, kept as `after_head`); nothing else touches the head's parameters;
    and the body has no layer that behaves differently in eval mode (features are computed in
    eval mode). The body is then the traced graph up to the head's input: the same operations on
    the same modules. Why: a head phase on features computed once per phase, not a whole forward
    per step, is what makes DePRL's head epochs cheap (docs/performance.md, "Your own model").
    """
    if len(prefixes) != 1:
        return None
    (prefix,) = prefixes
    head = net.get_submodule(prefix)
    body_layers = (
        m for n, m in net.named_modules() if n != prefix and not n.startswith(prefix + ".")
    )
    if any(isinstance(m, MODE_DEPENDENT) for m in body_layers):
        return None
    graph = _traced_in_both_modes(net, prefix)
    if graph is None:
        return None
    call = _head_call(graph, prefix)
    after = None if call is None else _after_head(graph, call)
    if call is None or after is None:
        return None
    features = call.args[0]
    assert isinstance(features, fx.Node)  # checked by _head_call
    after_head = _graph_of(after, call) if after else None
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (features,)
    for node in reversed([call, *after]):
        graph.erase_node(node)
    split = SplitModel(fx.GraphModule(net, graph), head, squeeze)
    split.after_head = after_head
    split.head_at = prefixes
    return split if _keeps_all_state(net, split) else None


def _keeps_all_state(net: nn.Module, split: SplitModel) -> bool:
    """Whether `split` holds every parameter and buffer of `net` under its own name: a traced
    graph keeps only what forward uses, and a state without the rest would not load back into
    the user's module (nor be trained, shared or checkpointed as the user's forward path does)."""
    names = {split.state_name(n) for n, _ in split.named_parameters()} | {
        split.state_name(n) for n, _ in split.named_buffers()
    }
    return names == set(net.state_dict())


def _traced_in_both_modes(net: nn.Module, prefix: str) -> fx.Graph | None:
    """The forward's graph, if it traces, and traces to the same code in train and eval mode."""
    was_training = net.training
    graphs = []
    try:
        for training in (True, False):
            net.train(training)
            graphs.append(_HeadTracer(prefix).trace(net))
    except Exception:  # noqa: BLE001 - any tracing failure only means: not provable
        return None
    finally:
        net.train(was_training)
    codes = {g.python_code("self").src for g in graphs}
    return graphs[0] if len(codes) == 1 else None


def _head_call(graph: fx.Graph, prefix: str) -> fx.Node | None:
    """The one call of the head, on one tensor that only the head reads, in a graph of one input
    where nothing else reaches into the head."""
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op == "call_module" and n.target == prefix]
    inside = [
        n for n in nodes
        if n.op in ("call_module", "get_attr") and str(n.target).startswith(prefix + ".")
    ]  # fmt: skip
    if len(inputs) != 1 or len(calls) != 1 or inside:
        return None
    call = calls[0]
    if len(call.args) != 1 or call.kwargs or not isinstance(call.args[0], fx.Node):
        return None
    return call if len(call.args[0].users) == 1 else None


def _after_head(graph: fx.Graph, call: fx.Node) -> list[fx.Node] | None:
    """The operations between the head's call and the output, in order, where each is a plain
    function or method of the head's output and of each other only (constants aside) and the
    output is the last of them (or the call itself): then output = g(head(features)) with g
    free of parameters, inputs and features. None otherwise (a skip connection, a learned
    temperature, a second output)."""
    nodes = list(graph.nodes)
    output = nodes[-1]
    after = nodes[nodes.index(call) + 1 : -1]
    allowed = {call, *after}
    for node in after:
        if node.op not in ("call_function", "call_method"):
            return None
        if not set(node.all_input_nodes) <= allowed - {node}:
            return None
    last = after[-1] if after else call
    if output.args != (last,) or any(set(n.users) - allowed - {output} for n in (call, *after)):
        return None
    return after


def _graph_of(after: list[fx.Node], call: fx.Node) -> fx.GraphModule:
    """The operations after the head as a module of their own: the head's output in, the
    forward's output out (no parameters, no buffers: nothing to train or share)."""
    graph = fx.Graph()
    values: dict[fx.Node, fx.Node] = {call: graph.placeholder("head_output")}
    for node in after:
        values[node] = graph.node_copy(node, lambda n: values[n])
    graph.output(values[after[-1]])
    return fx.GraphModule(nn.Module(), graph)


def _is_library_form(module: SplitModel) -> bool:
    """A SplitModel whose forward is the library's own: provably head(body(x))."""
    kind = type(module)
    return kind.forward is SplitModel.forward and kind.head_forward is SplitModel.head_forward


def _checked_head(module: nn.Module, prefixes: tuple[str, ...], name: str) -> tuple[str, ...]:
    """The head's module names, each a real submodule (not the whole model), none inside
    another; a one-line UsageError naming the submodules there are otherwise."""
    children = [n for n, _ in module.named_modules() if n]
    for prefix in prefixes:
        if prefix not in children:
            top = ", ".join(n for n, _ in module.named_children()) or "none"
            raise UsageError(
                f"model '{name}' has no submodule {prefix!r} to be its head: name the head with "
                f"the key head (e.g. head=fc), or return a module with 'body' and 'head' "
                f"submodules; its top-level submodules: {top}"
            )
    for prefix in prefixes:
        if any(prefix.startswith(other + ".") for other in prefixes if other != prefix):
            raise UsageError(f"head {'+'.join(prefixes)!r}: {prefix!r} lies inside another head")
    if len(set(prefixes)) != len(prefixes):
        raise UsageError(f"head {'+'.join(prefixes)!r} names a module twice")
    return prefixes


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
        out = _outputs(model, sample[:2], name)
    except UsageError:
        raise
    except Exception as err:
        raise user_code_failed(
            f"model '{name}' cannot take inputs of shape {tuple(sample.shape[1:])}: "
            f"{described(err)}",
            err,
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


def _outputs(model: SplitModel, x: torch.Tensor, name: str) -> torch.Tensor:
    """The model's outputs on `x`, each stage checked to give a tensor."""
    if model.separable:
        features = model.body(x)
        if not isinstance(features, torch.Tensor):
            raise UsageError(
                f"model '{name}': its body must return a tensor of features, got "
                f"{type(features).__name__}"
            )
        out = model.head_forward(features)
    else:
        out = model(x)
    if not isinstance(out, torch.Tensor):
        what = "its head" if model.separable else "its forward"
        raise UsageError(f"model '{name}': {what} must return a tensor, got {type(out).__name__}")
    return out


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def image_shape(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UsageError(
            f"model '{name}' needs images (channels, height, width), got inputs of shape "
            f"{input_shape}"
        )
    return input_shape[0], input_shape[1], input_shape[2]
