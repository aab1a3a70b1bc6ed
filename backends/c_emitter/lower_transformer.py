"""Lowerings of the transformer op family (see extensions.py for how they plug into Lowering).

INTEGER_LOWERINGS: integer op class -> fn(em: Lowering, node, mod); OP_LOWERINGS: canonical op
name of a value-preserving op on an int8 tensor -> fn(em, node, mod or None).

Every tensor these ops read or write is in torch's contiguous order ("plain"), whatever its
rank: 4-d NHWC activations are converted on the way in (Lowering.as_layout).
"""
from __future__ import annotations

import math

import torch

from qcompiler.core.transformer_ops import QLayerNorm, QMatMul, QSoftmax

from .literals import c_float
from .program import RequantArrays, stored, unsupported

#: per-tensor requantization arrays the matmul kernel indexes by column within a block
MATMUL_COL_BLOCK = 256


def _batch_index(batch: tuple, out_batch: tuple) -> torch.Tensor:
    """For each matrix of the broadcast batch ``out_batch`` (row-major), the index of the
    operand's own matrix (torch.matmul's broadcasting of the leading dims)."""
    own = torch.arange(math.prod(batch), dtype=torch.int32).reshape((1,) * (len(out_batch) - len(batch)) + batch)
    return own.expand(out_batch).reshape(-1).contiguous()


def lower_matmul(em, node, mod: QMatMul) -> None:
    a = em.as_layout(em.value(node.args[0], node), "plain")
    b = em.as_layout(em.value(node.args[1], node), "plain")
    a_shape = (1,) + a.shape if len(a.shape) == 1 else a.shape        # torch.matmul's 1-d operands
    b_shape = b.shape + (1,) if len(b.shape) == 1 else b.shape
    m, k = a_shape[-2:]
    n = b_shape[-1]
    if b_shape[-2] != k:
        raise unsupported(node, f"matmul of {a.shape} with {b.shape}")
    out_batch = tuple(torch.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    batch = math.prod(out_batch)
    nb = math.prod(b_shape[:-2])
    out = em.new_tensor(em.shape_of(node), "plain", mod.output_qparams)
    ai, bi = _batch_index(a_shape[:-2], out_batch), _batch_index(b_shape[:-2], out_batch)
    bt = em.scratch(nb * k * n * 2)
    zb = b.zp
    rq = RequantArrays.from_requant(mod.requant, min(n, MATMUL_COL_BLOCK), out.signed)
    lines = [f"qc_rt_matmul_pack_b({em.ptr(b)}, (int16_t *)QC_BUF({bt.ident}), {nb}, {k}, {n}, {n}, 1, {zb}, "
             f"threads);",
             f"qc_rt_matmul({em.ptr(a)}, (const int16_t *)QC_BUF({bt.ident}), {em.ptr(out)}, {batch}, {m}, {k}, "
             f"{n}, {em.weight(ai, 'int32_t')}, {em.weight(bi, 'int32_t')}, {a.zp}, {em.rq_literal(rq)}, threads);"]
    em.add_step(f"{mod.source_layer or node.name}: matmul {list(a.shape)} @ {list(b.shape)} ({node.name})", lines,
                reads=[a, b, bt], writes=[bt, out])
    em.values[node] = out


def lower_softmax(em, node, mod: QSoftmax) -> None:
    x = em.as_layout(em.value(node.args[0], node), "plain")
    shape = x.shape
    dim = mod.dim % max(len(shape), 1)
    outer, length, inner = math.prod(shape[:dim]), (shape[dim] if shape else 1), math.prod(shape[dim + 1:])
    out = em.new_tensor(shape, "plain", mod.output_qparams)
    lut = torch.zeros(256, dtype=torch.int64)       # the kernel may read every stored d in [0, 255]
    lut[:mod.lut.numel()] = mod.lut
    m, r = mod.division(length)
    zo = stored(mod.output_qparams.zero_point_int(), out.signed)
    qmin, qmax = stored(mod.qmin, out.signed), stored(mod.qmax, out.signed)
    em.add_step(f"{mod.source_layer or node.name}: softmax over dim {dim} of {list(shape)} ({node.name})",
                [f"qc_rt_softmax({em.ptr(x)}, {em.ptr(out)}, {outer}, {length}, {inner}, "
                 f"{em.weight(lut, 'int64_t')}, INT64_C({r}), {m}, {zo}, {qmin}, {qmax}, threads);"],
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
