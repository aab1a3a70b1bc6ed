"""Lowerings of the transformer op family (see extensions.py for how they plug into Lowering).

INTEGER_LOWERINGS: integer op class -> fn(em: Lowering, node, mod); OP_LOWERINGS: canonical op
name of a value-preserving op on an int8 tensor -> fn(em, node, mod or None).

Every tensor these ops write is in torch's contiguous order ("plain"), whatever its rank;
softmax and LayerNorm read it too (4-d NHWC activations are converted on the way in,
Lowering.as_layout), matmul reads its operands as strided views of whatever bytes hold them
(a transposed key, a head split of a fused qkv: lower_shapes leaves those views unwritten).
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from qcompiler.core.transformer_ops import SOFTMAX_RECIP_BITS, QLayerNorm, QMatMul, QSoftmax

from . import lower_shapes
from .literals import c_float
from .program import RequantArrays, stored, unsupported

#: per-tensor requantization arrays the matmul kernel indexes by column within a block
MATMUL_COL_BLOCK = 256
#: columns of a packed-b panel (QC_RT_MATMUL_NR in qc_rt_transformer.h)
MATMUL_PANEL = 16


def _batch_index(batch: tuple, out_batch: tuple) -> torch.Tensor:
    """For each matrix of the broadcast batch ``out_batch`` (row-major), the index of the
    operand's own matrix (torch.matmul's broadcasting of the leading dims)."""
    own = torch.arange(math.prod(batch), dtype=torch.int32).reshape((1,) * (len(out_batch) - len(batch)) + batch)
    return own.expand(out_batch).reshape(-1).contiguous()


def reads_views(em, user: fx.Node, node: fx.Node) -> bool:
    """A matmul reads its operands as strided views in place (lower_shapes leaves them unwritten)."""
    return (user.op == "call_module" and isinstance(em.modules.get(user.target), QMatMul)
            and node in user.args[:2])


def _strided_matrices(em, node: fx.Node, user: fx.Node, shape: tuple):
    """Operand ``node`` of ``user`` read as matrices of ``shape`` ([..., rows, cols]): (base tensor,
    byte offset of each matrix, row stride, column stride). A pending view (a transpose, a head
    split) is read in place where one (row stride, column stride) pair addresses every matrix;
    otherwise it is written first."""
    view = lower_shapes.operand_view(em, node, user)
    base = view.base
    offsets = torch.as_strided(torch.arange(base.numel, dtype=torch.int64), view.sizes, view.strides, view.offset)
    offsets = offsets.reshape(shape).reshape(-1, *shape[-2:])
    rows, cols = shape[-2:]
    first = offsets[:, 0, 0]
    sr = int(offsets[0, 1, 0] - first[0]) if rows > 1 else 0
    sc = int(offsets[0, 0, 1] - first[0]) if cols > 1 else 0
    expect = first[:, None, None] + torch.arange(rows)[:, None] * sr + torch.arange(cols) * sc
    if not torch.equal(offsets, expect):        # no single pair of strides: write the view first
        t = lower_shapes.materialize(em, node, view, "plain")
        return t, torch.arange(offsets.shape[0], dtype=torch.int64) * (rows * cols), cols, 1
    return base, torch.tensor(first.tolist(), dtype=torch.int64), sr, sc


def lower_matmul(em, node, mod: QMatMul) -> None:
    a_shape, b_shape = em.shape_of(node.args[0]), em.shape_of(node.args[1])
    a_shape = (1,) + a_shape if len(a_shape) == 1 else a_shape        # torch.matmul's 1-d operands
    b_shape = b_shape + (1,) if len(b_shape) == 1 else b_shape
    m, k = a_shape[-2:]
    n = b_shape[-1]
    if b_shape[-2] != k:
        raise unsupported(node, f"matmul of {a_shape} with {b_shape}")
    a, aoff, lda, sak = _strided_matrices(em, node.args[0], node, a_shape)
    b, boff, sk, sn = _strided_matrices(em, node.args[1], node, b_shape)
    out_batch = tuple(torch.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    batch = math.prod(out_batch)
    nb = math.prod(b_shape[:-2])
    out = em.new_tensor(em.shape_of(node), "plain", mod.output_qparams)
    ai, bi = _batch_index(a_shape[:-2], out_batch), _batch_index(b_shape[:-2], out_batch)
    panels = -(-n // MATMUL_PANEL)
    bp = em.scratch(nb * panels * MATMUL_PANEL * ((k + 1) // 2) * 2 * 2)
    rq = RequantArrays.from_requant(mod.requant, min(n, MATMUL_COL_BLOCK), out.signed)
    lines = [f"qc_rt_matmul_pack_b({em.ptr(b)}, {em.weight(boff, 'int64_t')}, (int16_t *)QC_BUF({bp.ident}), {nb}, "
             f"{k}, {n}, {sk}, {sn}, {b.zp}, threads);",
             f"qc_rt_matmul({em.ptr(a)}, {em.weight(aoff[ai.long()], 'int64_t')}, {lda}, {sak}, "
             f"(const int16_t *)QC_BUF({bp.ident}), {em.weight(bi, 'int32_t')}, {em.ptr(out)}, {batch}, {m}, {k}, "
             f"{n}, {a.zp}, {em.rq_literal(rq)}, threads);"]
    em.add_step(f"{mod.source_layer or node.name}: matmul {list(a_shape)} @ {list(b_shape)} ({node.name})", lines,
                reads=[a, b, bp], writes=[bp, out])
    em.values[node] = out


def lower_softmax(em, node, mod: QSoftmax) -> None:
    x = em.as_layout(em.value(node.args[0], node), "plain")
    shape = x.shape
    dim = mod.dim % max(len(shape), 1)
    outer, length, inner = math.prod(shape[:dim]), (shape[dim] if shape else 1), math.prod(shape[dim + 1:])
    out = em.new_tensor(shape, "plain", mod.output_qparams)
    lut = torch.zeros(256, dtype=torch.int64)       # the kernel may read every stored d in [0, 255]
    lut[:mod.lut.numel()] = mod.lut
    zo = stored(mod.output_qparams.zero_point_int(), out.signed)
    qmin, qmax = stored(mod.qmin, out.signed), stored(mod.qmax, out.signed)
    em.add_step(f"{mod.source_layer or node.name}: softmax over dim {dim} of {list(shape)} ({node.name})",
                [f"qc_rt_softmax({em.ptr(x)}, {em.ptr(out)}, {outer}, {length}, {inner}, "
                 f"{em.weight(lut, 'int64_t')}, INT64_C({mod.out_mult}), {mod.out_shift + SOFTMAX_RECIP_BITS}, {zo}, "
                 f"{qmin}, {qmax}, threads);"],
                reads=[x], writes=[out])
    em.values[node] = out


def lower_layer_norm(em, node, mod: QLayerNorm) -> None:
    x = em.as_layout(em.value(node.args[0], node), "plain")
    n = mod.gain.numel()
    out = em.new_tensor(x.shape, "plain", mod.output_qparams)
    zo = stored(mod.output_qparams.zero_point_int(), out.signed)
    qmin, qmax = stored(mod.qmin, out.signed), stored(mod.qmax, out.signed)
    em.add_step(f"{mod.source_layer or node.name}: layer_norm over {list(mod.normalized_shape)} of {list(x.shape)} "
                f"({node.name})",
                [f"qc_rt_layer_norm({em.ptr(x)}, {em.ptr(out)}, {x.numel // n}, {n}, {x.zp}, "
                 f"{c_float(float(mod.eps_q))}, {em.weight(mod.gain, 'float')}, {em.weight(mod.offset, 'float')}, "
                 f"{zo}, {qmin}, {qmax}, threads);"], reads=[x], writes=[out])
    em.values[node] = out


INTEGER_LOWERINGS: dict = {QMatMul: lower_matmul, QSoftmax: lower_softmax, QLayerNorm: lower_layer_norm}
OP_LOWERINGS: dict = {}
lower_shapes.VIEW_READERS.append(reads_views)
