"""fuse_qdq: the QDQ graph — explicit quantize/dequantize pairs, fake-quantized weights.

1. every observer becomes ``Quantize → Dequantize`` with the chosen qparams;
2. every quantized conv/linear becomes its functional form on a fake-quantized weight
   (``F.conv2d(x, dequantize(quantize(w)), b, ...)``), so the QDQ graph simulates the
   integer model in float;
3. value-preserving ops (max-pool, flatten, reshape, relu…) move before the dequantize,
   so they stay in int8 with the same qparams (exact: they commute with dequantize); a
   quantized view of a constant (``cls_token.expand(...)``) quantizes the constant first;
4. redundant ``dequantize → quantize`` pairs with identical qparams are removed.
"""
from __future__ import annotations

import operator
from collections import Counter

import torch
import torch.fx as fx
import torch.nn.functional as F

from qcompiler.core.graph_utils import add_module, finalize
from qcompiler.core.integer_ops import Dequantize, Quantize
from qcompiler.core.meta import GraphState, has_node_info, node_info
from qcompiler.core.observers import Observer
from qcompiler.core.op_table import SHARED_OPS, TUPLE_OPS, canonical_op
from qcompiler.core.pass_manager import Pass, PassContext, PassResult

_FUNCTIONAL = {"conv1d": F.conv1d, "conv2d": F.conv2d, "linear": F.linear}


def module_of(gm: fx.GraphModule, node: fx.Node, cls):
    if node.op != "call_module":
        return None
    mod = gm.get_submodule(node.target)
    return mod if isinstance(mod, cls) else None


def insert_qdq(gm, value: fx.Node, qparams, base: str) -> fx.Node:
    """value → Quantize → Dequantize, inserted right after ``value``; returns the dequantize."""
    q_name = add_module(gm, f"q_{base}", Quantize(qparams))
    dq_name = add_module(gm, f"dq_{base}", Dequantize(qparams))
    with gm.graph.inserting_after(value):
        q = gm.graph.call_module(q_name, (value,))
    with gm.graph.inserting_after(q):
        dq = gm.graph.call_module(dq_name, (q,))
    return dq


class FuseQDQ(Pass):
    name = "fuse_qdq"
    requires = frozenset({GraphState.RANGES_CHOSEN})
    establishes = frozenset({GraphState.QDQ})
    invalidates = frozenset({GraphState.OBSERVED, GraphState.CALIBRATED, GraphState.RANGES_CHOSEN})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        changes = Counter()
        for node in ctx.nodes(gm):
            if module_of(gm, node, Observer) is not None:
                self._observer_to_qdq(gm, node)
                changes["qdq_pairs"] += 1
            elif has_node_info(node) and node_info(node).weight_qparams is not None \
                    and node.op == "call_module":
                self._fake_quantize_weight(gm, node)
                changes["fake_quantized_weights"] += 1
        for node in ctx.nodes(gm):
            if self._quantize_constant_first(gm, node):
                changes["constants_quantized_before_views"] += 1
        for node in ctx.nodes(gm):
            if self._shape_query_on_int(node):
                changes["shape_queries_on_int8"] += 1
            elif self._sink_dequantize(gm, node):
                changes["int8_passthrough"] += 1
        for node in ctx.nodes(gm):
            if self._drop_redundant_pair(gm, node):
                changes["redundant_pairs_removed"] += 1
        return PassResult(finalize(gm), changes)

    @staticmethod
    def _observer_to_qdq(gm, obs: fx.Node) -> None:
        value = obs.args[0]
        dq = insert_qdq(gm, value, node_info(obs).output_qparams, value.name)
        node_info(dq).source_layer = node_info(obs).source_layer
        obs.replace_all_uses_with(dq)
        gm.graph.erase_node(obs)

    @staticmethod
    def _fake_quantize_weight(gm, node: fx.Node) -> None:
        mod = gm.get_submodule(node.target)
        op = canonical_op(node, {node.target: mod})
        info = node_info(node)
        with gm.graph.inserting_before(node):
            w = gm.graph.get_attr(f"{node.target}.weight")
            b = gm.graph.get_attr(f"{node.target}.bias") if mod.bias is not None else None
        w_dq = insert_qdq(gm, w, info.weight_qparams, f"{node.name}_weight")
        args = (node.args[0], w_dq, b)
        if op != "linear":
            args += (mod.stride, mod.padding, mod.dilation, mod.groups)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(_FUNCTIONAL[op], args)
        new.meta.update(node.meta)
        for user in node.users:
            if has_node_info(user) and node_info(user).fused_into == node.name:
                node_info(user).fused_into = new.name
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)

    @staticmethod
    def _sink_dequantize(gm, node: fx.Node) -> bool:
        """shared_op(dequantize(q)) → dequantize(shared_op(q)) for value-preserving ops."""
        modules = dict(gm.named_modules())
        op = canonical_op(node, modules)
        if op not in SHARED_OPS or not node.args or not isinstance(node.args[0], fx.Node):
            return False
        dq_node = node.args[0]
        dq = module_of(gm, dq_node, Dequantize)
        if dq is None or (has_node_info(node) and node_info(node).fused_into) or dq.qparams.per_channel:
            return False
        q_value = dq_node.args[0]
        if op in TUPLE_OPS:
            return _sink_through_tuple(gm, node, dq_node, dq.qparams)
        with gm.graph.inserting_before(node):
            if op == "relu":     # relu on a quantized value: max(q, zero_point)
                int_op = gm.graph.call_function(torch.clamp, (q_value,), {"min": dq.qparams.zero_point_int()})
            else:
                int_op = gm.graph.node_copy(node, lambda n: q_value if n is dq_node else n)
        int_op.meta.update(node.meta)
        dq_name = add_module(gm, f"dq_{node.name}", Dequantize(dq.qparams))
        with gm.graph.inserting_after(int_op):
            new_dq = gm.graph.call_module(dq_name, (int_op,))
        node.replace_all_uses_with(new_dq)
        gm.graph.erase_node(node)
        return True

    @staticmethod
    def _shape_query_on_int(node: fx.Node) -> bool:
        """``dequantize(q).size()`` (``dim``, ``numel``, ``.shape``) → the same query on ``q``, so
        no dequantize is left for a shape."""
        query = (node.op == "call_method" and node.target in _SHAPE_METHODS) or \
            (node.op == "call_function" and node.target is getattr and len(node.args) == 2
             and node.args[1] in _SHAPE_ATTRIBUTES)
        if not query or not isinstance(node.args[0], fx.Node) or node.args[0].op != "call_module" \
                or not isinstance(node.graph.owning_module.get_submodule(node.args[0].target), Dequantize):
            return False
        node.update_arg(0, node.args[0].args[0])
        return True

    @staticmethod
    def _quantize_constant_first(gm, node: fx.Node) -> bool:
        """quantize(view(constant)) → view(quantize(constant)) for a chain of value-preserving
        ops on a parameter or buffer (ViT's ``cls_token.expand(n, -1, -1)``): exact, as quantize
        is elementwise with one scale, and the view then runs on int8 like any other."""
        q = module_of(gm, node, Quantize)
        if q is None or q.qparams.per_channel or not isinstance(node.args[0], fx.Node):
            return False
        modules = dict(gm.named_modules())
        chain, value = [], node.args[0]
        while canonical_op(value, modules) in _VIEW_OPS and value.args and isinstance(value.args[0], fx.Node):
            chain.append(value)
            value = value.args[0]
        if not chain or value.op != "get_attr":
            return False
        q_name = add_module(gm, f"q_{value.name}", Quantize(q.qparams))
        with gm.graph.inserting_after(value):
            current = gm.graph.call_module(q_name, (value,))
        for op_node in reversed(chain):
            with gm.graph.inserting_before(node):
                src = op_node.args[0]
                current = gm.graph.node_copy(op_node, lambda n, src=src, cur=current: cur if n is src else n)
            current.meta.update(op_node.meta)
        node.replace_all_uses_with(current)
        gm.graph.erase_node(node)
        return True

    @staticmethod
    def _drop_redundant_pair(gm, node: fx.Node) -> bool:
        q = module_of(gm, node, Quantize)
        if q is None or not isinstance(node.args[0], fx.Node):
            return False
        dq = module_of(gm, node.args[0], Dequantize)
        if dq is None or not dq.qparams.same_as(q.qparams):
            return False
        node.replace_all_uses_with(node.args[0].args[0])
        gm.graph.erase_node(node)
        return True


#: shape queries that read the same from the int8 tensor as from its dequantized value
_SHAPE_METHODS = frozenset({"size", "dim", "numel"})
_SHAPE_ATTRIBUTES = frozenset({"shape", "ndim"})
#: value-preserving ops that commute with quantize (which is elementwise, one scale)
_VIEW_OPS = SHARED_OPS - {"relu", "max_pool2d"}


def _sink_through_tuple(gm, node: fx.Node, dq_node: fx.Node, qparams) -> bool:
    """getitem(chunk(dequantize(q)), i) → dequantize(getitem(chunk(q), i)) for every item
    (chunk / split / unbind), when getitem with a constant index is all that reads the tuple."""
    users = list(node.users)
    if not users or any(u.op != "call_function" or u.target is not operator.getitem or u.args[0] is not node
                        or not isinstance(u.args[1], int) for u in users):
        return False
    with gm.graph.inserting_before(node):
        int_op = gm.graph.node_copy(node, lambda n: dq_node.args[0] if n is dq_node else n)
    int_op.meta.update(node.meta)
    for item in users:
        item.update_arg(0, int_op)
        dq_name = add_module(gm, f"dq_{item.name}", Dequantize(qparams))
        with gm.graph.inserting_after(item):
            new_dq = gm.graph.call_module(dq_name, (item,))
        item.replace_all_uses_with(new_dq, delete_user_cb=lambda user: user is not new_dq)
    gm.graph.erase_node(node)
    return True
