"""Integer reductions: the mean over any dims of a quantized activation (QMean).

``x.mean(dim=1)``, ``x.mean([2, 3])``, ``x.mean(-1, keepdim=True)``, ``torch.mean(x, dim=...)``,
``x.mean()``: an exact sum of (q − zx) over the reduced elements, requantized to the output
qparams with M = s_in / (s_out · count) by the same :class:`Requant` the average pools use
(core/integer_ops.py ``_QPool``), so a global mean over H, W is bit for bit the
``adaptive_avg_pool2d(x, 1)`` of the same qparams.

BUILDERS maps a canonical op name (core.op_table) to the function lower_to_integer calls
to build its integer op: builder(gm, head, in_qps, out_qp, mode, act, layer, modules).
``float_reason`` says why a mean node cannot become one (insert_observers leaves it in float).
The C kernel is ``qc_rt_mean`` (backends/c_runtime/qc_rt_reduce.c); accuracy against float is
stated in docs/numerics.md ("Mean").
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx as fx

from .integer_ops import INT32_MAX, AccumulatorOverflowError, IntegerOp, Requant, real_multiplier
from .meta import FusedActivation, has_node_info, node_info
from .qtypes import QParams

def mean_arguments(node: fx.Node) -> tuple:
    """(dim, keepdim, dtype) of ``torch.mean(x, dim, keepdim, dtype=)`` / ``x.mean(...)`` as
    traced; dim is None for "every dim" (``x.mean()``, ``dim=None``, ``dim=[]``)."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", node.kwargs.get("axis", None))
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    dtype = node.args[3] if len(node.args) > 3 else node.kwargs.get("dtype", None)
    if isinstance(dim, (list, tuple)) and len(dim) == 0:
        dim = None
    return dim, keepdim, dtype


def reduced_dims(dim, rank: int) -> tuple:
    """The reduced dims, each in [0, rank), sorted (a 0-d tensor reduces over nothing)."""
    if dim is None:
        return tuple(range(rank))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    norm = sorted({d % max(rank, 1) for d in dims}) if rank else []
    return tuple(norm)


def _input_shape(node: fx.Node) -> Optional[tuple]:
    """The shape of the mean's input as shape propagation recorded it, looking through the
    Quantize / Dequantize of the QDQ graph (which keep it)."""
    x = node.args[0] if node.args else None
    while isinstance(x, fx.Node):
        if has_node_info(x) and node_info(x).shape is not None:
            return tuple(node_info(x).shape)
        x = x.args[0] if x.op == "call_module" and x.args else None
    return None


def float_reason(node: fx.Node) -> Optional[str]:
    """Why this mean stays in float, or None when it becomes a QMean."""
    dim, keepdim, dtype = mean_arguments(node)
    if dtype is not None:
        return f"mean with dtype={dtype}"
    if not isinstance(keepdim, bool):
        return "mean with a computed keepdim"
    if dim is not None and not (isinstance(dim, int) and not isinstance(dim, bool)) and \
            not (isinstance(dim, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in dim)):
        return f"mean over computed dims {dim!r}"
    shape = _input_shape(node)
    if shape is None:
        return "mean of a value whose shape is unknown"
    count = math.prod(shape[d] for d in reduced_dims(dim, len(shape)))
    if count == 0:
        return "mean over an empty dim (NaN in float)"
    return None


class QMean(IntegerOp):
    """Mean over ``dims`` (each in [0, rank), sorted), optionally keeping them as size 1:

        acc = Σ (q − zx) over the reduced elements     (int64 here; |acc| < 2^31, so int32 in C)
        q_out = Requant(M = s_in / (s_out · count)).apply(acc)

    count = Π of the reduced sizes; the Requant (fp32 or fixed_point, as every op's) is built
    once per count and cached, as the average pools do.
    """

    op_name = "mean"

    def __init__(self, inp: QParams, out: QParams, mode: str, dims: tuple, keepdim: bool,
                 act: Optional[FusedActivation] = None, source_layer: str = ""):
        super().__init__([inp], out, source_layer)
        self.mode = mode
        self.dims = tuple(dims)
        self.keepdim = keepdim
        self.act = act
        self._requants: dict = {}

    def requant_for(self, count: int) -> Requant:
        requant = self._requants.get(count)
        if requant is None:
            real = real_multiplier(self.input_qparams[0].scale, out=self.output_qparams) / count
            requant = self._requants[count] = Requant.make(real, self.output_qparams, self.mode, self.act)
        return requant

    def count(self, shape) -> int:
        return math.prod(shape[d] for d in self.dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = x.to(torch.int64) - self.input_qparams[0].zero_point
        if self.dims:
            acc = acc.sum(self.dims, keepdim=self.keepdim)
        return self.requant_for(self.count(x.shape)).apply(acc)

    def _float_op(self, x):
        return x.mean(self.dims, keepdim=self.keepdim) if self.dims else x

    def extra_repr(self) -> str:
        return f"{self.source_layer}: dims={list(self.dims)}, keepdim={self.keepdim}, {self.mode}"


def check_mean_accumulator(layer: str, count: int, inp: QParams) -> None:
    """count · max|q − zx| must fit the C's int32 sum (and the fixed-point product < 2^62)."""
    z = inp.zero_point_int()
    bound = count * max(inp.qtype.qmax - z, z - inp.qtype.qmin)
    if bound > INT32_MAX:
        raise AccumulatorOverflowError(f"layer {layer}: int32 sum of a mean over {count} elements may overflow "
                                       f"({bound} > 2^31−1)")


def build_mean(gm, head, in_qps, out_qp, mode, act, layer, modules) -> QMean:
    reason = float_reason(head)
    if reason:      # insert_observers decides this first; a graph built another way lands here
        raise AccumulatorOverflowError(f"layer {layer}: {reason}")
    dim, keepdim, _ = mean_arguments(head)
    shape = _input_shape(head)
    dims = reduced_dims(dim, len(shape))
    check_mean_accumulator(layer, math.prod(shape[d] for d in dims), in_qps[0])
    return QMean(in_qps[0], out_qp, mode, dims, keepdim, act, layer)


BUILDERS: dict = {"mean": build_mean}
