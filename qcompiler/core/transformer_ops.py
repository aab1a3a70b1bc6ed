"""Integer ops of transformer-era models: batched matmul of two activations, softmax,
LayerNorm, embedding lookup.

BUILDERS maps a canonical op name (core.op_table) to the function lower_to_integer calls
to build its integer op: builder(gm, head, in_qps, out_qp, mode, act, layer, modules).
"""
from __future__ import annotations

BUILDERS: dict = {}
