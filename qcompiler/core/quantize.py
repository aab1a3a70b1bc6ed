"""The numeric contract (DESIGN.md §3), defined once.

Every path — observers, fake-quant, the reference interpreter, backends' tests, export —
calls these functions. All arithmetic is float32 or int64 tensor arithmetic (IEEE single
operations, no fused multiply-add); no Python floats enter a computed value.
"""
from __future__ import annotations

import math

import torch

from .qtypes import QParams, QType

# Smallest scale a range may get (as PyTorch's observers): a constant-zero tensor then
# quantizes to its zero point and requantization multipliers stay bounded.
MIN_SCALE = float(torch.finfo(torch.float32).eps)


def _broadcast(p: torch.Tensor, x: torch.Tensor, axis) -> torch.Tensor:
    if axis is None or p.dim() == 0:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """q = clamp(round_half_even(x / s) + zp, qmin, qmax), with an IEEE float32 division."""
    x = x.to(torch.float32)
    s = _broadcast(qp.scale, x, qp.axis)
    zp = _broadcast(qp.zero_point, x, qp.axis)
    # the clamp before the cast keeps huge quotients inside int64; values past ±2^40 clamp anyway
    q = torch.round(torch.clamp(x / s, -2.0**40, 2.0**40)).to(torch.int64) + zp
    return torch.clamp(q, qp.qtype.qmin, qp.qtype.qmax).to(qp.qtype.storage)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """x = float32(q - zp) * s, one IEEE float32 multiply."""
    s = _broadcast(qp.scale, q, qp.axis)
    zp = _broadcast(qp.zero_point, q, qp.axis)
    return (q.to(torch.int64) - zp).to(torch.float32) * s


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    return dequantize(quantize(x, qp), qp)


# ---------------------------------------------------------------------------------------
# Choosing quantization parameters from a range
# ---------------------------------------------------------------------------------------

def qparams_from_range(lo, hi, qtype: QType, *, symmetric: bool, axis=None) -> QParams:
    """Scale and zero point that cover [lo, hi] (widened to include 0, so 0 is exact).

    Symmetric ranges use zero point 0 for signed types and the middle of the range
    for unsigned ones (128 for uint8).
    """
    lo = torch.minimum(torch.as_tensor(lo, dtype=torch.float64), torch.zeros(()))
    hi = torch.maximum(torch.as_tensor(hi, dtype=torch.float64), torch.zeros(()))
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError(f"cannot quantize a non-finite range [{lo}, {hi}]")
    qmin, qmax = qtype.qmin, qtype.qmax
    if symmetric:
        amax = torch.maximum(-lo, hi)
        half = (qmax - qmin) / 2.0
        scale = amax / half
        zp = torch.zeros_like(scale, dtype=torch.int64)
        if not qtype.signed:
            zp = zp + (qmin + qmax + 1) // 2
    else:
        scale = (hi - lo) / float(qmax - qmin)
        zp = None
    # a range of exactly zero (an all-zero weight channel: a pruned one) quantizes to the zero point
    # at any scale; 1.0 keeps its int32 bias (at scale s_x · s_w) and requant multiplier ordinary,
    # where the smallest scale would push a bias of -10 past int32
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    scale = torch.clamp(scale, min=MIN_SCALE).to(torch.float32)
    if zp is None:
        zp = torch.clamp(qmin - torch.round(lo / scale.double()), qmin, qmax).to(torch.int64)
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    return QParams(scale, zp, qtype, axis)


# ---------------------------------------------------------------------------------------
# Requantization: int32 accumulator -> output integer type
# ---------------------------------------------------------------------------------------

def requantize_fp32(acc: torch.Tensor, multiplier: torch.Tensor, zero_point: int,
                    qmin: int, qmax: int) -> torch.Tensor:
    """float32(acc) × float32(multiplier), round half to even, + zp, clamp (int64 result)."""
    y = acc.to(torch.float32) * multiplier.to(torch.float32)
    return torch.clamp(torch.round(y).to(torch.int64) + zero_point, qmin, qmax)


def requantize_fixed_point(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor,
                           zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """((acc · M0 + 2^(t−1)) >> t) + zp, clamp — int64 throughout, a single rounding."""
    acc = acc.to(torch.int64)
    prod = acc * m0 + (torch.ones_like(shift) << (shift - 1))
    return torch.clamp((prod >> shift) + zero_point, qmin, qmax)


def fixed_point_multiplier(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positive real multipliers into (M0, t) with M0 in [2^30, 2^31) and real ≈ M0·2^-t.

    Rounding of M0 is computed in float64 from the float32 multiplier; |acc|·M0 < 2^62.
    """
    real = torch.as_tensor(real, dtype=torch.float64).reshape(-1)
    if not bool((real > 0).all()):
        raise ValueError("requantization multipliers must be positive")
    m0 = torch.empty_like(real, dtype=torch.int64)
    shift = torch.empty_like(real, dtype=torch.int64)
    for i, r in enumerate(real.tolist()):
        mant, exp = math.frexp(r)          # r = mant · 2^exp, mant in [0.5, 1)
        q = round(mant * 2**31)
        if q == 2**31:
            q, exp = q // 2, exp + 1
        t = 31 - exp
        if t < 1:
            raise ValueError(f"requantization multiplier {r} is too large (≥ 2^30)")
        if t > 62:                          # below ~2^-32: the product rounds to zero anyway
            q, t = 0, 62
        m0[i], shift[i] = q, t
    return m0, shift
