"""The x86 target: a C target (backends/c_target.py) whose variants are the GEMM ISAs.

What it adds to the shared C layer: the ISA choice (CPUID, narrowed by
$QCOMPILER_CPU_FEATURES), :class:`X86Gemm` (weights packed for that ISA, the GEMM's C call,
shifted-view and blocked convolutions, fused residual adds), and its runtime library
(runtime_library.py: the shared runtime + the int8 GEMM kernels + their glue, one .so per
vectorization variant).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from qcompiler.core.qconfig import GRANULARITIES, Capabilities

from .. import cpu
from ..c_emitter import EMITTED_OPS, SERIAL_BELOW_MACS, GemmLowering, Lowering, RequantArrays
from ..c_target import CTarget, TargetSettings
from . import dynamic, gemm, runtime_library, weight_only
from .runtime_library import GLUE_DIR

#: integer ops with a kernel here: every op the shared emitter lowers, and the float-in float-out
#: linear layers of issue 12 through X86Gemm's hooks (emit_dynamic_linear: kernels/dynamic_linear.c;
#: emit_weight_only_linear / emit_half_linear: kernels/qc_x86_weight_only.h), which ARM lacks
SUPPORTED_OPS = EMITTED_OPS | {"dynamic_linear", "weight_only_linear", "half_linear"}

#: GEMM ISAs, fastest first, with the CPU features (backends/cpu.py names) each needs
ISA_PREFERENCE = (
    ("amx", frozenset({"avx512f", "avx512bw", "avx512vl", "amx_tile", "amx_int8"})),
    ("avx512vnni", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni"})),
    ("avxvnni", frozenset({"avx2", "avx_vnni"})),
    ("avx2", frozenset({"avx2"})),
    ("scalar", frozenset()),
)
ISA_NEEDS = dict(ISA_PREFERENCE)


#: AMX-packed GEMMs shallower than this run on AVX-512 VNNI (see X86Gemm.call_isa_id)
AMX_MIN_DEPTH = 128

#: convolutions whose im2col matrix has at least this many bytes, and at least this many rows
#: per output channel (so streaming W once per block of rows costs less than writing and
#: re-reading the matrix), run blocked: im2col of CONV_BLOCK_BYTES of rows, then its GEMM
CONV_BLOCKED_MIN_BYTES = 256 << 10
CONV_BLOCKED_ROWS_PER_COLUMN = 4
CONV_BLOCK_BYTES = 256 << 10


class ShiftedLimit(NamedTuple):
    """Where a kernel's shifted-view convolution (qc_gemm_shifted_<isa>) beats blocked im2col.
    The view is the padded image: ``max_padding`` bounds its share of rows that are not output
    ((oh + kh - 1) * (ow + kw - 1) / (oh * ow); AMX computes and drops them, the VNNI tiles
    skip them but run shorter along small images); ``thin`` says whether thin inputs (a kernel row
    of taps in one 64-byte K block: space-to-depth stems) win as well."""
    max_padding: float
    thin: bool


#: per kernel with a shifted-view entry, measured on ResNet-18 batch 8 against blocked im2col.
#: AMX (Sapphire Rapids): 1.4x faster at 56x56 (7 % more rows), 1.2x at 28x28 (15 %), even at
#: 14x14 (31 %), 0.8x at 7x7 (65 %); the thin stem wins too. AVX-512 VNNI (Zen 5), whose tiles
#: skip the border rows (gemm_driver.h): 1.05-1.12x at 56x56, 1.0-1.05x at 28x28, a tie at
#: 14x14, 0.92x at 7x7 (two tiles of 3-4 rows per image row, against 6-row tiles over im2col)
SHIFTED_LIMITS = {"amx": ShiftedLimit(max_padding=1.2, thin=True),
                  "avx512vnni": ShiftedLimit(max_padding=1.2, thin=False)}

#: kernels whose RGB stems run after a space-to-depth (GemmLowering.space_to_depth_stems).
#: AMX runs them on shifted views, no im2col (ResNet-18's, batch 8: 0.56x the time of blocked
#: im2col on the Xeon). Elsewhere the stem's own im2col wins, with 23 % fewer MACs (Zen 5,
#: ResNet-18 batch 8, quantize + stem: 2.13 ms against 2.53 on AVX-512 VNNI, 6.6 against 7.8
#: on AVX2; MobileNetV2 batch 1: 87 us against 99 on AVX-512 VNNI, even on AVX-VNNI)
SPACE_TO_DEPTH_ISAS = ("amx",)


def choose_isa(features: Optional[frozenset] = None) -> str:
    features = cpu.cpu_features() if features is None else features
    for isa, needs in ISA_PREFERENCE:
        # AMX also needs the kernel's permission for tile state, which only arch_prctl tells
        if needs <= features and (isa != "amx" or cpu.amx_permitted()):
            return isa
    raise AssertionError("unreachable: scalar needs nothing")


class X86Gemm(GemmLowering):
    """Packs each GEMM's weights for one ISA's layout and emits the ``qc_rt_gemm`` call."""

    def __init__(self, isa: str):
        self.isa = isa
        self.isa_id = gemm._ISA_ID[isa]
        self.space_to_depth_stems = isa in SPACE_TO_DEPTH_ISAS

    def call_isa_id(self, n: int, k: int) -> int:
        """The kernel for a GEMM of depth ``k`` and width ``n``. AMX-packed weights (= the AVX-512
        VNNI layout) run on AVX-512 VNNI where 64-deep AMX tiles would be mostly padding: shallow
        GEMMs (MobileNetV2's expansions, K = 16..96: 1.4-3x faster on the Xeon here) and, for
        N >= 64, depths with a partial last tile (ResNet's 7x7 stem, K = 147: 1.4x)."""
        if self.isa == "amx" and ISA_NEEDS["avx512vnni"] <= cpu.cpu_features() and (
                k < AMX_MIN_DEPTH or (k % 64 and k < 2 * AMX_MIN_DEPTH and n >= 64)):
            return gemm._ISA_ID["avx512vnni"]
        return self.isa_id

    def _pack(self, em: Lowering, weight, bias, a_zero_point, requant: RequantArrays) -> str:
        """Packs W and the requantization: the C arguments from the weights pointer to rq."""
        n, _ = weight.shape
        bias = torch.zeros(n, dtype=torch.int32) if bias is None else bias.to(torch.int32)
        packed = gemm.pack_weights(weight.contiguous(), bias.contiguous(), a_zero_point, self.isa,
                                   input_dtype=torch.uint8)
        rq = gemm.make_requant(packed, requant.mode, multiplier=requant.mult, m0=requant.m0, shift=requant.shift,
                               zero_point=requant.zp, qmin=requant.qmin, qmax=requant.qmax, out_dtype=torch.uint8)
        padded = RequantArrays(rq.mode, rq.mult, rq.m0, rq.shift, rq.zero_point, rq.qmin, rq.qmax)
        b = packed.blocking
        return (f"{em.weight(packed.data, 'uint8_t')}, {packed.nbytes}, {b.nr}, {b.kr}, {b.elem}, "
                f"{em.weight(packed.bias, 'int32_t')}, {em.rq_literal(padded)}")

    def emit(self, em: Lowering, *, a, lda, m, c, ldc, weight, bias, a_zero_point, requant: RequantArrays,
             add=None):
        n, k = weight.shape
        threads = "1" if m * n * k < SERIAL_BELOW_MACS else "threads"
        return [f"rc = qc_rt_gemm({self.call_isa_id(n, k)}, {m}, {n}, {k}, {a}, {lda}, "
                f"{self._pack(em, weight, bias, a_zero_point, requant)}, {c}, {ldc}, {add or 'NULL'}, {threads});",
                "if (rc) return rc;"]

    def fuses_add(self, n: int, k: int) -> bool:
        """The AVX-512 epilogue does residual adds: every call of AMX or AVX-512 VNNI packed
        weights runs one of those two kernels."""
        return self.isa in ("avx512vnni", "amx")

    def emit_dynamic_linear(self, em: Lowering, *, x, m, y, weight, weight_scales, bias, per_token, symmetric):
        """QDynamicLinear: one qc_rt_dynamic_linear call (range scan and quantize into the A
        operand, then the GEMM with a float epilogue) on the kernel for this ISA (dynamic.KERNELS)."""
        n, k = weight.shape
        threads = "1" if m * n * k < SERIAL_BELOW_MACS else "threads"
        return dynamic.emit_call(dynamic.KERNELS[self.isa], em, x=x, m=m, y=y, weight=weight,
                                 weight_scales=weight_scales, bias=bias, per_token=per_token, symmetric=symmetric,
                                 threads=threads)

    def emit_weight_only_linear(self, em: Lowering, *, x, m, y, qweight, bias, compute):
        """QWeightOnlyLinear: qc_x86_wo_linear, AVX2 + FMA where the CPU has them (weight_only.kernel_isa)."""
        return weight_only.emit_weight_only_linear(em, weight_only.kernel_isa(self.isa), x=x, m=m, y=y,
                                                   qweight=qweight, bias=bias, compute=compute)

    def emit_half_linear(self, em: Lowering, *, x, m, y, weight, bias):
        """QHalfLinear: qc_x86_half_linear (float16 weights on AVX2 also need F16C)."""
        return weight_only.emit_half_linear(em, weight_only.kernel_isa(self.isa, weight.dtype), x=x, m=m, y=y,
                                            weight=weight, bias=bias)

    def emit_conv(self, em: Lowering, *, x, geom, window, c0, cg, pad, m, k, groups, c, ldc, weight, bias,
                  a_zero_point, requant: RequantArrays, add=None):
        """Stride-1 convolutions over whole 64-channel blocks, or thin ones (a kernel row of taps
        in 64 bytes: space-to-depth stems), on AMX and AVX-512 VNNI: shifted views of the padded
        input, no im2col (qc_rt_conv_shifted), where SHIFTED_LIMITS says they win; other large ones
        blocked (qc_rt_conv_gemm): im2col of CONV_BLOCK_BYTES of rows, then its GEMM, where the
        im2col matrix would not stay in cache and there are rows enough for every thread."""
        n = weight.shape[0]
        nb, h, w, cin, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw = window
        shifted = SHIFTED_LIMITS.get(self.isa)
        if (shifted and groups == 1 and (sh, sw, dh, dw) == (1, 1, 1, 1) and kh * kw > 1
                and (cg % 64 == 0 or (shifted.thin and kw * cg <= 64))
                and (oh + kh - 1) * (ow + kw - 1) <= shifted.max_padding * oh * ow):
            if cg % 64:
                # thin input (a space-to-depth stem): one 64-k block per kernel row, its kw * cg
                # taps then zeros (the view reads a few bytes past them, which meet the zeros)
                rows = torch.zeros((n, kh, 64), dtype=weight.dtype)
                rows[:, :, :kw * cg] = weight.reshape(n, kh, kw * cg)
                weight = rows.reshape(n, kh * 64)
            return ([f"rc = qc_rt_conv_shifted({self.isa_id}, {x}, {geom}, {pad}, {n}, "
                     f"{self._pack(em, weight, bias, a_zero_point, requant)}, {c}, {ldc}, {add or 'NULL'}, "
                     f"{CONV_BLOCK_BYTES}, threads);",
                     "if (rc) return rc;"], f"{self.isa} on shifted views of the padded input", [])
        if m * k < CONV_BLOCKED_MIN_BYTES or m < CONV_BLOCKED_ROWS_PER_COLUMN * n:
            return None
        isa_id = self.isa_id if (self.isa == "amx" and k >= 64) else self.call_isa_id(n, k)
        return ([f"rc = qc_rt_conv_gemm({isa_id}, {x}, {geom}, {c0}, {cg}, {pad}, {n}, "
                 f"{self._pack(em, weight, bias, a_zero_point, requant)}, {c}, {ldc}, {add or 'NULL'}, "
                 f"{CONV_BLOCK_BYTES}, threads);",
                 "if (rc) return rc;"], "blocked im2col + GEMM", [])


class X86Backend(CTarget):
    name = "x86"
    settings = TargetSettings(compiler="cc", native_machines=("x86_64", "amd64", "i686", "i386"),
                              depthwise_lanes=16)   # one zmm of int32 (the AVX-512 depthwise kernels)

    @property
    def capabilities(self) -> Capabilities:     # a property: $QCOMPILER_CPU_FEATURES is read per use
        return Capabilities(
            activation_dtypes=frozenset({"uint8", "int8"}),
            weight_dtypes=frozenset({"int8", "int8_narrow"}),
            weight_granularities=frozenset(GRANULARITIES),
            asymmetric_weights=False,
            requant_modes=frozenset({"fp32", "fixed_point"}),
            ops=SUPPORTED_OPS,
            layouts=frozenset({"NHWC"}),
            isa_features=cpu.cpu_features(),
            preferred_activation_dtype="uint8",
        )

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if not cls.runs_natively():
            return False, f"the x86 target needs an x86-64 machine, this one is {platform.machine()}"
        return super().availability()

    def variant(self) -> str:
        """The GEMM ISA: the fastest this CPU has (CPUID, narrowed by $QCOMPILER_CPU_FEATURES)."""
        return choose_isa()

    def gemm_lowering(self, variant: str) -> GemmLowering:
        return X86Gemm(variant)

    def runtime_headers(self) -> list[Path]:
        return [*super().runtime_headers(), *weight_only.MODEL_HEADERS, GLUE_DIR / "qc_x86_gemm_call.h",
                GLUE_DIR / "qc_x86_dynamic.h"]

    def runtime_source(self, variant: str) -> str:
        return runtime_library.runtime_source(self.runtime_sources(variant))

    def runtime_sources(self, variant: str) -> list[Path]:
        return [*super().runtime_sources(variant), *weight_only.RUNTIME_FILES,
                GLUE_DIR / "qc_x86_gemm_call.h", GLUE_DIR / "qc_x86_gemm_call.c",
                GLUE_DIR / "qc_x86_dynamic.h"]     # its kernel: runtime_library.runtime_source appends it

    def runtime_flags(self, variant: str) -> list[str]:
        """The flags the runtime was built with (a compiler without VNNI support builds AVX2 and
        scalar variants with fewer: runtime_library's fallback)."""
        return self._runtime(variant)[1]

    def build_runtime(self, variant: str, as_object: bool = False) -> Path:
        return self._runtime(variant)[0]

    def _runtime(self, variant: str) -> tuple[Path, list[str]]:
        return runtime_library.runtime_library(variant, self.runtime_source(variant), self.setting_flags())


__all__ = ["X86Backend", "X86Gemm", "choose_isa", "SUPPORTED_OPS"]
