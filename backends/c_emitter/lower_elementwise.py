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
    """One qc_rt_lookup; a chain of lookups, each the only reader of the one before (``x + 3``
    then ``/ 6``), runs as ONE table: t2[t1[x]] composed here is exactly the reference's two
    steps, with one pass over memory instead of two."""
    pending = em.__dict__.setdefault("_lookup_chains", {})    # lookup node -> (its input, table so far)
    out_signed = mod.output_qparams.qtype.signed
    if node.args[0] in pending:
        x, first, what = pending.pop(node.args[0])
        table = stored_table(mod, first.output_qparams.qtype.signed, out_signed)[first.stored.long()]
        what = f"{what} then {mod.function!r}"
    else:
        x = em.value(node.args[0], node, keep_nhwc_flat=True)    # elementwise: any layout will do
        table, what = stored_table(mod, x.signed, out_signed), repr(mod.function)
    users = list(node.users)
    nxt = em.modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
    if isinstance(nxt, QLookup) and users[0].args[0] is node:
        pending[node] = (x, _Composed(mod.output_qparams, table), what)
        return
    out = em.new_tensor(x.shape, x.layout, mod.output_qparams)
    out = QTensor(out.shape, out.layout, out.zp, out.signed, out.qparams, out.buffer, x.nhwc_dims)
    em.add_step(f"{mod.source_layer or node.name}: lookup {what} {list(x.shape)} ({node.name})",
                [f"qc_rt_lookup({em.ptr(x)}, {em.ptr(out)}, {x.numel}, {em.weight(table, 'uint8_t')}, threads);"],
                reads=[x], writes=[out])
    em.values[node] = out


class _Composed:
    """The stored table of a lookup chain so far, and the qparams of what it produces."""

    def __init__(self, output_qparams, stored):
        self.output_qparams, self.stored = output_qparams, stored


INTEGER_LOWERINGS: dict = {QLookup: lower_lookup}
OP_LOWERINGS: dict = {}
