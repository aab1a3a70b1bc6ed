"""Dynamic quantization (QDynamicLinear): int8 weights ahead of time, activation scales at run time.

The op is float in, float out: each call measures its input's range (per tensor, or per token,
i.e. per row of the flattened leading dimensions), quantizes it, runs the exact integer GEMM
against the per-channel int8 weights, and scales the int32 accumulator back to float. No
calibration is needed, and the range always fits the data: what static quantization loses to
outliers between calibration and use, this keeps.

Exact semantics (docs/numerics.md, "Dynamic quantization"), float32 throughout, no FMA:

    symmetric (int8):   a = max|x| over the row;  inv = 127 / a;  s = a / 127
                        q = clamp(rint(x · inv), −127, 127),      zp = 0
    asymmetric (uint8): lo = min(min x, 0), hi = max(max x, 0), r = hi − lo
                        inv = 255 / r;  s = r / 255;  zp = clamp(rint(−lo · inv), 0, 255)
                        q = clamp(rint(x · inv) + zp, 0, 255)
    a row whose range is below 2^-120 (a or r < TINY_RANGE, zeros included): q = zp = 0 and
        s = 0, so the row's output is the bias (127 / a would overflow float32 below ~3.7e-37)
    an asymmetric row whose r overflows float32 (values beyond ±1.7e38 of both signs) is refused
    acc[r, c] = Σ_k (q[r, k] − zp[r]) · w[c, k]          (exact int32)
    y[r, c]   = f32(acc) · (s[r] · s_w[c]) + bias[c]      (the product of scales rounded first)

``rint`` rounds half to even (torch.round, C's rintf in the default mode). NaN or an infinity
in the input is refused, as Quantize refuses it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .integer_ops import INT32_MAX, AccumulatorOverflowError, IntegerOp
from .qtypes import QParams

#: the activation granularities dynamic quantization offers
DYNAMIC_GRANULARITIES = ("per_tensor", "per_token")
#: ranges below this quantize as zero rows: 255 / r and 127 / a stay finite in float32 above it
TINY_RANGE = 2.0 ** -120


def check_finite(x: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: the input holds NaN or an infinity; dynamic quantization measures the "
                         "input's range at run time and no scale stands for them (check the input data or "
                         "the float op that produced it)")


def quantize_rows(x2: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize each row of a float32 [M, K] matrix with its own range (module docstring).

    Returns (codes int64 [M, K], scales float32 [M], zero points int64 [M]).
    """
    x2 = x2.to(torch.float32)
    if symmetric:
        hi = x2.abs().amax(dim=1) if x2.shape[1] else x2.new_zeros(x2.shape[0])
        span, levels, lo = hi, 127.0, None
    else:
        zero = x2.new_zeros(x2.shape[0])
        lo = torch.minimum(x2.amin(dim=1), zero) if x2.shape[1] else zero
        hi = torch.maximum(x2.amax(dim=1), zero) if x2.shape[1] else zero
        span, levels = hi - lo, 255.0
        if not bool(torch.isfinite(span).all()):
            raise ValueError("an input row spans more than float32's range (its max − min overflows); dynamic "
                             "quantization cannot give it a finite scale")
    nonzero = span >= TINY_RANGE
    safe = torch.where(nonzero, span, torch.ones_like(span))
    inv = torch.where(nonzero, torch.tensor(levels, dtype=torch.float32) / safe, torch.zeros_like(span))
    scale = torch.where(nonzero, safe / torch.tensor(levels, dtype=torch.float32), torch.zeros_like(span))
    if symmetric:
        zp = torch.zeros(x2.shape[0], dtype=torch.int64)
        q = torch.clamp(torch.round(x2 * inv[:, None]).to(torch.int64), -127, 127)
    else:
        zp = torch.clamp(torch.round(-lo * inv).to(torch.int64), 0, 255)
        q = torch.clamp(torch.round(x2 * inv[:, None]).to(torch.int64) + zp[:, None], 0, 255)
    return q, scale, zp


class QDynamicLinear(IntegerOp):
    """y = x · Wᵀ + b with int8 per-channel weights and activation qparams measured per call."""

    op_name = "dynamic_linear"

    def __init__(self, weight: torch.Tensor, weight_qparams: QParams, bias: Optional[torch.Tensor],
                 per_token: bool, symmetric: bool, source_layer: str = ""):
        super().__init__([], None, source_layer)
        if weight.dtype != torch.int8 or (weight.numel() and int(weight.min()) < -127):
            raise ValueError(f"{source_layer}: dynamic linear weights are int8 in [-127, 127]")
        k = weight.shape[1]
        bound = k * (127 if symmetric else 255) * 127
        if bound > INT32_MAX:
            raise AccumulatorOverflowError(f"layer {source_layer}: K={k} is too deep for an int32 accumulator "
                                           f"with dynamic int8 activations ({bound} > 2^31−1); keep it in float")
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))
        self.weight_qparams = weight_qparams            # symmetric, per channel (axis 0) or per tensor
        self.per_token = per_token
        self.symmetric = symmetric

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def weight_scales(self) -> torch.Tensor:
        """s_w per output channel, float32 [N]."""
        return self.weight_qparams.scale.reshape(-1).expand(self.weight.shape[0]).contiguous()

    def quantize_input(self, x: torch.Tensor):
        """(codes [M, K], scales [M], zero points [M]) of x as this op quantizes it."""
        check_finite(x, f"{self.source_layer} (dynamic Linear)")
        x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if self.per_token:
            return quantize_rows(x2, self.symmetric)
        q, s, zp = quantize_rows(x2.reshape(1, -1), self.symmetric)
        m = x2.shape[0]
        return q.reshape(x2.shape), s.expand(m).contiguous(), zp.expand(m).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, s, zp = self.quantize_input(x)
        # exact int32 accumulator: float64 sums of integer products far below 2^53
        acc = torch.matmul((q - zp[:, None]).to(torch.float64), self.weight.to(torch.float64).t())
        y = acc.to(torch.int64).to(torch.float32) * (s[:, None] * self.weight_scales[None, :])
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.weight.shape[0])

    def _float_op(self, x):
        return F.linear(x, self.float_weight, self.float_bias)

    def extra_repr(self) -> str:
        rows = "per token" if self.per_token else "per tensor"
        kind = "int8 symmetric" if self.symmetric else "uint8 asymmetric"
        return f"{self.source_layer}: w{tuple(self.weight.shape)} int8, activations {kind} {rows} at run time"
