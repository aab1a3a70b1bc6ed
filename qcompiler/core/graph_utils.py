"""Small fx helpers shared by passes: module paths, fresh attribute names."""
from __future__ import annotations

import re

import torch
import torch.fx as fx


def set_module(gm: fx.GraphModule, path: str, module: torch.nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    setattr(parent, name, module)


def fresh_name(gm: fx.GraphModule, base: str) -> str:
    """An attribute name on ``gm`` not taken yet, derived from ``base``."""
    base = re.sub(r"[^0-9a-zA-Z_]", "_", base)
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def add_module(gm: fx.GraphModule, base: str, module: torch.nn.Module) -> str:
    name = fresh_name(gm, base)
    gm.add_submodule(name, module)
    return name


def get_constant(gm: fx.GraphModule, node) -> torch.Tensor:
    """The tensor a get_attr node refers to."""
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def reads_shape(node: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.size(d)``, ``x.dim()``: only the shape of a tensor."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) == 2 and node.args[1] in ("shape", "ndim")
    return node.op == "call_method" and node.target in ("size", "dim") and \
        all(not isinstance(a, fx.Node) for a in node.args[1:])


def shape_only(node: fx.Node) -> bool:
    """A value read only for its shape (BERT's ``input_ids.shape[1]``): in a program compiled
    for fixed shapes it is no input at all."""
    return bool(node.users) and all(reads_shape(u) for u in node.users)


def finalize(gm: fx.GraphModule) -> fx.GraphModule:
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
