"""Lowerings of the elementwise op family (see extensions.py for how they plug into Lowering).

INTEGER_LOWERINGS: integer op class -> fn(em: Lowering, node, mod); OP_LOWERINGS: canonical op
name of a value-preserving op on an int8 tensor -> fn(em, node, mod or None).
"""
from __future__ import annotations

import torch

from qcompiler.core.lookup_ops import QLookup

from .program import QTensor, stored


def stored_table(mod: QLookup, in_signed: bool, out_signed: bool) -> torch.Tensor:
    """The reference table re-indexed by the stored input byte, holding stored output bytes:
    int8 is stored as q + 128, so both shifts fold into the table (qc_rt_lookup's contract)."""
    qmin = mod.input_qparams[0].qtype.qmin
    table = torch.zeros(256, dtype=torch.uint8)
    for byte in range(256):
        q = byte - 128 if in_signed else byte            # the reference integer this byte stores
        if mod.input_qparams[0].qtype.qmin <= q <= mod.input_qparams[0].qtype.qmax:
            table[byte] = stored(int(mod.table[q - qmin]), out_signed)
    return table


def lower_lookup(em, node, mod: QLookup) -> None:
    x = em.value(node.args[0], node, keep_nhwc_flat=True)    # elementwise: any layout will do
    out = em.new_tensor(x.shape, x.layout, mod.output_qparams)
    out = QTensor(out.shape, out.layout, out.zp, out.signed, out.qparams, out.buffer, x.nhwc_dims)
    table = em.weight(stored_table(mod, x.signed, out.signed), "uint8_t")
    em.add_step(f"{mod.source_layer or node.name}: lookup {mod.function!r} {list(x.shape)} ({node.name})",
                [f"qc_rt_lookup({em.ptr(x)}, {em.ptr(out)}, {x.numel}, {table}, threads);"],
                reads=[x], writes=[out])
    em.values[node] = out


INTEGER_LOWERINGS: dict = {QLookup: lower_lookup}
OP_LOWERINGS: dict = {}
