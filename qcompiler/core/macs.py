"""Multiply-accumulates per node, from one run's values: how much of a model runs in integer."""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

_MATMULS = (torch.matmul, torch.bmm, operator.matmul, F.linear)
_RECURRENT_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
#: the float-in float-out linear ops of issue 12 (core/dynamic_ops.py, core/weight_only_ops.py)
_FLOAT_IN_LINEARS = ("dynamic_linear", "weight_only_linear", "half_linear")


def node_macs(node: fx.Node, mod, values: dict) -> int:
    """MACs of one node (0 for ops that do not multiply-accumulate)."""
    out = values.get(node.name)
    if isinstance(out, (tuple, list)):
        out = out[0] if out and isinstance(out[0], torch.Tensor) else None
    if not isinstance(out, torch.Tensor):
        return 0
    weight = getattr(mod, "weight", None) if mod is not None else None
    if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) or (
            isinstance(weight, torch.Tensor) and getattr(mod, "op_name", "") in ("linear", "conv1d", "conv2d")):
        return out.numel() * math.prod(weight.shape[1:])
    if getattr(mod, "op_name", "") == "matmul" or (node.op == "call_function" and node.target in _MATMULS):
        a = values.get(node.args[0].name) if isinstance(node.args[0], fx.Node) else None
        return out.numel() * a.shape[-1] if isinstance(a, torch.Tensor) and a.dim() else 0
    if getattr(mod, "op_name", "") in _FLOAT_IN_LINEARS:
        return out.numel() * mod.in_features
    gates = next((g for cls, g in _RECURRENT_GATES.items() if isinstance(mod, cls)), 0)
    if gates:
        x = values.get(node.args[0].name) if isinstance(node.args[0], fx.Node) else None
        steps = x.shape[:-1].numel() if isinstance(x, torch.Tensor) else 0
        dirs = 2 if mod.bidirectional else 1
        per_step = sum(gates * mod.hidden_size * ((mod.input_size if layer == 0 else mod.hidden_size * dirs)
                                                  + mod.hidden_size) for layer in range(mod.num_layers))
        return steps * per_step * dirs
    return 0
