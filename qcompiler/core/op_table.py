"""What each float op is, for quantization: one table every pass consults.

``canonical_op(node, modules)`` names the op a node computes whatever its spelling
(``nn.ReLU`` module, ``F.relu``, ``torch.relu``, ``x.relu()``). The kinds:

- COMPUTE ops get their own output quantization parameters and an integer kernel;
- SHARED ops do not change values (max-pool, reshape, relu on a quantized tensor…), so
  they run on the int8 tensor and keep its parameters;
- everything else stays in float, between dequantize and quantize.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

_MODULE_OPS = {
    nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear",
    nn.BatchNorm1d: "batch_norm", nn.BatchNorm2d: "batch_norm",
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh",
    nn.MaxPool2d: "max_pool2d", nn.AvgPool2d: "avg_pool2d",
    nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d", nn.Flatten: "flatten",
    nn.Dropout: "dropout", nn.Identity: "identity",
}

_FUNCTION_OPS = {
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    operator.mul: "mul", torch.mul: "mul",
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardtanh: "hardtanh",
    torch.clamp: "clamp", torch.clip: "clamp",
    F.max_pool2d: "max_pool2d", F.avg_pool2d: "avg_pool2d",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d",
    torch.flatten: "flatten", torch.reshape: "reshape", torch.cat: "cat", torch.concat: "cat",
    F.dropout: "dropout", torch.permute: "permute", torch.transpose: "transpose",
    torch.squeeze: "squeeze", torch.unsqueeze: "unsqueeze", torch.unflatten: "unflatten",
    F.batch_norm: "batch_norm", F.conv1d: "conv1d_functional",
    F.conv2d: "conv2d_functional", F.linear: "linear_functional",
}

_METHOD_OPS = {
    "add": "add", "mul": "mul", "relu": "relu", "clamp": "clamp", "clip": "clamp",
    "flatten": "flatten", "reshape": "reshape", "view": "reshape", "permute": "permute",
    "transpose": "transpose", "squeeze": "squeeze", "unsqueeze": "unsqueeze",
    "contiguous": "identity", "unflatten": "unflatten",
}

# Elementwise functions of one tensor (core.lookup_ops: a 256-entry table on int8)
_LOOKUP_MODULES = {
    nn.Hardswish: "hardswish", nn.SiLU: "silu", nn.GELU: "gelu", nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu", nn.CELU: "celu", nn.SELU: "selu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
    nn.Hardsigmoid: "hardsigmoid", nn.Mish: "mish", nn.Softplus: "softplus",
    nn.LogSigmoid: "logsigmoid", nn.Softsign: "softsign", nn.Hardshrink: "hardshrink",
    nn.Softshrink: "softshrink", nn.Tanhshrink: "tanhshrink",
}
_LOOKUP_FUNCTIONS = {
    F.hardswish: "hardswish", F.silu: "silu", F.gelu: "gelu", F.leaky_relu: "leaky_relu",
    F.elu: "elu", F.celu: "celu", torch.celu: "celu", F.selu: "selu", torch.selu: "selu",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.special.expit: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.hardsigmoid: "hardsigmoid", F.mish: "mish",
    F.softplus: "softplus", F.logsigmoid: "logsigmoid", F.softsign: "softsign",
    F.hardshrink: "hardshrink", F.softshrink: "softshrink", F.tanhshrink: "tanhshrink",
    torch.abs: "abs", operator.abs: "abs", torch.clamp_min: "clamp_min", torch.clamp_max: "clamp_max",
    # arithmetic: a lookup only with a number as the other operand (canonical_op: scalar_*)
    operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", torch.rsub: "sub",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div", torch.true_divide: "div",
    operator.imul: "mul", operator.neg: "neg", torch.neg: "neg",
}
_LOOKUP_METHODS = {
    "sigmoid": "sigmoid", "tanh": "tanh", "abs": "abs", "neg": "neg", "clamp_min": "clamp_min",
    "clamp_max": "clamp_max", "sub": "sub", "div": "div", "true_divide": "div",
}
_MODULE_OPS.update(_LOOKUP_MODULES)
_FUNCTION_OPS.update(_LOOKUP_FUNCTIONS)
_METHOD_OPS.update(_LOOKUP_METHODS)
#: arithmetic with a number operand: a function of the one tensor operand
_SCALAR_FORMS = {"add": "scalar_add", "sub": "scalar_sub", "mul": "scalar_mul", "div": "scalar_div"}
#: elementwise functions of one int8 tensor, run as a 256-entry table (core.lookup_ops); relu6,
#: hardtanh and clamp only where not fused into the clamp of the op before them
LOOKUP_OPS = frozenset({*_LOOKUP_MODULES.values(), *_LOOKUP_FUNCTIONS.values(), *_SCALAR_FORMS.values(),
                        "relu6", "hardtanh", "clamp", "clamp_min", "clamp_max", "neg"}
                       - {"sub", "div", "mul"})

#: ops with an integer kernel and their own output qparams
COMPUTE_OPS = frozenset({"conv1d", "conv2d", "linear", "add", "mul", "avg_pool2d",
                         "adaptive_avg_pool2d", "cat"}) | LOOKUP_OPS
#: value-preserving ops that run on the quantized tensor with its qparams
SHARED_OPS = frozenset({"max_pool2d", "flatten", "unflatten", "reshape", "permute", "transpose",
                        "squeeze", "unsqueeze", "dropout", "identity", "relu"})
#: activations that fold into the clamp of the op before them
FUSABLE_ACTIVATIONS = frozenset({"relu", "relu6", "hardtanh", "clamp"})
#: ops with weights (a weight observer and per-channel parameters along axis 0)
WEIGHTED_OPS = frozenset({"conv1d", "conv2d", "linear"})

# the transformer family (integer ops in core/transformer_ops.py)
_MODULE_OPS.update({nn.Softmax: "softmax", nn.LayerNorm: "layer_norm"})
_FUNCTION_OPS.update({torch.matmul: "matmul", torch.bmm: "matmul", operator.matmul: "matmul",
                      F.softmax: "softmax", torch.softmax: "softmax", F.layer_norm: "layer_norm"})
_METHOD_OPS.update({"matmul": "matmul", "bmm": "matmul", "softmax": "softmax"})
COMPUTE_OPS = COMPUTE_OPS | {"matmul", "softmax", "layer_norm"}

# reductions (core/reduce_ops.py): the mean over any dims of an activation
_FUNCTION_OPS.update({torch.mean: "mean"})
_METHOD_OPS.update({"mean": "mean"})
COMPUTE_OPS = COMPUTE_OPS | {"mean"}

# embedding lookups (core/embedding_ops.py): int64 indices in, rows of an int8 table out
_MODULE_OPS.update({nn.Embedding: "embedding"})
COMPUTE_OPS = COMPUTE_OPS | {"embedding"}
#: compute ops whose first argument is an integer index tensor, passed to the integer op as it
#: is (not observed, not quantized)
INDEX_OPS = frozenset({"embedding"})

# the shapes family: value-preserving views and copies (backends/c_emitter/lower_shapes.py)
_FUNCTION_OPS.update({
    torch.t: "transpose", torch.swapaxes: "transpose", torch.swapdims: "transpose", torch.movedim: "permute",
    torch.moveaxis: "permute", torch.chunk: "chunk", torch.split: "split", torch.tensor_split: "tensor_split",
    torch.unbind: "unbind", torch.narrow: "narrow", torch.select: "select", operator.getitem: "getitem",
})
_METHOD_OPS.update({
    "t": "transpose", "swapaxes": "transpose", "swapdims": "transpose", "movedim": "permute",
    "moveaxis": "permute", "chunk": "chunk", "split": "split", "tensor_split": "tensor_split",
    "unbind": "unbind", "narrow": "narrow", "select": "select", "expand": "expand", "repeat": "repeat",
})
#: ``x.mT`` / ``x.T`` (fx records an attribute read as getattr(x, name))
_VIEW_ATTRIBUTES = {"mT": "transpose", "T": "permute"}
#: shared ops that return a tuple of tensors (each taken by operator.getitem)
TUPLE_OPS = frozenset({"chunk", "split", "tensor_split", "unbind"})
SHARED_OPS = SHARED_OPS | TUPLE_OPS | {"narrow", "select", "getitem", "expand", "repeat"}


def _is_eval_stochastic_depth(node: fx.Node) -> bool:
    """torchvision.ops.stochastic_depth(x, p, mode, training=False) (EfficientNet, ConvNeXt):
    the identity at inference, like dropout (matched by name: the op table does not import
    torchvision)."""
    fn = node.target
    if getattr(fn, "__name__", "") != "stochastic_depth" or \
            not getattr(fn, "__module__", "").startswith("torchvision.ops"):
        return False
    training = node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True)
    return training is False


def canonical_op(node: fx.Node, modules: dict) -> Optional[str]:
    if node.op == "call_module":
        mod = modules.get(node.target)
        for cls, name in _MODULE_OPS.items():
            if type(mod) is cls:
                return name
        return None
    if node.op == "call_function":
        if node.target is getattr and len(node.args) == 2:
            return _VIEW_ATTRIBUTES.get(node.args[1])
        if _is_eval_stochastic_depth(node):
            return "dropout"
        return _scalar_form(node, _FUNCTION_OPS.get(node.target))
    if node.op == "call_method":
        return _scalar_form(node, _METHOD_OPS.get(node.target))
    return None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scalar_form(node: fx.Node, op: Optional[str]) -> Optional[str]:
    """``x + 3``, ``3 - x``, ``x / 6``…: arithmetic with a number is a function of one tensor."""
    if op in _SCALAR_FORMS and len(node.args) == 2 and sum(isinstance(a, fx.Node) for a in node.args) == 1 \
            and any(_is_number(a) for a in node.args):
        return _SCALAR_FORMS[op]
    return op


def lookup_operand(node: fx.Node) -> Optional[fx.Node]:
    """The one tensor a lookup op is a function of, or None when any other argument is a
    graph value too (``clamp(x, lo_tensor)``): then it is not a function of one tensor."""
    nodes = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    nested = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, (tuple, list, dict, slice))]
    return nodes[0] if len(nodes) == 1 and not nested else None


#: ops whose quantized activation inputs are not just their first argument
_BINARY_OPS = frozenset({"add", "mul", "matmul"})


def tensor_inputs(node: fx.Node, op: str) -> list:
    """The activation inputs of a compute op, in argument order (what gets observed and
    what the integer op reads)."""
    if op == "cat":
        return list(node.args[0]) if node.args else list(node.kwargs.get("tensors", ()))
    if op in INDEX_OPS:
        return []
    if op in _BINARY_OPS:
        return list(node.args[:2])
    if op in LOOKUP_OPS and lookup_operand(node) is not None:
        return [lookup_operand(node)]           # ``3 - x``: the tensor is not the first argument
    return [node.args[0]]


def is_tensor_binary(node: fx.Node) -> bool:
    """add/mul of two tensors (not tensor-and-scalar), the form with an integer kernel."""
    args = [a for a in node.args[:2]]
    return len(args) == 2 and all(isinstance(a, fx.Node) for a in args) and not node.kwargs


def activation_bounds(node: fx.Node, modules: dict, op: str) -> Optional[tuple]:
    """(min, max) of a fusable activation, or None if its arguments are not constants."""
    if op == "relu":
        return (0.0, None)
    if op == "relu6":
        return (0.0, 6.0)
    if op == "hardtanh":
        if node.op == "call_module":
            m = modules[node.target]
            return (float(m.min_val), float(m.max_val))
        lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
        hi = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
    else:  # clamp
        lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
        hi = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
    if any(isinstance(v, fx.Node) for v in (lo, hi)):
        return None
    return (None if lo is None else float(lo), None if hi is None else float(hi))


def produces_tensor(node: fx.Node) -> bool:
    """Whether a node's value is a tensor (not x.size(0) or shape arithmetic).

    Uses the shapes recorded by ``core.shapes.propagate_shapes`` when present.
    """
    from .meta import has_node_info, node_info  # local: meta is tiny, avoids a cycle at import
    if has_node_info(node) and node_info(node).is_tensor is not None:
        return node_info(node).is_tensor
    if node.op in ("output", "get_attr"):
        return node.op == "get_attr"
    if node.op == "call_method" and node.target in ("size", "dim", "numel"):
        return False
    if node.op == "call_function" and node.target is getattr:
        return False
    inputs = [a for a in node.all_input_nodes]
    if node.op == "call_function" and node.target in (operator.getitem, operator.floordiv, operator.add,
                                                      operator.mul, operator.sub):
        return any(produces_tensor(a) for a in inputs)
    return True
