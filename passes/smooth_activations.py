"""smooth_activations: SmoothQuant-style smoothing (Xiao et al., 2023), float-preserving.

A Linear's input X with a few outlier channels quantizes badly per tensor; its weight
quantizes per output channel and barely notices a column scaled up. So, per input channel j,

    s_j = max|X_j|^α / max|W_:,j|^(1−α),      X' = X / s,   W' = W · diag(s),   X'W'ᵀ = XWᵀ

with ``max|X_j|`` measured on the calibration batches and ``max|W_:,j|`` taken over every
Linear that reads X (they all share one s). The division is folded into X's producer:

- **LayerNorm** over the last dimension, with affine parameters: γ/s, β/s. When the
  LayerNorm's output also feeds something other than these Linears (BERT's residual add),
  the Linears read a smoothed copy of the LayerNorm and the others keep the original;
- **Linear** whose every user is one of the smoothed Linears: its rows (weight and bias) / s.

Any other producer (GELU, a reshape of attention heads, a graph input…) is refused: the
Linears keep their input as it is, and the report notes why. (An explicit ``X * (1/s)`` op
would not help: its own input would still be quantized per tensor with the outliers.)

s is rounded to a power of two, in [2^-24, 2^24], so the divisions and multiplications are
exact in float32: the float model's output is unchanged bit for bit unless a scaled value
leaves float32's normal range. A channel never seen non-zero keeps s = 1.

Statistics: this pass runs the FLOAT graph over the calibration batches itself (forward
pre-hooks on the Linears), before insert_observers: observers measure per tensor and only
exist after the weights they depend on are final. The calibration data is therefore read
twice; a one-shot iterator is kept as a list for ``calibrate``.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Optional

import torch
import torch.fx as fx

from qcompiler.core.graph_utils import finalize, fresh_name, set_module
from qcompiler.core.meta import GraphState, graph_info
from qcompiler.core.observers import CalibrationError
from qcompiler.core.op_table import canonical_op
from qcompiler.core.pass_manager import Pass, PassContext, PassResult
from qcompiler.core.provenance import layer_name
from qcompiler.core.qconfig import check_alpha

from .calibrate import feed_layer_inputs

#: s = 2^e with |e| <= this: away from 0 and inf, and far from float32's subnormals
MAX_EXPONENT = 24
#: statistics below this (a dead channel, a zero weight column) give no direction: s = 1
TINY = 1e-12


class SmoothActivations(Pass):
    name = "smooth_activations"
    requires = frozenset({GraphState.BN_FOLDED})

    def __init__(self, alpha: Optional[float] = None):
        """``alpha``: the migration strength; None takes ``QConfig.smoothing``."""
        self.alpha = None if alpha is None else check_alpha(alpha)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        alpha = self.alpha if self.alpha is not None else ctx.config.smoothing
        if alpha is None:
            raise ValueError("smooth_activations needs an alpha: QConfig(smoothing=alpha) or "
                             "SmoothActivations(alpha)")
        alpha = check_alpha(alpha)
        if GraphState.OBSERVED in graph_info(gm).states:
            raise ValueError("smooth_activations must run before insert_observers: it changes "
                             "the weights and activations that observers measure")
        modules = dict(gm.named_modules())
        changes = Counter()
        groups = []
        for node in ctx.nodes(gm):
            consumers = _linear_consumers(node, modules, gm, ctx)
            if not consumers:
                continue
            why = _refusal(node, consumers, modules, gm)
            if why:
                names = ", ".join(c.target for c in consumers)
                graph_info(gm).note(f"smooth_activations: {names} not smoothed: {why}")
                changes["refused"] += 1
            else:
                groups.append((node, consumers))
        if not groups:
            return PassResult(gm, changes)
        act_max = _input_abs_max(gm, ctx, [consumers[0] for _, consumers in groups])
        for (producer, consumers), amax in zip(groups, act_max):
            s = smoothing_scales(amax, [modules[c.target].weight for c in consumers], alpha)
            # edited copies, never in place: the traced graph shares its modules with the user's model
            for c in consumers:
                linear = copy.deepcopy(modules[c.target])
                with torch.no_grad():
                    linear.weight.mul_(s)
                set_module(gm, c.target, linear)
            if canonical_op(producer, modules) == "layer_norm":
                changes["cloned_layer_norm" if _smooth_layer_norm(gm, producer, consumers, s)
                        else "layer_norm"] += 1
            else:
                set_module(gm, producer.target, _rows_divided(modules[producer.target], s))
                changes["linear"] += 1
            changes["smoothed_linears"] += len(consumers)
            modules = dict(gm.named_modules())
        graph_info(gm).note(f"smooth_activations: alpha={alpha:g}, {len(groups)} input(s) of "
                            f"{changes['smoothed_linears']} Linear(s) smoothed")
        return PassResult(finalize(gm), changes)


def smoothing_scales(act_abs_max: torch.Tensor, weights, alpha: float) -> torch.Tensor:
    """Per input channel: max|X_j|^α / max_i|W_ij|^(1−α) over every weight, as a power of two."""
    w_max = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0).double()
    a = act_abs_max.double()
    s = a.clamp(min=TINY) ** alpha / w_max.clamp(min=TINY) ** (1.0 - alpha)
    s = torch.where((a > TINY) & (w_max > TINY) & torch.isfinite(s), s, torch.ones_like(s))
    exponent = torch.round(torch.log2(s)).clamp(-MAX_EXPONENT, MAX_EXPONENT)
    return torch.pow(2.0, exponent).float()


def _linear_consumers(node: fx.Node, modules: dict, gm: fx.GraphModule, ctx: PassContext) -> list:
    """The nn.Linear nodes reading ``node`` as their input, and quantized by the config."""
    return [u for u in node.users
            if u.op == "call_module" and isinstance(modules.get(u.target), torch.nn.Linear)
            and u.args and u.args[0] is node and ctx.config.for_layer(layer_name(u)) is not None]


def _calls(gm: fx.GraphModule, target: str) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target)


def _refusal(producer: fx.Node, consumers: list, modules: dict, gm: fx.GraphModule) -> Optional[str]:
    """Why the input of these Linears cannot be smoothed, or None."""
    shared = [c.target for c in consumers if _calls(gm, c.target) > 1]
    if shared:
        return f"{shared[0]} is called more than once (its weight serves other inputs too)"
    op = canonical_op(producer, modules)
    if op == "layer_norm" and producer.op == "call_module":
        ln = modules[producer.target]
        if len(ln.normalized_shape) != 1:
            return "its LayerNorm normalizes over more than the channel dimension"
        if not ln.elementwise_affine:
            return "its LayerNorm has no weight to fold the scale into"
        return None
    if op == "layer_norm":
        return "its LayerNorm is a function call (F.layer_norm); only nn.LayerNorm modules are folded into"
    if op == "linear" and producer.op == "call_module":
        if set(producer.users) != set(consumers):
            return (f"its producer {producer.target} (Linear) has other users, which would see the "
                    "scaled output")
        if _calls(gm, producer.target) > 1:
            return f"its producer {producer.target} (Linear) is called more than once"
        return None
    what = op or (producer.op if producer.op == "placeholder" else layer_name(producer))
    return (f"its input comes from {what}, through which no per-channel scale folds (supported: "
            "LayerNorm, or a Linear feeding only these Linears)")


def _input_abs_max(gm: fx.GraphModule, ctx: PassContext, readers: list) -> list:
    """Per input channel max|X| of each reader Linear, over the calibration batches (float)."""
    stats: list = [None] * len(readers)

    def reader(i):
        def update(x):
            m = x.abs().reshape(-1, x.shape[-1]).amax(0)
            stats[i] = m if stats[i] is None else torch.maximum(stats[i], m)
        return update

    feed_layer_inputs(gm, ctx, [(node.target, reader(i)) for i, node in enumerate(readers)],
                      "smooth_activations (to measure activations)")
    if any(s is None for s in stats):
        raise CalibrationError("smooth_activations: the calibration data yielded no batches")
    return stats


def _smooth_layer_norm(gm: fx.GraphModule, node: fx.Node, consumers: list, s: torch.Tensor) -> bool:
    """γ/s, β/s in a LayerNorm for the consumers; True when that is a copy beside the original."""
    original = gm.get_submodule(node.target)
    ln = copy.deepcopy(original)
    with torch.no_grad():
        ln.weight.div_(s)
        if ln.bias is not None:
            ln.bias.div_(s)
    cloned = set(node.users) != set(consumers) or _calls(gm, node.target) > 1
    if not cloned:
        set_module(gm, node.target, ln)
        return False
    parent_path, _, attr = node.target.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    name = fresh_name(parent, f"{attr}_smoothed")
    parent.add_module(name, ln)
    with gm.graph.inserting_after(node):
        copy_node = gm.graph.call_module(f"{parent_path}.{name}" if parent_path else name,
                                         node.args, node.kwargs)
    copy_node.meta = {k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")}
    for c in consumers:
        c.replace_input_with(node, copy_node)
    return True


def _rows_divided(linear: torch.nn.Linear, s: torch.Tensor) -> torch.nn.Linear:
    linear = copy.deepcopy(linear)
    with torch.no_grad():
        linear.weight.div_(s[:, None])
        if linear.bias is not None:
            linear.bias.div_(s)
    return linear
