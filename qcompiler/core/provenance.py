"""Where a graph node came from, in the user's words: the module path and the op.

Errors and reports name ``features.3.block.2 (mul)``, never an internal node like
``%dq_conv2d``: the module path is the innermost module the tracer was in (fx records it as
``nn_module_stack``), kept on ``NodeInfo.source_layer`` by fuse_patterns so that nodes later
passes create inherit it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from .meta import has_node_info, node_info


def module_path(node: fx.Node) -> str:
    """The innermost user module a traced node belongs to ("" at the top level)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys()), "") if stack else ""


def layer_name(node: fx.Node) -> str:
    """A path-like name for per-layer configs and reports: a module's path, or for a function
    call its module's path and the node (``features.3.block.2.mul``), so that an override of
    the module covers its functional ops too."""
    path = module_path(node)
    if node.op == "call_module" or not path:
        return path or node.name
    return f"{path}.{node.name}"


def op_name(node: fx.Node, modules: Optional[dict] = None) -> str:
    """What the node computes: an integer op's name, a module's class, a function's name."""
    if node.op == "call_module":
        mod = (modules or {}).get(node.target)
        if mod is None:
            return str(node.target)
        return getattr(mod, "op_name", "") or type(mod).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def user_label(node: fx.Node, modules: Optional[dict] = None, shape=None) -> str:
    """``layer (op)``, with the value's shape when known: what a user can act on."""
    layer = node_info(node).source_layer if has_node_info(node) and node_info(node).source_layer else None
    label = f"{layer or layer_name(node)} ({op_name(node, modules)})"
    if shape is None and has_node_info(node) and node_info(node).shape is not None:
        shape = node_info(node).shape
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    return label + (f" of shape {tuple(shape)}" if shape else "")
