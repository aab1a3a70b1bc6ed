"""The emitter's program: quantized tensors in the arena, requantization arrays, steps, I/O."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.fx as fx

from qcompiler.core.integer_ops import Requant
from qcompiler.core.provenance import user_label
from qcompiler.core.qtypes import QParams

from ..base import BackendUnsupported
from ..memory_plan import Buffer, MemoryPlan


#: ``placeholder.meta`` key: the QParams of an integer segment input (set by partitioning)
INPUT_QPARAMS = "qc_input_qparams"


def unsupported(node: fx.Node, why: str) -> BackendUnsupported:
    return BackendUnsupported(f"cannot compile {user_label(node)}: {why}", node.name, why)


# ---------------------------------------------------------------------------------------
# Tensors of the generated program
# ---------------------------------------------------------------------------------------

@dataclass(eq=False)
class QTensor:
    """A quantized tensor in the arena: uint8 storage, zero point in the stored domain."""

    shape: tuple
    layout: str           # "nhwc" (4-d activations), "plain" (torch's contiguous order) or
                          # "nhwc_flat" (flatten(1) of an NHWC tensor, bytes still in NHWC order)
    zp: int               # stored zero point (int8: zero point + 128)
    signed: bool          # the reference type is int8 (stored shifted)
    qparams: QParams
    buffer: Buffer
    nhwc_dims: Optional[tuple] = None     # (N, C, H, W) of a "nhwc_flat" tensor
    space_to_depth: Optional[tuple] = None  # (s, (N, C, H, W) before): quantized into the layout a
                                            # strided convolution reads (its one consumer)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def same_bytes_as(self, layout: str) -> bool:
        """NHWC and NCHW orders coincide when C == 1 or H·W == 1."""
        if layout == self.layout:
            return True
        dims = self.nhwc_dims if self.layout == "nhwc_flat" else self.shape
        if len(dims) != 4:
            return True
        _, c, h, w = dims
        return c == 1 or h * w == 1


@dataclass(eq=False)
class FTensor:
    """A float32 tensor of the program, in torch's contiguous order: the output of an op that
    computes in float (dynamic, weight-only, half-precision linear layers) in the arena, or a
    float input of the program read in place (``c_expr``)."""

    shape: tuple
    buffer: Optional[Buffer] = None
    c_expr: Optional[str] = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


#: the runtime's enum (qc_runtime.h, qc_rq.mode) for each requantization mode of core.Requant
C_REQUANT_MODES = {"fp32": "QC_RQ_FP32", "fixed_point": "QC_RQ_FIXED_POINT"}


def c_requant_mode(mode: str) -> str:
    return C_REQUANT_MODES[mode]


def stored(v: int, signed: bool) -> int:
    return int(v) + (128 if signed else 0)


@dataclass
class RequantArrays:
    """A core Requant (or a slice of its channels) in the stored domain."""

    mode: str
    mult: torch.Tensor     # float32 [n]
    m0: torch.Tensor       # int64 [n]
    shift: torch.Tensor    # int64 [n]
    zp: int
    qmin: int
    qmax: int

    @classmethod
    def from_requant(cls, rq: Requant, n: int, signed: bool, lo: int = 0, hi: Optional[int] = None):
        def chan(t, dtype):
            t = t.reshape(-1).to(dtype)
            t = t.expand(n) if t.numel() == 1 else t
            return t[lo:hi].contiguous()
        return cls(rq.mode, chan(rq.multiplier, torch.float32), chan(rq.m0, torch.int64),
                   chan(rq.shift, torch.int64), stored(rq.zero_point, signed), stored(rq.qmin, signed),
                   stored(rq.qmax, signed))


class GemmLowering:
    """What a target supplies for C = requant(A · Wᵀ + bias): packing and the C call."""

    #: run thin strided convolutions (RGB stems) as stride 1 over s*s*cin channels after a
    #: space-to-depth of their input (fewer, longer rows of taps, but more K: 192 for
    #: ResNet's 7x7 s2 instead of 147), rather than on their own input
    space_to_depth_stems: bool = False

    def emit(self, em: "Lowering", *, a: str, lda: int, m: int, c: str, ldc: int, weight: torch.Tensor,
             bias: Optional[torch.Tensor], a_zero_point: int, requant: RequantArrays,
             add: Optional[str] = None) -> list[str]:
        """``add``: a ``qc_rt_add_params *`` C expression (a residual add fused into the epilogue),
        only where :meth:`fuses_add` said yes."""
        raise NotImplementedError

    def fuses_add(self, n: int, k: int) -> bool:
        """Can the epilogue of a GEMM of width n and depth k also do a residual add?"""
        return False

    def emit_dynamic_linear(self, em: "Lowering", *, x: str, m: int, y: str, weight: torch.Tensor,
                            weight_scales: torch.Tensor, bias: Optional[torch.Tensor], per_token: bool,
                            symmetric: bool) -> tuple[list[str], list]:
        """QDynamicLinear (core/dynamic_ops.py), bit for bit: ``x`` a ``const float *`` [m, k], ``y`` a
        ``float *`` [m, n]; int8 ``weight`` [n, k], float32 ``weight_scales`` [n] and ``bias`` [n] (or
        None). Returns (C lines, scratch buffers from ``em.scratch`` it uses)."""
        raise BackendUnsupported("this target has no dynamic int8 GEMM (dynamic_linear)")

    def emit_conv(self, em: "Lowering", *, x: str, geom: str, window: tuple, c0: int, cg: int, pad: int,
                  m: int, k: int, groups: int, c: str, ldc: int, weight: torch.Tensor,
                  bias: Optional[torch.Tensor], a_zero_point: int, requant: RequantArrays,
                  add: Optional[str] = None) -> Optional[tuple[list[str], str, list]]:
        """A convolution (one group) as a fused call — (C lines, how it runs, scratch buffers
        from ``em.scratch`` it uses) — or None: the emitter then writes the whole im2col matrix
        and calls :meth:`emit` on it. ``window``: (n, h, w, cin, oh, ow, kh, kw, sh, sw, ph, pw,
        dh, dw); ``geom``: the same as a C ``qc_window *``; weights are [cout, (ky, kx, c)]."""
        return None

    def emit_weight_only_linear(self, em: "Lowering", *, x: str, m: int, y: str, qweight,
                                bias: Optional[torch.Tensor], compute: str) -> tuple[list[str], list]:
        """y[m, n] = x[m, k] · ŵᵀ + bias in float32 (core.weight_only_ops.QWeightOnlyLinear; ``qweight``
        its QuantizedWeight, ``compute`` "float32" or "bfloat16"); ``x`` / ``y``: ``float *`` C
        expressions of contiguous rows. Returns (C lines, scratch buffers from ``em.scratch`` it uses)."""
        raise BackendUnsupported("this target has no weight-only linear kernel (weight_only_linear)")

    def emit_half_linear(self, em: "Lowering", *, x: str, m: int, y: str, weight: torch.Tensor,
                         bias: Optional[torch.Tensor]) -> tuple[list[str], list]:
        """y = h(x) · weightᵀ + bias, weight bfloat16/float16 [n, k] (core.weight_only_ops.QHalfLinear),
        as :meth:`emit_weight_only_linear`."""
        raise BackendUnsupported("this target has no half-precision linear kernel (half_linear)")


# ---------------------------------------------------------------------------------------
# Lowering: graph → steps
# ---------------------------------------------------------------------------------------

@dataclass
class Step:
    comment: str
    lines: list


@dataclass
class IOSpec:
    name: str
    shape: tuple
    dtype: str           # float32 in/out; the integer dtype of an output for run_int; float32 for a
                         # raw float output
    scale: float = 0.0
    zero_point: int = 0
    #: an int8/uint8 value crossing into or out of the program as integers (a segment boundary
    #: next to an op that runs in PyTorch), not through a quantize/dequantize
    raw: bool = False
    #: an integer index input (token ids) into tables of this many rows: valid indices are below it
    index_rows: int = 0


@dataclass
class Program:
    steps: list
    plan: MemoryPlan
    inputs: list
    outputs: list
    weights: bytes
    weights_digest: str
    name: str
    tuple_output: bool = False
