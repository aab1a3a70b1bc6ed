"""The ARM (AArch64) targets: a C target per NEON feature level.

    arm            baseline ARMv8-A NEON: smull/smlal2 + sadalp (needs int8_narrow weights)
    arm+dotprod    ARMv8.2 dotprod: sdot
    arm+i8mm       ARMv8.6 i8mm: smmla

Each is the shared C layer (backends/c_target.py) plus :class:`ArmGemm` (weights packed for the
level by gemm.pack_weights, the call into runtime/qc_arm_gemm_call.c) and a runtime built with
the level's ``-march``. On an aarch64 host a model is a shared library run in-process; elsewhere
a static program cross-compiled with aarch64-linux-gnu-gcc and run under ``qemu-aarch64 -cpu max``
(toolchain.runner): slow, but the same ARM code, bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import torch

from qcompiler.core.qconfig import GRANULARITIES, Capabilities

from .. import cpu, toolchain
from ..base import BackendUnsupported
from ..c_emitter import EMITTED_OPS, SERIAL_BELOW_MACS, GemmLowering, Lowering, RequantArrays
from ..c_target import SHARED_RUNTIME_FILES, CTarget, TargetSettings
from . import gemm
from .gemm import GLUE_DIR

#: convolutions whose im2col matrix has at least this many bytes, and at least this many rows per
#: output channel, run blocked (qc_arm_rt_conv_gemm): im2col of CONV_BLOCK_BYTES of rows, then its
#: GEMM, so the matrix stays in cache (the x86 thresholds; no ARM hardware here to tune them on)
CONV_BLOCKED_MIN_BYTES = 256 << 10
CONV_BLOCKED_ROWS_PER_COLUMN = 4
CONV_BLOCK_BYTES = 128 << 10

#: /proc/cpuinfo features (backends/cpu.py names) a level's code needs on a native host
LEVEL_FEATURES = {"neon": frozenset({"neon"}), "dotprod": frozenset({"neon", "neon_dot"}),
                  "i8mm": frozenset({"neon", "neon_dot", "i8mm"})}


class ArmGemm(GemmLowering):
    """Packs each GEMM's weights for one NEON level and emits the ``qc_arm_rt_gemm`` call."""

    def __init__(self, level: str):
        self.level = gemm.spec(level)

    def _pack(self, em: Lowering, weight, bias, a_zero_point, requant: RequantArrays) -> str:
        """The C arguments from za to rq."""
        n, k = weight.shape
        try:
            packed = gemm.pack_weights(weight.contiguous(), self.level.name)
        except ValueError as e:        # a weight of -128 at the baseline level: attributed to the node
            raise BackendUnsupported(str(e)) from None
        bias_c = em.weight(bias.to(torch.int32).contiguous(), "int32_t") if bias is not None else "NULL"
        return (f"{a_zero_point}, {em.weight(packed, 'uint8_t')}, {packed.numel()}, {bias_c}, "
                f"{em.rq_literal(requant)}")

    def emit(self, em: Lowering, *, a, lda, m, c, ldc, weight, bias, a_zero_point, requant: RequantArrays,
             add=None):
        n, k = weight.shape
        threads = "1" if m * n * k < SERIAL_BELOW_MACS else "threads"
        return [f"rc = qc_arm_rt_gemm({self.level.level_id}, {m}, {n}, {k}, {a}, {lda}, "
                f"{self._pack(em, weight, bias, a_zero_point, requant)}, {c}, {ldc}, {threads});",
                "if (rc) return rc;"]

    def emit_conv(self, em: Lowering, *, x, geom, window, c0, cg, pad, m, k, groups, c, ldc, weight, bias,
                  a_zero_point, requant: RequantArrays, add=None):
        """Large convolutions blocked (im2col of a block of rows that stays in cache, then its
        GEMM, per thread: the shared runtime's qc_rt_conv_blocked); the rest through the whole
        im2col matrix (None)."""
        n = weight.shape[0]
        if add is not None or m * k < CONV_BLOCKED_MIN_BYTES or m < CONV_BLOCKED_ROWS_PER_COLUMN * n:
            return None
        return ([f"rc = qc_arm_rt_conv_gemm({self.level.level_id}, {x}, {geom}, {c0}, {cg}, {pad}, {n}, "
                 f"{self._pack(em, weight, bias, a_zero_point, requant)}, {c}, {ldc}, {CONV_BLOCK_BYTES}, threads);",
                 "if (rc) return rc;"], "blocked im2col + GEMM", [])


class ArmBackend(CTarget):
    name = "arm"
    level = "neon"
    settings = TargetSettings(compiler="aarch64", native_machines=("aarch64", "arm64"),
                              depthwise_lanes=16)   # four q-registers of int32 accumulators

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            activation_dtypes=frozenset({"uint8", "int8"}),
            # the baseline adds two products in an int16 lane: weights in [-127, 127]
            weight_dtypes=frozenset({"int8_narrow"} if self.level == "neon" else {"int8", "int8_narrow"}),
            weight_granularities=frozenset(GRANULARITIES),
            asymmetric_weights=False,
            requant_modes=frozenset({"fp32", "fixed_point"}),
            ops=EMITTED_OPS,
            layouts=frozenset({"NHWC"}),
            isa_features=LEVEL_FEATURES[self.level],
            preferred_activation_dtype="uint8",
        )

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if cls.runs_natively():
            missing = LEVEL_FEATURES[cls.level] - cpu.cpu_features()
            if missing:
                return False, f"this CPU lacks {sorted(missing)} (/proc/cpuinfo), which {cls.name!r} needs"
        return super().availability()

    def variant(self) -> str:
        return self.level

    def gemm_lowering(self, variant: str) -> GemmLowering:
        return ArmGemm(variant)

    def runtime_source(self, variant: str) -> str:
        return gemm.library_source(variant, runtime=SHARED_RUNTIME_FILES)

    def runtime_flags(self, variant: str) -> list[str]:
        return [*toolchain.DEFAULT_FLAGS, f"-march={gemm.spec(variant).march}", "-pthread", *self.setting_flags()]

    def runtime_headers(self) -> list[Path]:
        return [*super().runtime_headers(), GLUE_DIR / "qc_arm_gemm_call.h"]


class ArmDotprodBackend(ArmBackend):
    name = "arm+dotprod"
    level = "dotprod"


class ArmI8mmBackend(ArmBackend):
    name = "arm+i8mm"
    level = "i8mm"


ARM_BACKENDS = (ArmBackend, ArmDotprodBackend, ArmI8mmBackend)

__all__ = ["ArmBackend", "ArmDotprodBackend", "ArmI8mmBackend", "ArmGemm", "ARM_BACKENDS"]
