"""Integer ops of transformer-era models: batched matmul of two activations, softmax,
LayerNorm, embedding lookup.

BUILDERS maps a canonical op name (core.op_table) to the function lower_to_integer calls
to build its integer op: builder(gm, head, in_qps, out_qp, mode, act, layer, modules).

Each op's ``forward`` is the bit-exact specification (int64 and IEEE float32 tensor
arithmetic only); the C kernels in backends/c_runtime/qc_rt_transformer.c match it.
Accuracy against float is stated in docs/numerics.md ("Transformer ops").
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .graph_utils import get_constant
from .integer_ops import (INT32_MAX, AccumulatorOverflowError, IntegerOp, Requant, _centered,
                          real_multiplier)
from .meta import has_node_info, node_info
from .qtypes import QParams

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _arg(node: fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _value_shape(node) -> Optional[tuple]:
    """The shape of a value in the QDQ graph, looking through Quantize/Dequantize (which keep
    it) to the node shape propagation recorded."""
    while isinstance(node, fx.Node):
        if has_node_info(node) and node_info(node).shape is not None:
            return tuple(node_info(node).shape)
        node = node.args[0] if node.args else None
    return None


def _max_centered(qp: QParams) -> int:
    """max |q − z| over the type's range."""
    z = qp.zero_point_int()
    return max(qp.qtype.qmax - z, z - qp.qtype.qmin)


def _clamp_round(v: torch.Tensor, zo: int, qmin: int, qmax: int) -> torch.Tensor:
    """clamp(round_half_even(v) + zo, qmin, qmax) of float32 v; NaN gives qmin (the C's
    ``!(v >= lo)`` test); clamping before rounding is exact (integer bounds)."""
    lo, hi = float(qmin - zo), float(qmax - zo)
    v = torch.where(v >= lo, v, torch.full_like(v, lo))
    v = torch.clamp(v, max=hi)
    return torch.round(v).to(torch.int64) + zo


# ---------------------------------------------------------------------------------------
# batched matmul of two activations
# ---------------------------------------------------------------------------------------

class QMatMul(IntegerOp):
    """torch.matmul of two quantized activations: the exact accumulator
    Σ_k (a − za)(b − zb) (float64 on integer values, as QLinear: exact below 2^53, and the
    builder proved it fits int32) requantized with M = sa·sb/so."""

    op_name = "matmul"

    def __init__(self, a: QParams, b: QParams, out: QParams, requant: Requant, source_layer: str = ""):
        super().__init__([a, b], out, source_layer)
        self.requant = requant

    def accumulate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        qa, qb = self.input_qparams
        return torch.matmul(_centered(a, qa), _centered(b, qb)).to(torch.int64)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.requant.apply(self.accumulate(a, b))

    def _float_op(self, a, b):
        return torch.matmul(a, b)

    def extra_repr(self) -> str:
        return f"{self.source_layer}: {self.requant}"


def check_matmul_accumulator(layer: str, k: int, a: QParams, b: QParams) -> None:
    bound = k * _max_centered(a) * _max_centered(b)
    if bound > INT32_MAX:
        raise AccumulatorOverflowError(
            f"layer {layer}: int32 accumulator of matmul may overflow (K={k} · {_max_centered(a)} · "
            f"{_max_centered(b)} = {bound} > 2^31−1)")


def build_matmul(gm, head, in_qps, out_qp, mode, act, layer, modules) -> QMatMul:
    a_shape = _value_shape(head.args[0])
    if a_shape is None:
        raise AccumulatorOverflowError(f"layer {layer}: matmul operand shape unknown, cannot bound its accumulator")
    check_matmul_accumulator(layer, a_shape[-1], in_qps[0], in_qps[1])
    real = real_multiplier(in_qps[0].scale, in_qps[1].scale, out=out_qp)
    return QMatMul(in_qps[0], in_qps[1], out_qp, Requant.make(real, out_qp, mode, act), layer)


# ---------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------

#: fraction bits of the exp table: LUT[d] = round(exp(−s_in·d) · 2^SOFTMAX_LUT_BITS)
SOFTMAX_LUT_BITS = 22
#: fraction bits of the per-row reciprocal: c = round(R · 2^SOFTMAX_RECIP_BITS / S)
SOFTMAX_RECIP_BITS = 31


def softmax_output_multiplier(out_scale: float) -> tuple[int, int]:
    """(m, R): R = round(2^m / s_out) in (2^30, 2^31] (m = e + 30 for s_out = f·2^e, f in
    [0.5, 1)), m capped at 31 so that the output shift m + SOFTMAX_RECIP_BITS stays <= 62 (a
    larger s_out only shrinks R); R <= 2^31 keeps R·2^31 + S/2 and e·c + 2^(sh−1) below 2^63."""
    _, e = math.frexp(out_scale)
    m = min(e + 30, 31)
    r = int(round(2.0 ** m / out_scale))
    if m + SOFTMAX_RECIP_BITS < 1 or r > 2 ** 31:
        raise AccumulatorOverflowError(f"softmax output scale {out_scale} is outside the integer softmax's range")
    return m, r


class QSoftmax(IntegerOp):
    """Softmax along ``dim`` in integers (the C does the same operations):

        d = max_row(q) − q                    ∈ [0, qmax − qmin]
        e = LUT[d],  LUT[d] = round(exp(−s_in·d) · 2^22)    (built here, in float64; shipped)
        S = Σ_row e                           (int64, S >= 2^22: the row's max has e = 2^22)
        c = ⌊(R·2^31 + ⌊S/2⌋) / S⌋           one division per row: R·2^31/S rounded
        q_out = clamp(zo + ((e·c + 2^(sh−1)) >> sh), qmin, qmax),  sh = m + 31

    with (m, R) from softmax_output_multiplier (R = round(2^m / s_out)): e/S rounded half up
    to the output step, through a per-row fixed-point reciprocal instead of a division per
    element. c is within 1/2 of R·2^31/S, so the rounded quantity is within e/2^(sh+1) <=
    2^(21−sh) output steps of e·R/(S·2^m); int64 throughout (bounds in
    softmax_output_multiplier; c < 2^41, e·c < 2^63).
    """

    op_name = "softmax"

    def __init__(self, inp: QParams, out: QParams, dim: int, source_layer: str = ""):
        super().__init__([inp], out, source_layer)
        self.dim = dim
        d = torch.arange(inp.qtype.qmax - inp.qtype.qmin + 1, dtype=torch.float64)
        lut = torch.round(torch.exp(-inp.scale.to(torch.float64) * d) * 2.0 ** SOFTMAX_LUT_BITS)
        self.register_buffer("lut", lut.to(torch.int64))
        self.qmin, self.qmax = out.qtype.qmin, out.qtype.qmax
        self.out_shift, self.out_mult = softmax_output_multiplier(self.output_qparams.scale_float())

    def reciprocal(self, s: torch.Tensor) -> torch.Tensor:
        """c of each row sum S (int64)."""
        return torch.div((self.out_mult << SOFTMAX_RECIP_BITS) + (s >> 1), s, rounding_mode="floor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.to(torch.int64)
        d = q.amax(self.dim, keepdim=True) - q
        e = self.lut[d]
        c = self.reciprocal(e.sum(self.dim, keepdim=True))
        sh = self.out_shift + SOFTMAX_RECIP_BITS
        y = (e * c + (1 << (sh - 1))) >> sh
        zo = self.output_qparams.zero_point_int()
        return torch.clamp(y + zo, self.qmin, self.qmax).to(self.output_qparams.qtype.storage)

    def _float_op(self, x):
        return torch.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"{self.source_layer}: dim={self.dim}"


def _softmax_dim(head: fx.Node, modules: dict, ndim: int) -> int:
    if head.op == "call_module":
        dim = modules[head.target].dim
    else:
        dim = _arg(head, 1, "dim", None)
    if dim is None:     # torch's legacy implicit dim (F._get_softmax_dim)
        dim = 0 if ndim in (0, 1, 3) else 1
    return dim % max(ndim, 1)


def _shape_preserving_input_shape(head: fx.Node) -> Optional[tuple]:
    """The input shape of softmax / LayerNorm: their own recorded output shape. (Their input
    may be an op lowered just before, e.g. a rank-reducing mean, whose new node records no
    shape; _value_shape would walk past it to the shape of ITS input.)"""
    if has_node_info(head) and node_info(head).shape is not None:
        return tuple(node_info(head).shape)
    return _value_shape(head.args[0])


def build_softmax(gm, head, in_qps, out_qp, mode, act, layer, modules) -> QSoftmax:
    shape = _shape_preserving_input_shape(head)
    return QSoftmax(in_qps[0], out_qp, _softmax_dim(head, modules, len(shape)), layer)


# ---------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------

#: rows longer than this stay in float (then n·Σ(q−z)² < 2^53 and n·(q−z) fits int32)
LAYER_NORM_MAX_ROW = 1 << 18


class QLayerNorm(IntegerOp):
    """LayerNorm over the trailing ``normalized_shape`` (n elements a row):

        Δ = q − zx;  S1 = Σ Δ,  S2 = Σ Δ²,  V = n·S2 − S1²,  T = n·Δ − S1     (int64, exact)

    since (x − mean)/sqrt(var + eps) = T / sqrt(V + eps·n²/sx²), then in IEEE float32, each
    operation rounded once (no FMA):

        inv = 1 / sqrt(f32(V) + eps_q)          eps_q = f32(eps·n²/sx²)
        v   = f32(T) · inv · g + b              g = f32(γ/so), b = f32(β/so), left to right
        q   = clamp(round_half_even(v) + zo, qmin, qmax)     (NaN → qmin)
    """

    op_name = "layer_norm"

    def __init__(self, inp: QParams, out: QParams, normalized_shape, gamma: Optional[torch.Tensor],
                 beta: Optional[torch.Tensor], eps: float, source_layer: str = ""):
        super().__init__([inp], out, source_layer)
        self.normalized_shape = tuple(normalized_shape)
        n = math.prod(self.normalized_shape)
        so = out.scale.to(torch.float64)
        gamma = torch.ones(n, dtype=torch.float64) if gamma is None else gamma.detach().reshape(-1).double()
        beta = torch.zeros(n, dtype=torch.float64) if beta is None else beta.detach().reshape(-1).double()
        self.register_buffer("gain", (gamma / so).to(torch.float32))
        self.register_buffer("offset", (beta / so).to(torch.float32))
        self.eps = eps
        self.eps_q = torch.tensor(eps * n * n / float(inp.scale.double()) ** 2, dtype=torch.float32)
        self.float_gamma, self.float_beta = gamma.float(), beta.float()
        self.qmin, self.qmax = out.qtype.qmin, out.qtype.qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.gain.numel()
        shape = x.shape
        dq = x.to(torch.int64).reshape(-1, n) - self.input_qparams[0].zero_point
        s1 = dq.sum(-1, keepdim=True)
        s2 = (dq * dq).sum(-1, keepdim=True)
        v = n * s2 - s1 * s1
        t = n * dq - s1
        # torch's vectorized float32 sqrt is not correctly rounded (1 in 5 results is 1 ulp off
        # on AVX2 CPUs, torch 2.13); float64 sqrt rounded to float32 is (53 >= 2*24 + 2), as C sqrtf
        root = torch.sqrt((v.to(torch.float32) + self.eps_q).double()).float()
        inv = torch.ones_like(root).div(root)
        y = (t.to(torch.float32) * inv) * self.gain + self.offset
        q = _clamp_round(y, self.output_qparams.zero_point_int(), self.qmin, self.qmax)
        return q.reshape(shape).to(self.output_qparams.qtype.storage)

    def _float_op(self, x):
        return F.layer_norm(x, self.normalized_shape, self.float_gamma.reshape(self.normalized_shape),
                            self.float_beta.reshape(self.normalized_shape), self.eps)

    def extra_repr(self) -> str:
        return f"{self.source_layer}: normalized_shape={self.normalized_shape}, eps={self.eps}"


def _constant(gm, v) -> Optional[torch.Tensor]:
    if v is None:
        return None
    if isinstance(v, fx.Node) and v.op == "get_attr":
        return get_constant(gm, v)
    if isinstance(v, torch.Tensor):
        return v
    raise AccumulatorOverflowError(f"LayerNorm weight/bias {v} is not a constant")


def build_layer_norm(gm, head, in_qps, out_qp, mode, act, layer, modules) -> QLayerNorm:
    if head.op == "call_module":
        ln = modules[head.target]
        shape, gamma, beta, eps = ln.normalized_shape, ln.weight, ln.bias, ln.eps
    else:   # F.layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)
        shape = _arg(head, 1, "normalized_shape", None)
        shape = (shape,) if not isinstance(shape, (tuple, list, torch.Size)) else tuple(shape)
        if not all(isinstance(v, int) for v in shape):   # sizes read from x.shape: the traced values
            full = _shape_preserving_input_shape(head)
            shape = full[len(full) - len(shape):]
        gamma = _constant(gm, _arg(head, 2, "weight", None))
        beta = _constant(gm, _arg(head, 3, "bias", None))
        eps = float(_arg(head, 4, "eps", 1e-5))
    if math.prod(shape) > LAYER_NORM_MAX_ROW:
        raise AccumulatorOverflowError(f"layer {layer}: LayerNorm rows of {math.prod(shape)} elements exceed "
                                       f"{LAYER_NORM_MAX_ROW} (int64/float32 exactness bound)")
    return QLayerNorm(in_qps[0], out_qp, shape, gamma, beta, eps, layer)


BUILDERS: dict = {"matmul": build_matmul, "softmax": build_softmax, "layer_norm": build_layer_norm}
