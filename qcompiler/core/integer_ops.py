"""The integer ops of the INTEGER graph and their reference semantics.

Each op is a small ``nn.Module`` whose attributes are the op's explicit parameters
(integer weights, int32 bias, input/output qparams, the :class:`Requant` of its output).
Backends read these attributes; ``forward`` is the bit-exact specification they must meet.

Exactness: convolutions and matmuls run in float64 on integer-valued operands. Every
product (< 2^16) and every partial sum (< 2^31, checked when lowering) is an integer far
below 2^53, so float64 computes the int32 accumulator exactly in any summation order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .meta import FusedActivation
from .qtypes import QParams, QType
from .quantize import (dequantize, fixed_point_multiplier, quantize, requantize_fixed_point,
                       requantize_fp32)

INT32_MAX = 2**31 - 1

#: every op name an INTEGER graph can contain (targets declare the subset they support)
INTEGER_OPS = frozenset({
    "quantize", "dequantize", "requantize", "conv1d", "conv2d", "linear", "add", "mul",
    "avg_pool2d", "adaptive_avg_pool2d", "cat", "max_pool2d", "relu", "flatten", "unflatten", "reshape",
    "permute", "transpose", "squeeze", "unsqueeze", "dropout", "identity",
})
#: elementwise functions as 256-entry tables (core/lookup_ops.py)
INTEGER_OPS = INTEGER_OPS | {"lookup"}
#: the transformer family (core/transformer_ops.py)
INTEGER_OPS = INTEGER_OPS | {"matmul", "softmax", "layer_norm"}
#: reductions (core/reduce_ops.py)
INTEGER_OPS = INTEGER_OPS | {"mean"}
#: embedding lookups (core/embedding_ops.py)
INTEGER_OPS = INTEGER_OPS | {"embedding"}
#: float-in float-out extensions: dynamic int8 (core/dynamic_ops.py), weight-only int8/int4/NF4 and
#: half precision (core/weight_only_ops.py)
INTEGER_OPS = INTEGER_OPS | {"dynamic_linear", "weight_only_linear", "weight_only_embedding", "half_linear"}
#: value-preserving views and copies on int8 (core/op_table.py SHARED_OPS of the shapes family)
INTEGER_OPS = INTEGER_OPS | {"chunk", "split", "tensor_split", "unbind", "narrow", "select", "getitem", "expand",
                             "repeat"}


class AccumulatorOverflowError(ValueError):
    pass


# ---------------------------------------------------------------------------------------
# Requantization
# ---------------------------------------------------------------------------------------

def activation_clamp(out: QParams, act: Optional[FusedActivation]) -> tuple[int, int]:
    """Integer clamp bounds of the output type narrowed by a fused activation.

    Exact: quantization is monotone, so q(clamp(y, a, b)) == clamp(q(y), q(a), q(b)).
    """
    lo, hi = out.qtype.qmin, out.qtype.qmax
    if act is not None:
        if act.min_value is not None:
            lo = max(lo, int(quantize(torch.tensor(act.min_value), out)))
        if act.max_value is not None:
            hi = min(hi, int(quantize(torch.tensor(act.max_value), out)))
    return lo, hi


@dataclass(frozen=True, eq=False)
class Requant:
    """How an int32 accumulator becomes the output type (DESIGN.md §3).

    ``multiplier`` (float32) is used in ``fp32`` mode, ``m0``/``shift`` (int64) in
    ``fixed_point`` mode; both are derived from the same float64 real multiplier.
    """

    mode: str
    multiplier: torch.Tensor
    m0: torch.Tensor
    shift: torch.Tensor
    zero_point: int
    qmin: int
    qmax: int
    out_qtype: QType

    @classmethod
    def make(cls, real: torch.Tensor, out: QParams, mode: str,
             act: Optional[FusedActivation] = None) -> "Requant":
        real = torch.as_tensor(real, dtype=torch.float64)
        m0, shift = fixed_point_multiplier(real)
        lo, hi = activation_clamp(out, act)
        return cls(mode, real.to(torch.float32), m0.reshape(real.shape), shift.reshape(real.shape),
                   out.zero_point_int(), lo, hi, out.qtype)

    def apply(self, acc: torch.Tensor, view: Sequence[int] = ()) -> torch.Tensor:
        """Requantize ``acc``; ``view`` reshapes per-channel parameters to broadcast."""
        view = tuple(view) if self.multiplier.numel() > 1 else ()
        if self.mode == "fp32":
            q = requantize_fp32(acc, self.multiplier.reshape(view), self.zero_point, self.qmin, self.qmax)
        elif self.mode == "fixed_point":
            q = requantize_fixed_point(acc, self.m0.reshape(view), self.shift.reshape(view),
                                       self.zero_point, self.qmin, self.qmax)
        else:
            raise ValueError(f"unknown requantization mode {self.mode!r}")
        return q.to(self.out_qtype.storage)

    def __repr__(self) -> str:
        m = self.multiplier
        ms = f"{float(m):.6g}" if m.numel() == 1 else f"[{float(m.min()):.3g}..{float(m.max()):.3g}]×{m.numel()}"
        return f"Requant({self.mode}, M={ms}, zp={self.zero_point}, clamp=[{self.qmin}, {self.qmax}])"


def real_multiplier(*scales_in: torch.Tensor, out: QParams) -> torch.Tensor:
    """Π scales_in / s_out in float64 (the exact real number requantization approximates)."""
    real = torch.ones((), dtype=torch.float64)
    for s in scales_in:
        real = real * s.to(torch.float64)
    return real / out.scale.to(torch.float64)


def check_accumulator(layer: str, k: int, input_qp: QParams, weight: torch.Tensor,
                      weight_qp: QParams, bias: Optional[torch.Tensor]) -> None:
    """Prove K · max|x − zx| · max|w − zw| + max|bias| fits int32, or raise."""
    max_dx = max(input_qp.qtype.qmax - int(input_qp.zero_point.min()),
                 int(input_qp.zero_point.max()) - input_qp.qtype.qmin)
    zw = weight_qp.zero_point.reshape([-1] + [1] * (weight.dim() - 1)) if weight_qp.per_channel \
        else weight_qp.zero_point
    max_dw = int((weight.to(torch.int64) - zw).abs().max()) if weight.numel() else 0
    # in int64: abs(-2^31) does not fit int32 (torch returns it negative)
    max_bias = int(bias.to(torch.int64).abs().max()) if bias is not None and bias.numel() else 0
    bound = k * max_dx * max_dw + max_bias
    if bound > INT32_MAX:
        raise AccumulatorOverflowError(
            f"layer {layer}: int32 accumulator may overflow (K={k} · {max_dx} · {max_dw} + {max_bias} "
            f"= {bound} > 2^31−1); keep this layer in float or split it")


def quantize_bias(layer: str, bias: torch.Tensor, bias_qp: QParams) -> torch.Tensor:
    """The int32 bias at scale s_x · s_w, or AccumulatorOverflowError where one does not fit int32
    (quantize() would clamp it silently: a bias of -10 over a weight scale of 1e-7)."""
    exact = torch.round(bias.to(torch.float64) / bias_qp.scale.to(torch.float64))
    worst = float(exact.abs().max()) if exact.numel() else 0.0
    if worst > INT32_MAX:
        raise AccumulatorOverflowError(
            f"layer {layer}: its bias does not fit int32 at scale s_x · s_w (|bias| / scale = {worst:.3g} "
            f"> 2^31−1; the smallest weight scale is {float(bias_qp.scale.min()):.3g}); keep this layer in float")
    return quantize(bias, bias_qp).to(torch.int32)


# ---------------------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------------------

class IntegerOp(nn.Module):
    """Common attributes: what the op is, where it came from, its qparams."""

    op_name: str = ""
    #: does its arithmetic in integers (False: weight-only and half-precision ops compute in float)
    integer_arithmetic: bool = True

    def __init__(self, input_qparams: Sequence[QParams], output_qparams: Optional[QParams],
                 source_layer: str = ""):
        super().__init__()
        self.input_qparams = list(input_qparams)
        self.output_qparams = output_qparams
        self.source_layer = source_layer
        self.fused_activation: Optional[FusedActivation] = None

    def float_reference(self, *xs: torch.Tensor) -> torch.Tensor:
        """The float op this integer op approximates, on float inputs (for reports)."""
        y = self._float_op(*xs)
        act = self.fused_activation
        if act is not None:
            y = torch.clamp(y, act.min_value, act.max_value)
        return y

    def _float_op(self, *xs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _centered(q: torch.Tensor, qp: QParams, view=()) -> torch.Tensor:
    zp = qp.zero_point.reshape(view) if qp.per_channel else qp.zero_point
    return q.to(torch.float64) - zp.to(torch.float64)


class QConv(IntegerOp):
    """Convolution (1-d or 2-d, any stride/padding/dilation/groups) with fused requant."""

    def __init__(self, dims: int, weight: torch.Tensor, weight_qparams: QParams,
                 bias: Optional[torch.Tensor], input_qparams: QParams, output_qparams: QParams,
                 requant: Requant, stride, padding, dilation, groups: int, source_layer: str = ""):
        super().__init__([input_qparams], output_qparams, source_layer)
        self.op_name = f"conv{dims}d"
        self.dims = dims
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.weight_qparams = weight_qparams
        self.requant = requant
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """The exact int32 accumulator Σ (x − zx)(w − zw) + bias, as int64."""
        dx = _centered(x, self.input_qparams[0])
        dw = _centered(self.weight, self.weight_qparams, [-1] + [1] * (self.dims + 1))
        if self.groups > 1 and not isinstance(self.padding, str):
            acc = _grouped_conv(dx, dw, self.stride, self.padding, self.dilation, self.groups, self.dims)
        else:
            conv = F.conv1d if self.dims == 1 else F.conv2d
            acc = conv(dx, dw, None, self.stride, self.padding, self.dilation, self.groups)
        acc = acc.to(torch.int64)
        if self.bias is not None:
            acc = acc + self.bias.to(torch.int64).reshape([-1] + [1] * self.dims)
        return acc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.requant.apply(self.accumulate(x), [1, -1] + [1] * self.dims)

    def _float_op(self, x):
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, self.float_weight, self.float_bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.source_layer}: w{tuple(self.weight.shape)} {self.weight_qparams.qtype}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, {self.requant}")


def _pair(v, dims):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims


def _grouped_conv(dx, dw, stride, padding, dilation, groups, dims):
    """Grouped/depthwise convolution as a sum over kernel offsets (exact in float64).

    torch's float64 grouped convolution takes a slow generic path; this one does one
    batched product per kernel offset instead.
    """
    if dims == 1:
        return _grouped_conv(dx.unsqueeze(-2), dw.unsqueeze(-2), (1,) + _pair(stride, 1),
                             (0,) + _pair(padding, 1), (1,) + _pair(dilation, 1), groups, 2).squeeze(-2)
    (sh, sw), (ph, pw), (dh, dwl) = _pair(stride, 2), _pair(padding, 2), _pair(dilation, 2)
    n, c, h, w = dx.shape
    o, i, kh, kw = dw.shape
    x = F.pad(dx, (pw, pw, ph, ph)).reshape(n, groups, i, h + 2 * ph, w + 2 * pw)
    wg = dw.reshape(groups, o // groups, i, kh, kw)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dwl * (kw - 1) - 1) // sw + 1
    acc = dx.new_zeros((n, groups, o // groups, ho, wo))
    for a in range(kh):
        for b in range(kw):
            xs = x[..., a * dh: a * dh + sh * (ho - 1) + 1: sh, b * dwl: b * dwl + sw * (wo - 1) + 1: sw]
            if i == 1 and o == groups:       # depthwise: one multiply per element
                acc += xs * wg[:, :, 0, a, b].reshape(1, groups, 1, 1, 1)
            else:
                acc += torch.einsum("ngihw,goi->ngohw", xs, wg[..., a, b])
    return acc.reshape(n, o, ho, wo)


class QLinear(IntegerOp):
    op_name = "linear"

    def __init__(self, weight: torch.Tensor, weight_qparams: QParams, bias: Optional[torch.Tensor],
                 input_qparams: QParams, output_qparams: QParams, requant: Requant,
                 source_layer: str = ""):
        super().__init__([input_qparams], output_qparams, source_layer)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.weight_qparams = weight_qparams
        self.requant = requant

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        dx = _centered(x, self.input_qparams[0])
        dw = _centered(self.weight, self.weight_qparams, [-1, 1])
        acc = torch.matmul(dx, dw.t()).to(torch.int64)
        if self.bias is not None:
            acc = acc + self.bias.to(torch.int64)
        return acc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.requant.apply(self.accumulate(x), [-1])

    def _float_op(self, x):
        return F.linear(x, self.float_weight, self.float_bias)

    def extra_repr(self) -> str:
        return f"{self.source_layer}: w{tuple(self.weight.shape)} {self.weight_qparams.qtype}, {self.requant}"


class QAdd(IntegerOp):
    """a + b with a requant per input into the output scale.

    fp32: round(f32(f32(a−za)·Ma) + f32(f32(b−zb)·Mb)) + zo — two multiplies and one add,
    each rounded to float32 (no FMA). fixed_point: ((Δa·Ma + Δb·Mb + 2^(t−1)) >> t) + zo,
    one shift t shared by both multipliers, a single rounding.
    """

    op_name = "add"

    def __init__(self, a: QParams, b: QParams, out: QParams, mode: str,
                 act: Optional[FusedActivation] = None, source_layer: str = ""):
        super().__init__([a, b], out, source_layer)
        self.mode = mode
        real = torch.stack([real_multiplier(a.scale, out=out), real_multiplier(b.scale, out=out)])
        self.multipliers = real.to(torch.float32)
        _, shift = fixed_point_multiplier(real.max())
        self.shift = int(shift)
        self.m0 = torch.round(real * 2.0 ** self.shift).to(torch.int64)
        self.qmin, self.qmax = activation_clamp(out, act)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        qa, qb = self.input_qparams
        da = a.to(torch.int64) - qa.zero_point
        db = b.to(torch.int64) - qb.zero_point
        zo = self.output_qparams.zero_point_int()
        if self.mode == "fp32":
            y = da.to(torch.float32) * self.multipliers[0] + db.to(torch.float32) * self.multipliers[1]
            q = torch.round(y).to(torch.int64) + zo
        else:
            acc = da * self.m0[0] + db * self.m0[1] + (1 << (self.shift - 1))
            q = (acc >> self.shift) + zo
        return torch.clamp(q, self.qmin, self.qmax).to(self.output_qparams.qtype.storage)

    def _float_op(self, a, b):
        return a + b

    def extra_repr(self) -> str:
        return f"{self.source_layer}: {self.mode}, M={self.multipliers.tolist()}, clamp=[{self.qmin}, {self.qmax}]"


class QMul(IntegerOp):
    """a · b: the accumulator (a−za)(b−zb) requantized with M = sa·sb/so."""

    op_name = "mul"

    def __init__(self, a: QParams, b: QParams, out: QParams, requant: Requant, source_layer: str = ""):
        super().__init__([a, b], out, source_layer)
        self.requant = requant

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        qa, qb = self.input_qparams
        return self.requant.apply((a.to(torch.int64) - qa.zero_point) * (b.to(torch.int64) - qb.zero_point))

    def _float_op(self, a, b):
        return a * b


class _QPool(IntegerOp):
    """Average pools: exact window sums of (x − zx), requantized with M = si / (so · count).

    The count (and so the multiplier) may vary per output position (padding excluded,
    uneven adaptive windows), so the Requant is built per input size and cached.
    """

    def __init__(self, inp: QParams, out: QParams, mode: str, source_layer: str = ""):
        super().__init__([inp], out, source_layer)
        self.mode = mode
        self._requants: dict = {}

    def sums_and_counts(self, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sums, counts = self.sums_and_counts(_centered(x, self.input_qparams[0]))
        key = tuple(x.shape[-2:])           # counts depend only on the spatial size
        requant = self._requants.get(key)
        if requant is None:
            real = real_multiplier(self.input_qparams[0].scale, out=self.output_qparams) / counts.to(torch.float64)
            requant = self._requants[key] = Requant.make(real, self.output_qparams, self.mode)
        return requant.apply(sums, counts.shape)


class QAvgPool2d(_QPool):
    op_name = "avg_pool2d"

    def __init__(self, inp, out, mode, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override, source_layer: str = ""):
        super().__init__(inp, out, mode, source_layer)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def _pool(self, t, divisor_override):
        return F.avg_pool2d(t, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, divisor_override)

    def _float_op(self, x):
        return self._pool(x, self.divisor_override)

    def sums_and_counts(self, dx):
        sums = torch.round(self._pool(dx, 1)).to(torch.int64)
        if self.divisor_override:
            counts = torch.full(sums.shape[-2:], self.divisor_override, dtype=torch.int64)
        else:
            # torch's divisor per position: (window sum of ones) / (window mean of ones)
            ones = torch.ones((1, 1) + tuple(dx.shape[-2:]), dtype=torch.float64)
            counts = torch.round(self._pool(ones, 1) / self._pool(ones, None))[0, 0].to(torch.int64)
        return sums, counts


class QAdaptiveAvgPool2d(_QPool):
    op_name = "adaptive_avg_pool2d"

    def __init__(self, inp, out, mode, output_size, source_layer: str = ""):
        super().__init__(inp, out, mode, source_layer)
        self.output_size = output_size

    def _float_op(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def sums_and_counts(self, dx):
        h, w = dx.shape[-2:]
        oh, ow = F.adaptive_avg_pool2d(dx[..., :1, :1].expand(dx.shape[:-2] + (h, w)), self.output_size).shape[-2:]
        ch = torch.tensor([_window(i, h, oh) for i in range(oh)])
        cw = torch.tensor([_window(j, w, ow) for j in range(ow)])
        counts = ch[:, None] * cw[None, :]
        sums = torch.round(F.adaptive_avg_pool2d(dx, (oh, ow)) * counts.to(torch.float64)).to(torch.int64)
        return sums, counts


def _window(i: int, n_in: int, n_out: int) -> int:
    """Size of adaptive-pool window i: [floor(i·n/o), ceil((i+1)·n/o))."""
    return math.ceil((i + 1) * n_in / n_out) - (i * n_in) // n_out


class QRequantize(IntegerOp):
    """Change of quantization parameters: requant(q − zi) with M = si / so."""

    op_name = "requantize"

    def __init__(self, inp: QParams, out: QParams, mode: str, source_layer: str = ""):
        super().__init__([inp], out, source_layer)
        self.requant = Requant.make(real_multiplier(inp.scale, out=out), out, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.requant.apply(x.to(torch.int64) - self.input_qparams[0].zero_point)

    def _float_op(self, x):
        return x


class QCat(IntegerOp):
    """Concatenation; inputs whose qparams differ from the output's are requantized first."""

    op_name = "cat"

    def __init__(self, inputs: Sequence[QParams], out: QParams, mode: str, dim: int, source_layer: str = ""):
        super().__init__(inputs, out, source_layer)
        self.dim = dim
        self.requants = nn.ModuleList(
            nn.Identity() if qp.same_as(out) else QRequantize(qp, out, mode) for qp in inputs)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat([r(x) for r, x in zip(self.requants, xs)], self.dim)

    def _float_op(self, *xs):
        return torch.cat(xs, self.dim)


class Quantize(nn.Module):
    op_name = "quantize"

    def __init__(self, qparams: QParams):
        super().__init__()
        self.qparams = qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no integer stands for NaN or +-inf: refused, as the compiled code refuses them
        # (saturating them would give finite, plausible outputs; docs/robustness.md)
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError("a value to quantize holds NaN or an infinity: no integer stands for them, so the "
                             "quantized model refuses them (the float model would propagate them); check the "
                             "input data or the float op that produced it")
        return quantize(x, self.qparams)

    def extra_repr(self) -> str:
        return repr(self.qparams)


class Dequantize(nn.Module):
    op_name = "dequantize"

    def __init__(self, qparams: QParams):
        super().__init__()
        self.qparams = qparams

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return dequantize(q, self.qparams)

    def extra_repr(self) -> str:
        return repr(self.qparams)
