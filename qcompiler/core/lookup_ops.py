"""Elementwise activations on int8 as 256-entry lookup tables (QLookup).

A function of one quantized value takes one of at most 256 inputs, so it is exactly a table:
``table[q - qmin] = quantize(f(dequantize(q, in)), out)`` for every q of the input type,
computed once when lowering, in float32 with the float op itself (core/quantize.py for the
rest). The table IS the op's definition, so every backend that indexes it is exact by
construction; how close it is to float is only the two roundings (docs/numerics.md).

BUILDERS maps a canonical op name (core.op_table.LOOKUP_OPS) to the function lower_to_integer
calls to build its integer op: builder(gm, head, in_qps, out_qp, mode, act, layer, modules).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx

from .integer_ops import IntegerOp, activation_clamp
from .meta import FusedActivation
from .op_table import LOOKUP_OPS, lookup_operand
from .qtypes import QParams
from .quantize import dequantize, quantize


class UndefinedLookupError(ValueError):
    """The function has no finite value somewhere on the input grid (the op stays in float)."""


class FloatFunction:
    """The float op of one graph node as a function of its one tensor operand: the module
    itself, or the node's function / method called with the other arguments as traced.

    Calling exactly what the model called (not a re-implementation) keeps every spelling and
    keyword (``approximate='tanh'``, ``negative_slope``, ``alpha``, ``rounding_mode``…) right.
    A plain object, not a module, so the float module does not become a submodule of the op.
    """

    def __init__(self, kind: str, target: Any, args: tuple, kwargs: dict, slot: Any, label: str):
        self.kind, self.target, self.args, self.kwargs, self.slot, self.label = kind, target, args, kwargs, slot, label

    @classmethod
    def of_node(cls, node: fx.Node, modules: dict) -> "FloatFunction":
        x = lookup_operand(node)
        if x is None:
            raise ValueError(f"{node.name}: not a function of one tensor")
        if node.op == "call_module":
            mod = modules[node.target]
            return cls("module", mod, (), {}, 0, type(mod).__name__)
        slot = next((i for i, a in enumerate(node.args) if a is x), None)
        if slot is None:
            slot = next(k for k, v in node.kwargs.items() if v is x)
        label = node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
        return cls(node.op, node.target, tuple(node.args), dict(node.kwargs), slot, str(label))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "module":
            return self.target(x)
        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(self.slot, int):
            args[self.slot] = x
        else:
            kwargs[self.slot] = x
        if self.kind == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)

    def __repr__(self) -> str:
        if self.kind == "module":
            return repr(self.target)
        shown = ["x" if i == self.slot else repr(a) for i, a in enumerate(self.args)]
        shown += [f"{k}={'x' if k == self.slot else repr(v)}" for k, v in self.kwargs.items()]
        return f"{self.label}({', '.join(shown)})"


def lookup_table(fn, inp: QParams, out: QParams, act: Optional[FusedActivation] = None) -> torch.Tensor:
    """``table[q - qmin] = clamp(quantize(f(dequantize(q))), lo, hi)`` for q in [qmin, qmax] of the
    input type, in the output type's storage dtype. ``lo, hi`` narrow the output type by a fused
    activation (exact: quantization is monotone)."""
    if inp.per_channel or out.per_channel:
        raise ValueError("lookup tables need per-tensor quantization parameters")
    q = torch.arange(inp.qtype.qmin, inp.qtype.qmax + 1, dtype=torch.int64)
    with torch.no_grad():
        y = fn(dequantize(q, inp))
    y = torch.as_tensor(y).to(torch.float32)
    if y.shape != q.shape:
        raise ValueError(f"{fn!r} is not elementwise: {tuple(q.shape)} values in, {tuple(y.shape)} out")
    if bool(torch.isnan(y).any()):
        bad = dequantize(q, inp)[torch.isnan(y)][:3].tolist()
        raise UndefinedLookupError(f"{fn!r} is not a number at input values {bad}")
    lo, hi = activation_clamp(out, act)
    return torch.clamp(quantize(y, out).to(torch.int64), lo, hi).to(out.qtype.storage)


class QLookup(IntegerOp):
    """y = table[x - qmin]: any elementwise function of one int8/uint8 tensor (see module doc)."""

    op_name = "lookup"

    def __init__(self, function, inp: QParams, out: QParams, act: Optional[FusedActivation] = None,
                 source_layer: str = ""):
        super().__init__([inp], out, source_layer)
        self.function = function
        self.register_buffer("table", lookup_table(function, inp, out, act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.to(torch.int64) - self.input_qparams[0].qtype.qmin]

    def _float_op(self, x):
        return self.function(x)

    def extra_repr(self) -> str:
        return f"{self.source_layer}: {self.function!r}, {self.input_qparams[0]} -> {self.output_qparams}"


def build_lookup(gm, head: fx.Node, in_qps, out_qp, mode, act, layer, modules) -> QLookup:
    """Every lookup op builds alike: the table does not depend on the requantization mode."""
    return QLookup(FloatFunction.of_node(head, modules), in_qps[0], out_qp, act, layer)


BUILDERS: dict = {op: build_lookup for op in LOOKUP_OPS}
