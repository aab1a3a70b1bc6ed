"""Embedding lookups on integers (QEmbedding): int64 indices in, rows of an int8 table out.

``nn.Embedding`` computes no arithmetic: it copies rows. Its table is quantized once, with the
output's qparams, so the integer op is a pure gather and every backend is exact by copying
bytes. The output observer is seeded with the whole table (passes/insert_observers.py), so a
row that calibration never saw still fits the range: no token's row is clipped.

BUILDERS maps the canonical op name to the function lower_to_integer calls to build it.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from .integer_ops import IntegerOp, activation_clamp
from .quantize import dequantize, quantize


class QEmbedding(IntegerOp):
    """y[..., :] = table[ids[...], :] with ``table = quantize(weight, output_qparams)``."""

    op_name = "embedding"

    def __init__(self, table: torch.Tensor, out, source_layer: str = ""):
        super().__init__([], out, source_layer)
        self.register_buffer("table", table)

    @property
    def num_embeddings(self) -> int:
        return int(self.table.shape[0])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_indices(ids, self.num_embeddings, f"{self.source_layer} (Embedding)")
        return self.table[ids]

    def _float_op(self, ids):
        return dequantize(self.table, self.output_qparams)[ids]

    def extra_repr(self) -> str:
        return f"{self.source_layer}: {tuple(self.table.shape)} -> {self.output_qparams}"


def check_indices(ids: torch.Tensor, rows: int, where: str) -> None:
    """Indices must be integers in [0, rows); the error names ``where`` (the layer, or the
    compiled model's input), as PyTorch's does not."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{where}: indices (token ids) must be an integer tensor, got {ids.dtype}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= rows:
            raise IndexError(f"{where}: index {lo if lo < 0 else hi} is outside the embedding table's {rows} rows "
                             f"(valid indices are 0..{rows - 1})")


def float_reason(module: nn.Module) -> str:
    """Why an ``nn.Embedding`` stays in float, or ''."""
    if getattr(module, "max_norm", None) is not None:
        return "max_norm renormalizes the table's rows at every call"
    return ""


def build_embedding(gm, head: fx.Node, in_qps, out_qp, mode, act, layer, modules) -> QEmbedding:
    weight = modules[head.target].weight.detach()
    lo, hi = activation_clamp(out_qp, act)
    table = torch.clamp(quantize(weight, out_qp).to(torch.int64), lo, hi).to(out_qp.qtype.storage)
    return QEmbedding(table, out_qp, layer)


BUILDERS: dict = {"embedding": build_embedding}
