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


#: ``node.meta`` key of the value :func:`propagate_values` records
VALUE_KEY = "qc_value"


def propagate_values(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """Records every node's value for inputs of these shapes in ``node.meta[VALUE_KEY]``, what a
    code generator needs: a tensor computed from the inputs as a ``meta`` tensor (its shape and
    dtype, no data), numbers (sizes read from shapes) and values that depend on no input (quantized
    constants, which the program stores) as they are.

    It runs the INTEGER graph's own semantics once (the reference interpreter): FakeTensor
    propagation cannot, since integer ops check their data (non-finite inputs, index ranges) and
    float regions may hold any user code."""
    from .reference import run_reference     # the reference imports nothing from here; keep core acyclic

    _, values = run_reference(gm, *example_inputs, capture=True)
    from_data: set = set()      # tensors computed from input data (a size read from one is not)
    for node in gm.graph.nodes:
        value = values.get(node.name)
        if holds_tensor(value) and (node.op == "placeholder" or any(a in from_data for a in node.all_input_nodes)):
            from_data.add(node)
            value = fx.node.map_aggregate(value, _as_meta)
        node.meta[VALUE_KEY] = value


def holds_tensor(value) -> bool:
    """A tensor, or a tuple / list with one (chunk, split)."""
    if isinstance(value, (tuple, list)):
        return any(holds_tensor(v) for v in value)
    return isinstance(value, torch.Tensor)


def _as_meta(value):
    return torch.empty(value.shape, dtype=value.dtype, device="meta") if isinstance(value, torch.Tensor) else value
