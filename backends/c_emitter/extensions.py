"""The op families lowered outside lowering.py, one module each, merged for Lowering's dispatch."""
from __future__ import annotations

from . import lower_elementwise, lower_shapes, lower_transformer

_FAMILIES = (lower_elementwise, lower_shapes, lower_transformer)

#: integer op class -> fn(em, node, mod)
INTEGER_LOWERINGS = {k: v for fam in _FAMILIES for k, v in fam.INTEGER_LOWERINGS.items()}
#: canonical op name (core.op_table) of a node on int8 values -> fn(em, node, mod or None)
OP_LOWERINGS = {k: v for fam in _FAMILIES for k, v in fam.OP_LOWERINGS.items()}
