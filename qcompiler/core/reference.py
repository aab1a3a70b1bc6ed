"""The reference interpreter: runs an INTEGER graph with the ops' own bit-exact semantics.

It is the numeric specification every backend must meet. Before each integer op it
checks that its inputs have the integer dtype the op's qparams promise, so a malformed
graph fails at the node that is wrong rather than producing numbers.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from .integer_ops import Dequantize, IntegerOp


class ReferenceInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, capture: bool = False):
        super().__init__(gm)
        self.capture = capture
        self.values: dict[str, Any] = {}

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        expected = None
        if isinstance(mod, IntegerOp):
            expected = [qp.qtype.storage for qp in mod.input_qparams]
        elif isinstance(mod, Dequantize):
            expected = [mod.qparams.qtype.storage]
        if expected is not None:
            for i, (x, dtype) in enumerate(zip(args, expected)):
                if isinstance(x, torch.Tensor) and x.dtype != dtype:
                    raise TypeError(f"integer op {target}: input {i} is {x.dtype}, expected {dtype}")
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if self.capture:
            self.values[n.name] = out
        return out


def run_reference(gm: fx.GraphModule, *inputs, capture: bool = False):
    """Run ``gm`` on ``inputs``; with ``capture`` also return every node's value by name."""
    interp = ReferenceInterpreter(gm, capture)
    with torch.no_grad():
        out = interp.run(*inputs)
    return (out, interp.values) if capture else out
