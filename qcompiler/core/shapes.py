"""Shape propagation: an fx Interpreter that records, per node, whether it yields a tensor
and which shape (the analysis pattern of torch.fx's ShapeProp, written into typed metadata)."""
from __future__ import annotations

import torch
import torch.fx as fx

from .meta import node_info


class _ShapeRecorder(fx.Interpreter):
    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        info = node_info(n)
        info.is_tensor = isinstance(out, torch.Tensor)
        info.shape = tuple(out.shape) if info.is_tensor else None
        info.dtype = out.dtype if info.is_tensor else None
        return out


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    with torch.no_grad():
        _ShapeRecorder(gm).run(*example_inputs)
