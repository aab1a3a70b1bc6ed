"""The op families lowered outside lowering.py, one module each, merged for Lowering's dispatch."""
from __future__ import annotations

from . import lower_elementwise, lower_embedding, lower_gemm_ops, lower_shapes, lower_transformer
from . import lower_reduce
from . import lower_weight_only
from . import lower_dynamic

_FAMILIES = (lower_gemm_ops, lower_elementwise, lower_shapes, lower_transformer, lower_embedding)
_FAMILIES += (lower_reduce,)
_FAMILIES += (lower_weight_only,)
_FAMILIES += (lower_dynamic,)

#: integer op class -> fn(em, node, mod)
INTEGER_LOWERINGS = {k: v for fam in _FAMILIES for k, v in fam.INTEGER_LOWERINGS.items()}
#: canonical op name (core.op_table) of a node on int8 values -> fn(em, node, mod or None)
OP_LOWERINGS = {k: v for fam in _FAMILIES for k, v in fam.OP_LOWERINGS.items()}
