"""The x86 backend: generated C for AVX2, AVX-VNNI and AVX-512 VNNI, chosen by CPUID.

So far: the int8 GEMM micro-kernels with packed weights and a fused requantization
epilogue, bit-exact with the reference ``QLinear`` — see :mod:`qcompiler.backends.x86.gemm`
(``pack_weights``, ``gemm``, ``qlinear_forward``) and ``kernels/`` for the C sources.

The whole-model compiler: :class:`X86Backend` (target ``"x86"``) emits one C file per model
(``backends/c_emitter/``) linked against the runtime library (``runtime_library.py``);
:class:`X86CompiledModel` runs it, :func:`load_bundle` loads a saved bundle.
"""
from .backend import X86Backend, choose_isa
from .compiled_model import NativeModelError, X86CompiledModel, load_bundle

__all__ = ["X86Backend", "X86CompiledModel", "NativeModelError", "load_bundle", "choose_isa"]
