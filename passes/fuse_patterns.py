"""fuse_patterns: mark conv/linear/add/lookup followed by relu/relu6/clamp as one quantized unit.

Nothing is rewritten: the head gets ``NodeInfo.fused_activation`` and the activation
``NodeInfo.fused_into``, so observers skip the value between them and lowering folds the
activation into the head's output clamp.
"""
from __future__ import annotations

from collections import Counter

import torch.fx as fx

from qcompiler.core.meta import FusedActivation, GraphState, node_info
from qcompiler.core.op_table import (FUSABLE_ACTIVATIONS, LOOKUP_OPS, WEIGHTED_OPS, activation_bounds,
                                     canonical_op, is_tensor_binary, lookup_operand)
from qcompiler.core.pass_manager import Pass, PassContext, PassResult
from qcompiler.core.provenance import layer_name


def fusable_head(node: fx.Node, modules: dict) -> bool:
    op = canonical_op(node, modules)
    if node_info(node).fused_into:       # relu6 fused into a conv heads nothing itself
        return False
    # a lookup (``x + 3`` before relu6) takes the clamp into its table
    return op in WEIGHTED_OPS or (op in ("add",) and is_tensor_binary(node)) \
        or (op in LOOKUP_OPS and lookup_operand(node) is not None)


class FusePatterns(Pass):
    name = "fuse_patterns"
    requires = frozenset({GraphState.BN_FOLDED})
    establishes = frozenset({GraphState.FUSED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modules = dict(gm.named_modules())
        changes = Counter()
        for node in ctx.nodes(gm):
            info = node_info(node)
            info.source_layer = layer_name(node)
            if not fusable_head(node, modules) or len(node.users) != 1:
                continue
            act = next(iter(node.users))
            op = canonical_op(act, modules)
            if op not in FUSABLE_ACTIVATIONS or act.args[0] is not node:
                continue
            bounds = activation_bounds(act, modules, op)
            if bounds is None:
                continue
            info.fused_activation = FusedActivation(op, *bounds)
            node_info(act).fused_into = node.name
            changes[f"{canonical_op(node, modules)}+{op}"] += 1
        return PassResult(gm, changes)
