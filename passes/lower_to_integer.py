"""lower_to_integer: QDQ graph → INTEGER graph.

Every ``Dequantize* → op [→ fused activation] → Quantize`` whose op was chosen for
quantization becomes one integer op module (``core.integer_ops``) with int8 weights, an
int32 bias at scale s_x·s_w, and an explicit :class:`Requant` (mode from the layer's
config, fused activation folded into its clamp). A conv/linear whose int32 accumulator
could overflow stays in float and is reported. Remaining ``Dequantize → Quantize`` pairs
become ``QRequantize``.
"""
from __future__ import annotations

import math
import operator
from collections import Counter
from typing import Optional

import torch
import torch.fx as fx

from qcompiler.core.graph_utils import add_module, finalize, get_constant
from qcompiler.core.integer_ops import (AccumulatorOverflowError, IntegerOp, QAdaptiveAvgPool2d,
                                        QAdd, QAvgPool2d, QCat, QConv, QLinear, QMul,
                                        QRequantize, Dequantize, Quantize, Requant,
                                        check_accumulator, quantize_bias, real_multiplier)
from qcompiler.core.meta import GraphState, graph_info, has_node_info, node_info
from qcompiler.core import embedding_ops, lookup_ops, transformer_ops
from qcompiler.core import reduce_ops
from qcompiler.core.op_table import (COMPUTE_OPS, INDEX_OPS, SHARED_OPS, canonical_op, produces_tensor,
                                     tensor_inputs)
from qcompiler.core.pass_manager import Pass, PassContext, PassResult
from qcompiler.core.provenance import user_label
from qcompiler.core.qtypes import INT32, QParams
from qcompiler.core.quantize import quantize

#: op -> builder(gm, head, in_qps, out_qp, mode, act, layer, modules) -> IntegerOp, for the op
#: families that live in their own core modules
_BUILDERS = {**lookup_ops.BUILDERS, **transformer_ops.BUILDERS, **embedding_ops.BUILDERS}
_BUILDERS.update(reduce_ops.BUILDERS)

_FUNCTIONAL_NAMES = {"conv1d_functional": "conv1d", "conv2d_functional": "conv2d",
                     "linear_functional": "linear"}


def _module(gm, node, cls):
    if node is None or not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    mod = gm.get_submodule(node.target)
    return mod if isinstance(mod, cls) else None


def _arg(node: fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class LowerToInteger(Pass):
    name = "lower_to_integer"
    requires = frozenset({GraphState.QDQ})
    establishes = frozenset({GraphState.INTEGER})
    invalidates = frozenset({GraphState.QDQ})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        changes = Counter()
        for node in ctx.nodes(gm):
            out = _module(gm, node, Quantize)
            if out is None:
                continue
            lowered = self._lower_one(gm, node, out.qparams)
            if lowered:
                changes[lowered] += 1
        for node in ctx.nodes(gm):
            if self._requantize_pair(gm, node, ctx):
                changes["requantize"] += 1
        gm = finalize(gm)
        self._report_float_ops(gm, changes, ctx.config)
        return PassResult(gm, changes)

    # -- one quantize node: find the op that produces its input ------------------------
    def _lower_one(self, gm, q_node: fx.Node, out_qp: QParams) -> Optional[str]:
        producer = q_node.args[0]
        if not isinstance(producer, fx.Node) or not has_node_info(producer):
            return None
        act_node = producer if node_info(producer).fused_into else None
        head = producer.args[0] if act_node is not None else producer
        info = node_info(head) if isinstance(head, fx.Node) and has_node_info(head) else None
        if info is None or info.qconfig is None or info.float_reason:
            return None
        modules = dict(gm.named_modules())
        op = canonical_op(head, modules)
        op = _FUNCTIONAL_NAMES.get(op, op)
        if op not in COMPUTE_OPS:
            return None
        inputs = tensor_inputs(head, op)
        dqs = [_module(gm, x, Dequantize) for x in inputs]
        if any(d is None for d in dqs):
            return None
        in_qps = [d.qparams for d in dqs]
        int_inputs = tuple(x.args[0] for x in inputs)
        if op in INDEX_OPS:             # the integer indices, as they are
            int_inputs = (head.args[0], *int_inputs)
        mode, act, layer = info.qconfig.requant_mode, info.fused_activation, info.source_layer
        try:
            module = self._build(gm, op, head, in_qps, out_qp, mode, act, layer, modules)
        except (AccumulatorOverflowError, lookup_ops.UndefinedLookupError) as exc:
            info.float_reason = str(exc)
            graph_info(gm).note(f"{layer} ({op}) left in float: {exc}")
            return "left_in_float"
        module.fused_activation = act
        name = add_module(gm, f"q{op}_{head.name}", module)
        with gm.graph.inserting_before(q_node):
            new = gm.graph.call_module(name, int_inputs)
        node_info(new).source_layer = layer
        node_info(new).shape = node_info(producer).shape    # later builders read it (a matmul's K)
        q_node.replace_all_uses_with(new)
        gm.graph.erase_node(q_node)
        return op

    def _build(self, gm, op, head, in_qps, out_qp, mode, act, layer, modules) -> IntegerOp:
        if op in _BUILDERS:
            return _BUILDERS[op](gm, head, in_qps, out_qp, mode, act, layer, modules)
        if op in ("conv1d", "conv2d", "linear"):
            return self._build_weighted(gm, op, head, in_qps[0], out_qp, mode, act, layer)
        if op == "add":
            return QAdd(in_qps[0], in_qps[1], out_qp, mode, act, layer)
        if op == "mul":
            real = real_multiplier(in_qps[0].scale, in_qps[1].scale, out=out_qp)
            return QMul(in_qps[0], in_qps[1], out_qp, Requant.make(real, out_qp, mode, act), layer)
        if op == "cat":
            return QCat(in_qps, out_qp, mode, _arg(head, 1, "dim", 0), layer)
        if op == "adaptive_avg_pool2d":
            size = modules[head.target].output_size if head.op == "call_module" else _arg(head, 1, "output_size", None)
            return QAdaptiveAvgPool2d(in_qps[0], out_qp, mode, size, layer)
        if op == "avg_pool2d":
            if head.op == "call_module":
                m = modules[head.target]
                p = (m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)
            else:
                k = _arg(head, 1, "kernel_size", None)
                p = (k, _arg(head, 2, "stride", None) or k, _arg(head, 3, "padding", 0),
                     _arg(head, 4, "ceil_mode", False), _arg(head, 5, "count_include_pad", True),
                     _arg(head, 6, "divisor_override", None))
            return QAvgPool2d(in_qps[0], out_qp, mode, *p, source_layer=layer)
        raise NotImplementedError(op)

    @staticmethod
    def _build_weighted(gm, op, head, in_qp, out_qp, mode, act, layer) -> IntegerOp:
        w_dq = head.args[1]
        w_qp = _module(gm, w_dq, Dequantize).qparams
        w_float = get_constant(gm, w_dq.args[0].args[0]).detach()
        b_node = head.args[2] if len(head.args) > 2 else None
        b_float = get_constant(gm, b_node).detach() if b_node is not None else None
        w_int = quantize(w_float, w_qp)
        bias_qp = QParams(in_qp.scale * w_qp.scale, torch.zeros_like(w_qp.zero_point), INT32,
                          0 if w_qp.per_channel else None)
        b_int = quantize_bias(layer, b_float, bias_qp) if b_float is not None else None
        k = math.prod(w_int.shape[1:])
        check_accumulator(layer, k, in_qp, w_int, w_qp, b_int)
        requant = Requant.make(real_multiplier(in_qp.scale, w_qp.scale, out=out_qp), out_qp, mode, act)
        if op == "linear":
            module = QLinear(w_int, w_qp, b_int, in_qp, out_qp, requant, layer)
        else:
            stride, padding, dilation, groups = head.args[3:7]
            module = QConv(int(op[4]), w_int, w_qp, b_int, in_qp, out_qp, requant, stride, padding,
                           dilation, groups, layer)
        # float weights kept (not as buffers) for the per-layer report's isolated SQNR
        module.float_weight, module.float_bias = w_float, b_float
        return module

    @staticmethod
    def _requantize_pair(gm, node: fx.Node, ctx: PassContext) -> bool:
        q = _module(gm, node, Quantize)
        dq = _module(gm, node.args[0], Dequantize) if q is not None else None
        if dq is None:
            return False
        mode = ctx.config.restricted_to(ctx.capabilities)[0].requant_mode     # what the target runs
        module = QRequantize(dq.qparams, q.qparams, mode, node.name)
        name = add_module(gm, f"requant_{node.name}", module)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (node.args[0].args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        return True

    @staticmethod
    def _report_float_ops(gm, changes: Counter, config) -> None:
        """List the ops left in float, except where the layer's method keeps them float by design
        (dynamic / weight-only / half quantize the Linears and nothing else)."""
        modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            if node.op not in ("call_module", "call_function", "call_method"):
                continue
            mod = modules.get(node.target) if node.op == "call_module" else None
            if isinstance(mod, (IntegerOp, Quantize, Dequantize)):
                continue
            # a float module returning a tuple (nn.LSTM) counts; picking an element of it does not
            if not produces_tensor(node) and mod is None:
                continue
            if node.target is operator.getitem and getattr(node.args[0], "op", "") == "call_module" \
                    and not produces_tensor(node.args[0]):
                continue
            op = canonical_op(node, modules)
            if op in SHARED_OPS or (node.op == "call_function" and node.target is torch.clamp):
                continue
            if node.op == "get_attr":
                continue
            if has_node_info(node) and not node_info(node).float_reason:
                cfg = config.for_layer(node_info(node).source_layer or node.name)
                if cfg is not None and cfg.method != "static":
                    continue
            label = user_label(node, modules, shape=())
            graph_info(gm).float_ops.append(label)
            graph_info(gm).note(f"{label} runs in float")
            changes["float_ops"] += 1
