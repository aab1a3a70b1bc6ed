"""The x86 backend: generated C for AVX2, AVX-VNNI, AVX-512 VNNI and AMX, chosen by CPUID.

:class:`X86Backend` (target ``"x86"``) is a C target (``backends/c_target.py``): one generated C
file per model (``backends/c_emitter/``) linked against the x86 runtime library
(``runtime_library.py``: the shared runtime + the int8 GEMM micro-kernels with packed weights
and a fused requantization epilogue, ``kernels/``), loaded as a
:class:`qcompiler.backends.native_model.NativeModel`. ``gemm.py`` calls the GEMM directly
(``pack_weights``, ``gemm``, ``qlinear_forward``).
"""
from .backend import X86Backend, choose_isa

__all__ = ["X86Backend", "choose_isa"]
