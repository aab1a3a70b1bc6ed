"""Functional conv/linear with parameter weights as module calls.

``F.linear(x, self.w, self.b)``, ``F.conv2d(x, self.w, ...)`` and a model that IS one
``nn.Linear`` / ``nn.Conv2d`` (fx traces the root module's own forward, so its layer arrives as
``F.linear(input, weight, bias)`` on ``get_attr`` nodes) become calls of an equivalent
``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` sharing those parameters. Every pass after
(BatchNorm folding, fusion, observers, fake-quant weights, lowering) then sees one spelling.
Functional calls whose weight is computed (``self.w.t()``) are left as they are.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .graph_utils import get_constant
from .provenance import module_path

_LINEAR_ARGS = ("input", "weight", "bias")
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _params(node: fx.Node, names) -> dict:
    params = dict(_CONV_DEFAULTS)
    params.update(zip(names, node.args))
    params.update(node.kwargs)
    return params


def _constant(gm, v):
    """The tensor of a get_attr node (or None for None); False when ``v`` is computed."""
    if v is None:
        return None
    if isinstance(v, fx.Node) and v.op == "get_attr":
        return get_constant(gm, v)
    return False


def _as_parameter(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)


def _module_for(gm, node: fx.Node):
    """(the equivalent module, its input node) or None."""
    if node.op != "call_function" or node.target not in (F.linear, F.conv1d, F.conv2d):
        return None
    names = _LINEAR_ARGS if node.target is F.linear else _CONV_ARGS
    p = _params(node, names)
    w, b = _constant(gm, p.get("weight")), _constant(gm, p.get("bias"))
    if w is False or w is None or b is False or not isinstance(p.get("input"), fx.Node):
        return None
    if any(isinstance(v, fx.Node) for v in (p["stride"], p["padding"], p["dilation"], p["groups"])):
        return None
    if node.target is F.linear:
        if w.dim() != 2:
            return None
        mod = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    else:
        dims = 1 if node.target is F.conv1d else 2
        if w.dim() != dims + 2:
            return None
        groups = int(p["groups"])
        cls = nn.Conv1d if dims == 1 else nn.Conv2d
        mod = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), p["stride"], p["padding"], p["dilation"],
                  groups, bias=b is not None, device="meta")
    mod.weight = _as_parameter(w)
    if b is not None:
        mod.bias = _as_parameter(b)
    return mod.eval(), p["input"]


def _free_path(gm, path: str) -> str:
    """``path`` or ``path_1``…, whichever names no attribute yet (parents are created)."""
    candidate, i = path, 1
    while True:
        try:
            gm.get_submodule(candidate)
        except AttributeError:
            parent, _, name = candidate.rpartition(".")
            try:
                owner = gm.get_submodule(parent) if parent else gm
            except AttributeError:
                return candidate
            if not hasattr(owner, name):
                return candidate
        candidate, i = f"{path}_{i}", i + 1


def modularize_functional_layers(gm: fx.GraphModule) -> int:
    """Replace functional conv/linear calls on parameters with module calls; returns how many.
    The module path is the layer name a per-layer config or report would use for the call
    (``block.linear``: the enclosing module's path and the node's name)."""
    count = 0
    for node in list(gm.graph.nodes):
        found = _module_for(gm, node)
        if found is None:
            continue
        mod, x = found
        parent = module_path(node)
        path = _free_path(gm, f"{parent}.{node.name}" if parent else node.name)
        gm.add_submodule(path, mod)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, (x,))
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count
