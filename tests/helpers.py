"""Shared test utilities: build the QDQ and INTEGER graphs of one model side by side."""
from __future__ import annotations

import copy

import torch

import qcompiler
from qcompiler.core.pass_manager import PassContext, PassManager
from qcompiler.passes import LowerToInteger


def qdq_and_integer(model, batches, config=None, example=None):
    """(QDQ GraphModule, INTEGER GraphModule) from one calibration of ``model``."""
    pm = qcompiler.default_pipeline().remove("lower_to_integer")
    qdq = qcompiler.quantize(model, batches, config=config, pipeline=pm, progress=False,
                             example_inputs=example).graph_module
    ctx = PassContext(config=config or qcompiler.QConfig())
    integer = PassManager([LowerToInteger()]).run(copy.deepcopy(qdq), ctx).graph_module
    return qdq, integer


def output_qparams(integer_gm):
    """The qparams of the graph output's final dequantize."""
    from qcompiler.core.integer_ops import Dequantize
    out = next(n for n in integer_gm.graph.nodes if n.op == "output")
    dq = integer_gm.get_submodule(out.args[0].target)
    assert isinstance(dq, Dequantize)
    return dq.qparams


def steps_apart(a: torch.Tensor, b: torch.Tensor, scale: float) -> int:
    """How many output quantization steps apart two dequantized outputs are (an integer:
    both are multiples of ``scale``, so the ratio is rounded to drop float noise)."""
    return int(torch.round((a - b).abs() / scale).max()) if a.numel() else 0
