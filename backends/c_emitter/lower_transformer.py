"""Lowerings of the transformer op family (see extensions.py for how they plug into Lowering).

INTEGER_LOWERINGS: integer op class -> fn(em: Lowering, node, mod); OP_LOWERINGS: canonical op
name of a value-preserving op on an int8 tensor -> fn(em, node, mod or None).
"""
from __future__ import annotations

INTEGER_LOWERINGS: dict = {}
OP_LOWERINGS: dict = {}
