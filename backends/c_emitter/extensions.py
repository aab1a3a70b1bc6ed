"""The op families lowered outside lowering.py, one module each, merged for Lowering's dispatch."""
from __future__ import annotations

from . import (lower_dynamic, lower_elementwise, lower_embedding, lower_gemm_ops, lower_reduce, lower_shapes,
               lower_transformer, lower_weight_only)

_FAMILIES = (lower_gemm_ops, lower_elementwise, lower_shapes, lower_transformer, lower_embedding, lower_reduce,
             lower_weight_only, lower_dynamic)

#: integer op class -> fn(em, node, mod)
INTEGER_LOWERINGS = {k: v for fam in _FAMILIES for k, v in fam.INTEGER_LOWERINGS.items()}
#: canonical op name (core.op_table) of a node on int8 values -> fn(em, node, mod or None)
OP_LOWERINGS = {k: v for fam in _FAMILIES for k, v in fam.OP_LOWERINGS.items()}
