"""Elementwise activations on int8 as 256-entry lookup tables (QLookup).

BUILDERS maps a canonical op name (core.op_table) to the function lower_to_integer calls
to build its integer op: builder(gm, head, in_qps, out_qp, mode, act, layer, modules).
"""
from __future__ import annotations

BUILDERS: dict = {}
