"""Lowering of weight-only and half-precision ops (core/weight_only_ops.py): float32 in, float32 out.

- ``weight_only_linear`` / ``half_linear``: the kernels are the target's (its :class:`GemmLowering`'s
  ``emit_weight_only_linear`` / ``emit_half_linear``; a target without them refuses the node, which
  then runs in PyTorch). Their float32 sums run in the kernel's own order: they are checked
  against the reference within a rounding bound, not bit for bit.
- ``weight_only_embedding``: a portable dequantizing gather in the shared runtime
  (``qc_rt_wo_embedding``), exact: the rows of ŵ are computed as the reference computes them.
  Its indices are a model input read in place, as for ``embedding`` (lower_embedding.py).
"""
from __future__ import annotations

from qcompiler.core.weight_only_ops import (NF4_LEVELS, QHalfLinear, QuantizedWeight, QWeightOnlyEmbedding,
                                            QWeightOnlyLinear)

from .lower_embedding import ERR_INDEX
from .program import unsupported

#: the runtime's weight formats (c_runtime/qc_rt_weight_only.h, QC_WO_*) by (dtype, symmetric)
WO_FORMATS = {("int8", True): 1, ("int4", True): 2, ("int4", False): 3, ("nf4", True): 4}


def wo_format(qw: QuantizedWeight) -> int:
    return WO_FORMATS[(qw.dtype, qw.symmetric)]


def lower_weight_only_linear(em, node, mod: QWeightOnlyLinear) -> None:
    x, m = em.float_rows(node, mod.in_features)
    out = em.new_float_value(node)
    qw = mod.qweight
    lines, scratch = em.gemm.emit_weight_only_linear(em, x=em.fptr(x), m=m, y=em.fptr(out), qweight=qw,
                                                     bias=mod.bias, compute=mod.compute)
    em.add_step(f"{mod.source_layer or node.name}: weight-only linear {m}x{mod.in_features} -> "
                f"{mod.out_features}, {qw.describe()}, compute {mod.compute} ({node.name})",
                lines, reads=[x, *scratch], writes=[out])
    em.float_values[node] = out


def lower_half_linear(em, node, mod: QHalfLinear) -> None:
    n, k = mod.weight.shape
    x, m = em.float_rows(node, k)
    out = em.new_float_value(node)
    lines, scratch = em.gemm.emit_half_linear(em, x=em.fptr(x), m=m, y=em.fptr(out), weight=mod.weight,
                                              bias=mod.bias)
    dtype = str(mod.half_dtype).replace("torch.", "")
    em.add_step(f"{mod.source_layer or node.name}: half linear {m}x{k} -> {n}, {dtype} ({node.name})",
                lines, reads=[x, *scratch], writes=[out])
    em.float_values[node] = out


def lower_weight_only_embedding(em, node, mod: QWeightOnlyEmbedding) -> None:
    ids = node.args[0]
    if ids not in em.index_inputs:
        raise unsupported(node, "indices computed inside the graph (only a model input of token ids is read in place)")
    qw = mod.qweight
    rows, dim = int(qw.codes.shape[0]), qw.k
    out = em.new_float_value(node)
    zps = "NULL" if qw.zero_points is None else em.weight(qw.zero_points.contiguous(), "uint8_t")
    nf4 = em.weight(NF4_LEVELS, "float") if qw.dtype == "nf4" else "NULL"
    em.add_step(f"{mod.source_layer or node.name}: weight-only embedding {rows}x{dim}, {qw.describe()} ({node.name})",
                [f"rc = qc_rt_wo_embedding((const int64_t *)inputs[{em.index_inputs[ids]}], {out.numel // dim}, "
                 f"{wo_format(qw)}, {em.weight(qw.codes.contiguous(), 'uint8_t')}, "
                 f"{em.weight(qw.scales.contiguous(), 'float')}, {zps}, {nf4}, {rows}, {dim}, {qw.group_size}, "
                 f"{em.fptr(out)}, threads);",
                 f"if (rc < 0) return {ERR_INDEX};",
                 "if (rc) return rc;"], writes=[out])
    em.float_values[node] = out


INTEGER_LOWERINGS = {QWeightOnlyLinear: lower_weight_only_linear, QHalfLinear: lower_half_linear,
                     QWeightOnlyEmbedding: lower_weight_only_embedding}
OP_LOWERINGS: dict = {}
