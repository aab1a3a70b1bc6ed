"""Weight-only quantization: int8 / int4 / NF4 weights with per-channel or per-group scales.

Activations stay float32; only the weights are stored in few bits, which is what makes the
memory-bound decode GEMV (one token at a time) fast. Each output channel's K weights are cut
into groups of ``group_size`` consecutive values (per channel: one group of K), each with its
own float32 scale (and, for asymmetric int4, its own zero point).

Exact semantics (docs/numerics.md, "Weight-only quantization"):

    int8  (symmetric):  code ∈ [−127, 127],  ŵ = f32(code) · s
    int4  (symmetric):  nibble ∈ [1, 15],    ŵ = f32(nibble − 8) · s       (values −7..7)
    int4  (asymmetric): nibble ∈ [0, 15],    ŵ = f32(nibble − zp) · s      (zp per group, 0..15)
    nf4:                nibble ∈ [0, 15],    ŵ = NF4[nibble] · s           (s = the group's max |w|)
    y = f32(Σ_k x_k · ŵ_k) + bias     the dot product exact, then rounded once to float32

4-bit codes are packed two per byte along K: the low nibble holds the even k, the high
nibble the odd k. A kernel's float32 accumulation differs from the exactly rounded dot
product by at most its rounding error (tests/test_weight_only_ops.py states the bound); the
dequantized weights ŵ themselves are exact, and so is the embedding (a copy of ŵ's rows).
With ``compute="bfloat16"``, x and ŵ are rounded to bfloat16 first (products are exact in
float32), as ``vdpbf16ps`` computes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .integer_ops import IntegerOp

#: weight formats of weight-only quantization, and the group sizes offered along K
WEIGHT_ONLY_DTYPES = ("int8", "int4", "nf4")
COMPUTE_DTYPES = ("float32", "bfloat16")

#: the 16 NormalFloat-4 levels (QLoRA, Dettmers et al. 2023): quantiles of N(0, 1) scaled to [-1, 1],
#: with an exact zero
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=torch.float32)

#: the implicit zero point of symmetric int4 nibbles (code = value + 8)
INT4_SYMMETRIC_ZERO = 8


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..15 → uint8 [N, K/2]: even k in the low nibble, odd k in the high."""
    c = codes.to(torch.uint8)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_nibbles: uint8 [N, K/2] → int64 [N, K]."""
    p = packed.to(torch.int64)
    return torch.stack([p & 15, p >> 4], dim=-1).reshape(p.shape[0], -1)


class QuantizedWeight:
    """A [N, K] float weight quantized per group: codes (packed for 4 bits), scales, zero points."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor],
                 dtype: str, group_size: int, k: int):
        self.codes, self.scales, self.zero_points = codes, scales, zero_points
        self.dtype, self.group_size, self.k = dtype, group_size, k

    @classmethod
    def quantize(cls, weight: torch.Tensor, dtype: str, group_size: Optional[int], symmetric: bool = True):
        """Round a float weight to ``dtype`` with one scale per ``group_size`` values along K (None: per
        channel). Scales are float32; codes are the nearest level for their scale (ties to even); a
        4-bit group's scale is the one of SHRINK_FACTORS with the least squared error (fit_groups)."""
        w = weight.detach().to(torch.float32)
        n, k = w.shape
        g = check_format(dtype, symmetric, k, group_size)
        scales, zps, codes = fit_groups(w.reshape(n, k // g, g), dtype, symmetric)
        return cls.from_codes(codes.reshape(n, k), scales, zps, dtype, g)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor],
                   dtype: str, group_size: int):
        """The stored form of [N, K] codes as group_codes gives them (signed values for int8 and
        symmetric int4, nibbles otherwise), with their groups' scales [N, K/G] and zero points."""
        n, k = codes.shape
        if dtype == "int4" and zero_points is None:
            codes = codes + INT4_SYMMETRIC_ZERO
        stored = codes.to(torch.int8) if dtype == "int8" else pack_nibbles(codes)
        zps = None if zero_points is None else zero_points.to(torch.uint8).contiguous()
        return cls(stored, scales.to(torch.float32).contiguous(), zps, dtype, group_size, k)

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    def dequantize(self) -> torch.Tensor:
        """ŵ, float32 [N, K] (module docstring)."""
        n, g = self.codes.shape[0], self.group_size
        if self.dtype == "int8":
            values = self.codes.to(torch.float32).reshape(n, -1, g)
        else:
            codes = unpack_nibbles(self.codes).reshape(n, -1, g)
            if self.dtype == "nf4":
                values = NF4_LEVELS[codes]
            else:
                zp = INT4_SYMMETRIC_ZERO if self.zero_points is None else self.zero_points.to(torch.int64)[..., None]
                values = (codes - zp).to(torch.float32)
        return (values * self.scales[..., None]).reshape(n, self.k)

    def describe(self) -> str:
        groups = "per channel" if self.group_size == self.k else f"groups of {self.group_size}"
        sym = "" if self.dtype != "int4" else (" symmetric" if self.symmetric else " asymmetric")
        return f"{self.dtype}{sym}, {groups}"


def check_format(dtype: str, symmetric: bool, k: int, group_size: Optional[int]) -> int:
    """The group size along K (``group_size``, or K for None: per channel) of a valid format."""
    if dtype not in WEIGHT_ONLY_DTYPES:
        raise ValueError(f"weight-only dtype must be one of {WEIGHT_ONLY_DTYPES}, got {dtype!r}")
    if not symmetric and dtype != "int4":
        raise ValueError(f"asymmetric weight-only quantization is offered for int4 only, not {dtype}")
    g = k if group_size is None else group_size
    if k % g or (dtype != "int8" and k % 2):
        raise ValueError(f"K={k} is not a multiple of the group size {g}" if k % g
                         else f"K={k} is odd: 4-bit codes are packed two per byte")
    return g


#: a 4-bit group's range is tried at these fractions of its full extent, and the scale with the least
#: squared reconstruction error kept (ties: the larger). 15 or 16 levels leave steps wide enough that
#: clipping a group's one or two extremes often buys more for the rest than it costs them: on
#: all-MiniLM-L6-v2's Linear weights +0.5 dB at G = 32 and +0.9 dB at G = 128 for symmetric int4,
#: +0.3 / +0.5 dB asymmetric, +0.6 / +0.5 dB NF4. Finer or wider grids (0.01 steps, down to 0.5)
#: gained under 0.01 dB more. int8 keeps the full range (its steps are 18 times finer).
SHRINK_FACTORS = tuple(1.0 - 0.02 * i for i in range(11))
#: NF4 codes: the level nearest w / s is the number of midpoints between levels below it
_NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2


def fit_groups(wg: torch.Tensor, dtype: str, symmetric: bool):
    """(scales [N, G], zero points [N, G] or None, codes [N, G, g]) of the groups of ``wg`` [N, G, g]:
    for each shrink factor, every group's scale (and zero point) from its shrunk range and its
    nearest codes; kept per group where the squared error of ŵ (computed as dequantize does) is
    the least so far. Codes are signed values for int8 / symmetric int4, nibbles otherwise."""
    w64, best = wg.to(torch.float64), None
    for f in (SHRINK_FACTORS if dtype != "int8" else (1.0,)):
        scales, zps = _group_params(wg, dtype, symmetric, f)
        codes = group_codes(wg, dtype, scales, zps)
        err = ((w64 - group_dequantized(codes, dtype, scales, zps).to(torch.float64)) ** 2).sum(dim=2)
        if best is None:
            best = [err, scales, zps, codes]
            continue
        better = err < best[0]
        best[0] = torch.where(better, err, best[0])
        best[1] = torch.where(better, scales, best[1])
        best[2] = None if zps is None else torch.where(better, zps, best[2])
        best[3] = torch.where(better[..., None], codes, best[3])
    return best[1].contiguous(), best[2], best[3]


def _group_params(wg: torch.Tensor, dtype: str, symmetric: bool, f: float):
    """Every group's scale (and zero point) covering its range shrunk by ``f``."""
    if dtype == "nf4":
        return wg.abs().amax(dim=2) * f, None
    if symmetric:
        return wg.abs().amax(dim=2) * f / (127.0 if dtype == "int8" else 7.0), None
    lo = torch.minimum(wg.amin(dim=2), torch.zeros(())) * f
    hi = torch.maximum(wg.amax(dim=2), torch.zeros(())) * f
    scales = (hi - lo) / 15.0
    return scales, torch.clamp(torch.round(-lo / _nonzero(scales)), 0, 15).to(torch.int64)


def group_codes(wg: torch.Tensor, dtype: str, scales: torch.Tensor, zps: Optional[torch.Tensor]) -> torch.Tensor:
    """The code nearest each value for its group's scale (and zero point), clamped to the format."""
    unit = wg / _nonzero(scales)[..., None]
    if dtype == "nf4":
        return torch.bucketize(unit, _NF4_MIDPOINTS)            # at a midpoint exactly: the lower level
    if zps is None:
        top = 127.0 if dtype == "int8" else 7.0
        return torch.clamp(torch.round(unit), -top, top).to(torch.int64)
    return torch.clamp(torch.round(unit) + zps[..., None], 0, 15).to(torch.int64)


def group_dequantized(codes: torch.Tensor, dtype: str, scales: torch.Tensor,
                       zps: Optional[torch.Tensor]) -> torch.Tensor:
    """ŵ of group_codes' codes, the float32 operations of dequantize()."""
    if dtype == "nf4":
        values = NF4_LEVELS[codes]
    else:
        values = (codes if zps is None else codes - zps[..., None]).to(torch.float32)
    return values * scales[..., None]


def _nonzero(scales: torch.Tensor) -> torch.Tensor:
    """A group of zeros has scale 0; dividing by 1 instead gives its codes (all zero) unchanged."""
    return torch.where(scales > 0, scales, torch.ones_like(scales))


def reconstruction_sqnr_db(weight: torch.Tensor, qw: QuantizedWeight) -> float:
    """10·log10(‖w‖² / ‖w − ŵ‖²) of a weight and its quantized form."""
    w = weight.detach().to(torch.float64)
    err = float(((w - qw.dequantize().to(torch.float64)) ** 2).sum())
    return math.inf if err == 0 else 10 * math.log10(float((w ** 2).sum()) / err)


def round_bfloat16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def exact_linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """f32(Σ_k x_k · w_k) + bias: the dot products exact (float64 holds every product of two
    float32 values with ≤ 24-bit mantissas exactly, and their sums to within 2^-53 relative),
    rounded once to float32, then the bias added in float32."""
    y = torch.matmul(x.to(torch.float64), w.to(torch.float64).t()).to(torch.float32)
    return y if bias is None else y + bias


class QWeightOnlyLinear(IntegerOp):
    """y = x · ŵᵀ + b with ŵ the dequantized int8/int4/NF4 weight (module docstring)."""

    op_name = "weight_only_linear"
    integer_arithmetic = False

    def __init__(self, qweight: QuantizedWeight, bias: Optional[torch.Tensor], compute: str = "float32",
                 source_layer: str = ""):
        super().__init__([], None, source_layer)
        if compute not in COMPUTE_DTYPES:
            raise ValueError(f"compute must be one of {COMPUTE_DTYPES}, got {compute!r}")
        self.register_buffer("codes", qweight.codes)
        self.register_buffer("scales", qweight.scales)
        self.register_buffer("zero_points", qweight.zero_points)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))
        self.dtype, self.group_size, self.in_features = qweight.dtype, qweight.group_size, qweight.k
        self.compute = compute

    @property
    def qweight(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes, self.scales, self.zero_points, self.dtype, self.group_size,
                               self.in_features)

    @property
    def out_features(self) -> int:
        return int(self.codes.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.dequantize()
        x = x.to(torch.float32)
        if self.compute == "bfloat16":
            x, w = round_bfloat16(x), round_bfloat16(w)
        return exact_linear(x, w, self.bias)

    def _float_op(self, x):
        return F.linear(x, self.float_weight, self.float_bias)

    def extra_repr(self) -> str:
        return (f"{self.source_layer}: w[{self.out_features}, {self.in_features}] {self.qweight.describe()}, "
                f"compute {self.compute}")


class QWeightOnlyEmbedding(IntegerOp):
    """y[..., :] = ŵ[ids[...], :]: rows of the dequantized table (exact: a copy of ŵ)."""

    op_name = "weight_only_embedding"
    integer_arithmetic = False

    def __init__(self, qweight: QuantizedWeight, source_layer: str = ""):
        super().__init__([], None, source_layer)
        self.register_buffer("codes", qweight.codes)
        self.register_buffer("scales", qweight.scales)
        self.register_buffer("zero_points", qweight.zero_points)
        self.dtype, self.group_size, self.embedding_dim = qweight.dtype, qweight.group_size, qweight.k

    @property
    def qweight(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes, self.scales, self.zero_points, self.dtype, self.group_size,
                               self.embedding_dim)

    @property
    def num_embeddings(self) -> int:
        return int(self.codes.shape[0])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from .embedding_ops import check_indices
        check_indices(ids, self.num_embeddings, f"{self.source_layer} (Embedding)")
        return self.qweight.dequantize()[ids]

    def _float_op(self, ids):
        return self.float_weight[ids]

    def extra_repr(self) -> str:
        return f"{self.source_layer}: [{self.codes.shape[0]}, {self.embedding_dim}] {self.qweight.describe()}"


class QHalfLinear(IntegerOp):
    """y = f32(Σ_k h(x_k) · w_k) + b with weights stored in half precision and the input rounded
    to it (h: round to bfloat16 or float16, ties to even). A product of two halves is exact in
    float32 (8 + 8 or 11 + 11 significant bits), so only the accumulation rounds."""

    op_name = "half_linear"
    integer_arithmetic = False

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], source_layer: str = ""):
        super().__init__([], None, source_layer)
        if weight.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"{source_layer}: half-precision weights are bfloat16 or float16, got {weight.dtype}")
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def half_dtype(self) -> torch.dtype:
        return self.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xh = x.to(torch.float32).to(self.half_dtype).to(torch.float32)
        return exact_linear(xh, self.weight.to(torch.float32), self.bias)

    def _float_op(self, x):
        return F.linear(x, self.float_weight, self.float_bias)

    def extra_repr(self) -> str:
        return f"{self.source_layer}: w{tuple(self.weight.shape)} {str(self.half_dtype).replace('torch.', '')}"
