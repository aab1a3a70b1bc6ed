"""The ARM (AArch64) targets ``arm``, ``arm+dotprod`` and ``arm+i8mm``: backend.py (the targets and
their GemmLowering), gemm.py (levels, weight packing, the runtime's C text), kernels/ (NEON GEMM
and depthwise, scalar references), runtime/ (the model-facing glue)."""
from .backend import ARM_BACKENDS, ArmBackend, ArmDotprodBackend, ArmI8mmBackend

__all__ = ["ARM_BACKENDS", "ArmBackend", "ArmDotprodBackend", "ArmI8mmBackend"]
