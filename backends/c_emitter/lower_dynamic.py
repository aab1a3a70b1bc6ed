"""Lowering of dynamic int8 linear layers (QDynamicLinear, core/dynamic_ops.py; see extensions.py
for how families plug into Lowering).

Float in, float out: x (a float input of the program, read in place, or a float value computed
in it) is read as [M, K] with the leading dims flattened, y [M, N] is a float32 value of the
program. The target's GemmLowering emits the call (``emit_dynamic_linear``: measure the range,
quantize, the exact int32 GEMM, the float epilogue); a target without one refuses the node, which
then runs in PyTorch.
"""
from __future__ import annotations

from qcompiler.core.dynamic_ops import QDynamicLinear

from .program import unsupported


def lower_dynamic_linear(em, node, mod: QDynamicLinear) -> None:
    n, k = mod.weight.shape
    if n == 0:
        raise unsupported(node, "a dynamic linear layer without outputs")
    x, m = em.float_rows(node, k)
    y = em.new_float_value(node)
    lines, scratch = em.gemm.emit_dynamic_linear(
        em, x=em.fptr(x), m=m, y=em.fptr(y), weight=mod.weight, weight_scales=mod.weight_scales, bias=mod.bias,
        per_token=mod.per_token, symmetric=mod.symmetric)
    rows = "per token" if mod.per_token else "per tensor"
    kind = "int8 symmetric" if mod.symmetric else "uint8 asymmetric"
    em.add_step(f"{mod.source_layer or node.name}: dynamic linear {k}->{n}, M={m}, {kind} {rows} ({node.name})",
                lines, reads=[x, *scratch], writes=[y])
    em.float_values[node] = y


INTEGER_LOWERINGS = {QDynamicLinear: lower_dynamic_linear}
OP_LOWERINGS: dict = {}
