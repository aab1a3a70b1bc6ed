"""insert_observers: decide what is quantized and observe every value that needs qparams.

A compute op (conv, linear, add, mul, pools, cat) is quantized when the target supports
it and the layer's config is not ``None``. Its inputs and its output (after a fused
activation) get one observer module each; a value-preserving op (max-pool, flatten,
relu…) on a quantized value inherits that value's observer. Weights get a weight observer
in the node's metadata. The recipe is QConfig ∩ target capabilities, noted where it differs.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import torch
import torch.fx as fx

from qcompiler.core import embedding_ops
from qcompiler.core import reduce_ops
from qcompiler.core.graph_utils import add_module
from qcompiler.core.input_stats import ChannelMean
from qcompiler.core.integer_ops import IntegerOp
from qcompiler.core.meta import GraphState, graph_info, has_node_info, node_info
from qcompiler.core.observers import make_observer
from qcompiler.core.op_table import (COMPUTE_OPS, LOOKUP_OPS, SHARED_OPS, TUPLE_OPS, WEIGHTED_OPS, canonical_op,
                                     is_tensor_binary, lookup_operand, produces_tensor, tensor_inputs)
from qcompiler.core.pass_manager import Pass, PassContext, PassResult
from qcompiler.core.qconfig import QConfig
from qcompiler.core.shapes import propagate_shapes


def _float_reason(node, op, modules, cfg, caps) -> Optional[str]:
    if cfg is None:
        return "kept in float by the config"
    if op in LOOKUP_OPS:            # elementwise functions of one tensor: one integer op, "lookup"
        if "lookup" not in caps.ops:
            return f"the target has no integer lookup table ({op})"
        if lookup_operand(node) is None:
            return f"{op} of more than one tensor"
        if op == "scalar_div" and any(not isinstance(v, fx.Node) and v == 0 for v in node.args):
            return "division by a zero constant (not finite)"
    elif op not in caps.ops:
        return f"the target has no integer {op}"
    if op in ("add", "mul", "matmul") and not is_tensor_binary(node):
        return f"{op} with a scalar operand"
    if op == "mean" and reduce_ops.float_reason(node):
        return reduce_ops.float_reason(node)
    if op == "cat" and not isinstance(node.args[0] if node.args else None, (list, tuple)):
        return "cat of a non-literal list"
    info = node_info(node)
    if info.dtype is not None and not info.dtype.is_floating_point:
        return "integer-valued tensor"
    if op in WEIGHTED_OPS:
        mod = modules[node.target]
        if getattr(mod, "padding_mode", "zeros") != "zeros":
            return f"padding_mode={mod.padding_mode}"
    if op == "embedding":
        return embedding_ops.float_reason(modules[node.target]) or None
    return None


def _has_float_domain_ops(gm: fx.GraphModule) -> bool:
    """Does quantize_weights' work (dynamic, weight-only, half ops) stand in the graph?"""
    return any(isinstance(m, IntegerOp) for m in gm.modules())


class NothingToQuantizeError(ValueError):
    """No op of the model is one the target quantizes: there is nothing to do."""


def _nothing_to_quantize(gm: fx.GraphModule, modules: dict, ctx: PassContext) -> str:
    seen = sorted({canonical_op(n, modules) or str(getattr(n.target, "__name__", n.target))
                   for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")})
    floats = [f"{node_info(n).source_layer or n.name}: {node_info(n).float_reason}" for n in gm.graph.nodes
              if has_node_info(n) and node_info(n).float_reason]
    why = f" What stays in float and why: {'; '.join(floats[:6])}." if floats else ""
    return (f"nothing to quantize: this model has no op that target {ctx.target!r} quantizes (its ops: "
            f"{', '.join(seen) or 'none'}).{why} docs/supported-ops.md lists the ops each target quantizes; "
            "run the float model as it is")


class InsertObservers(Pass):
    name = "insert_observers"
    requires = frozenset({GraphState.FUSED})
    establishes = frozenset({GraphState.OBSERVED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        if ctx.example_inputs is None:
            raise ValueError("insert_observers needs example inputs (PassContext.example_inputs) "
                             "to know which values are tensors")
        propagate_shapes(gm, ctx.example_inputs)
        modules = dict(gm.named_modules())
        changes = Counter()
        ginfo = graph_info(gm)
        # value node -> the node whose output carries its observer (itself or an ancestor)
        observed: dict[fx.Node, fx.Node] = {}

        def observe(value: fx.Node, cfg: QConfig) -> None:
            if value in observed:
                return
            observer = make_observer(cfg.activation.observer)
            observer.label = node_info(value).source_layer or value.name
            name = add_module(gm, f"obs_{value.name}", observer)
            with gm.graph.inserting_after(value):
                obs = gm.graph.call_module(name, (value,))
            value.replace_all_uses_with(obs, delete_user_cb=lambda user: user is not obs)
            node_info(obs).qconfig = cfg
            node_info(obs).source_layer = observer.label
            observed[value] = observed[obs] = obs
            changes["activation_observers"] += 1

        for node in ctx.nodes(gm):
            op = canonical_op(node, modules)
            if node.op == "call_module" and node.target.startswith("obs_"):
                continue
            if op in SHARED_OPS and node.args and isinstance(node.args[0], fx.Node) \
                    and node.args[0] in observed and (produces_tensor(node) or op in TUPLE_OPS) \
                    and not node_info(node).fused_into:
                # runs on the int8 value (chunk / split: each getitem of the tuple likewise)
                observed[node] = observed[node.args[0]]
                continue
            if op not in COMPUTE_OPS or not produces_tensor(node) or node_info(node).fused_into:
                if op in WEIGHTED_OPS:  # e.g. a conv whose output is not a tensor we can see
                    node_info(node).float_reason = "not a tensor-valued layer"
                elif op in ("conv1d_functional", "conv2d_functional", "linear_functional"):
                    # parameter weights became modules in fold_batchnorm; this one is computed
                    node_info(node).float_reason = "its weight is computed in the graph, not a parameter"
                continue
            layer = node_info(node).source_layer or node.name
            cfg = ctx.config.for_layer(layer)
            if cfg is not None and cfg.method != "static":
                # dynamic / weight-only / half: quantize_weights took the Linears; the rest is float by design
                if op in WEIGHTED_OPS and not node_info(node).float_reason:
                    node_info(node).float_reason = f"method {cfg.method} quantizes Linear layers only"
                    ginfo.note(f"{layer} ({op}) left in float: {node_info(node).float_reason}")
                continue
            if cfg is not None:
                cfg, notes = cfg.restricted_to(ctx.capabilities)
                for line in notes:
                    ginfo.note(f"{layer}: {line}")
            reason = _float_reason(node, op, modules, cfg, ctx.capabilities)
            if reason:
                node_info(node).float_reason = reason
                ginfo.note(f"{layer} ({op}) left in float: {reason}")
                changes["left_in_float"] += 1
                continue
            node_info(node).qconfig = cfg
            for value in tensor_inputs(node, op):
                observe(value, cfg)
            if op in WEIGHTED_OPS:
                self._observe_weight(node, modules[node.target], cfg)
                if cfg.bias_correction:
                    node_info(node).input_mean = ChannelMean(axis=-1 if op == "linear" else 1)
                changes["weight_observers"] += 1
            act = node_info(node).fused_activation
            out = next(iter(node.users)) if act is not None else node
            observe(out, cfg)
            if op == "embedding":       # any row may be looked up: the range covers the whole table
                gm.get_submodule(observed[out].target)(modules[node.target].weight.detach())
            changes[f"quantized_{op}"] += 1
        if not changes["activation_observers"] and not _has_float_domain_ops(gm):
            raise NothingToQuantizeError(_nothing_to_quantize(gm, modules, ctx))
        return PassResult(gm, changes)

    @staticmethod
    def _observe_weight(node: fx.Node, module: torch.nn.Module, cfg: QConfig) -> None:
        spec = cfg.weight
        axis = 0 if spec.granularity == "per_channel" else None
        observer = make_observer(spec.observer, axis=axis)
        observer.label = f"{node_info(node).source_layer}.weight"
        observer(module.weight.detach())
        node_info(node).weight_observer = observer
