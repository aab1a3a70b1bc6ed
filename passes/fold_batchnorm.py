"""fold_batchnorm: fold BatchNorm into the Conv1d/Conv2d/Linear before it (float-preserving).

    y = γ · (W x + b − μ) / √(σ² + ε) + β  =  (W·k) x + (b − μ)·k + β,   k = γ / √(σ² + ε)

Handles BatchNorm modules and ``F.batch_norm`` with constant statistics; folding is done
in float64 and rounded once to float32. A BatchNorm with no conv/linear before it (or
whose producer has other users) is left alone and reported.
"""
from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.fx as fx

from qcompiler.core.graph_utils import finalize, get_constant, set_module
from qcompiler.core.functional_layers import modularize_functional_layers
from qcompiler.core.meta import GraphState, graph_info
from qcompiler.core.op_table import WEIGHTED_OPS, canonical_op
from qcompiler.core.pass_manager import NodeError, Pass, PassContext, PassResult


def _bn_params(gm, node, modules):
    """(mean, var, gamma, beta, eps) as float64 tensors, or None if not constant."""
    if node.op == "call_module":
        bn = modules[node.target]
        if bn.training or bn.running_mean is None:
            raise NodeError(node, f"BatchNorm {node.target} is in training mode or has no running "
                                  "statistics; call model.eval() before quantizing")
        n = bn.num_features
        gamma = bn.weight if bn.affine else torch.ones(n)
        beta = bn.bias if bn.affine else torch.zeros(n)
        return bn.running_mean, bn.running_var, gamma, beta, bn.eps
    # F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    names = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    if args.get("training", False):
        return None
    tensors = []
    for key in ("running_mean", "running_var", "weight", "bias"):
        v = args.get(key)
        if v is None:
            tensors.append(None)
        elif isinstance(v, fx.Node) and v.op == "get_attr":
            tensors.append(get_constant(gm, v))
        else:
            return None
    mean, var, gamma, beta = tensors
    gamma = torch.ones_like(mean) if gamma is None else gamma
    beta = torch.zeros_like(mean) if beta is None else beta
    return mean, var, gamma, beta, float(args.get("eps", 1e-5))


def fold_into(layer: torch.nn.Module, mean, var, gamma, beta, eps) -> torch.nn.Module:
    folded = copy.deepcopy(layer)
    k = gamma.double() / torch.sqrt(var.double() + eps)
    w = layer.weight.detach().double() * k.reshape([-1] + [1] * (layer.weight.dim() - 1))
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(k)
    b = (b - mean.double()) * k + beta.double()
    folded.weight = torch.nn.Parameter(w.float(), requires_grad=False)
    folded.bias = torch.nn.Parameter(b.float(), requires_grad=False)
    return folded


class FoldBatchNorm(Pass):
    name = "fold_batchnorm"
    requires = frozenset({GraphState.FLOAT})
    establishes = frozenset({GraphState.BN_FOLDED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        changes = Counter()
        # F.linear / F.conv on parameters (and a bare nn.Linear / nn.Conv2d model, whose root
        # forward traces to F.linear on get_attr nodes) as module calls: one spelling from here on
        changes["functional_layers_as_modules"] = modularize_functional_layers(gm)
        modules = dict(gm.named_modules())
        for node in ctx.nodes(gm):
            if canonical_op(node, modules) != "batch_norm":
                continue
            src = node.args[0] if node.args else None
            foldable = (isinstance(src, fx.Node) and canonical_op(src, modules) in WEIGHTED_OPS
                        and len(src.users) == 1)
            params = _bn_params(gm, node, modules) if foldable else None
            if params is None:
                graph_info(gm).note(f"{node.name}: BatchNorm not after a conv/linear, kept as is")
                changes["kept"] += 1
                continue
            set_module(gm, src.target, fold_into(modules[src.target], *params))
            modules = dict(gm.named_modules())
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            changes["folded"] += 1
        return PassResult(finalize(gm), changes)
