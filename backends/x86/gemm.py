"""x86 int8 GEMM micro-kernels with packed weights and a fused requantization epilogue.

    C[m, n] = requant( Σ_k (A[m, k] − za) · W[n, k] + bias[n] )

A is uint8 (or int8, shifted by +128 to uint8 here), W int8 symmetric (zero point 0),
packed ahead of time by :func:`pack_weights`; the zero-point compensation −za·Σ_k W[n, k]
is folded into the packed int32 bias, so the kernels accumulate Σ A·W directly. The
requantization (``fp32`` or ``fixed_point``, DESIGN.md §3) and the clamp (fused ReLU) run
in the kernel's epilogue; the result is bit-for-bit the reference's
(:class:`qcompiler.core.integer_ops.QLinear` / :class:`Requant`).

Kernels (``kernels/*.c``, one shared library, chosen per call or by CPUID):

========== ================================================ ====== ===== =====
ISA        inner product                                    MR×NR  KR    W
========== ================================================ ====== ===== =====
scalar     portable C, uint32 wrapping                      4×16   4     int8
avx2       vpmaddwd on int16 (exact; never vpmaddubsw)      6×16   2     int16
avxvnni    {vex} vpdpbusd ymm                               6×16   4     int8
avx512vnni vpdpbusd zmm                                     6×64   4     int8
amx        tdpbusd on 16×64-byte tiles (2×2 C tiles)        32×32  4     int8 (= avx512vnni)
``*_emu``  the same source, vpdpbusd / tile ops emulated    same as native
========== ================================================ ====== ===== =====

The blocking table :data:`BLOCKING` is the one place these numbers live: they are passed to
the compiler as ``-DQC_<ISA>_MR=…`` and read back from the library to check.
"""
from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch

from .gemm_library import (BLOCKING, ISAS, Blocking, GemmError, UnsupportedISA, _Args, _FAMILY,  # noqa: F401
                           _ISA_ID, _Library, _check_isa_name, _resolve, _strerror, available_isas,
                           best_isa, build_flags, build_library, isa_supported, library, library_source)

__all__ = [
    "Blocking", "BLOCKING", "ISAS", "GemmError", "UnsupportedISA", "PackedWeights", "RequantParams",
    "library", "build_library", "library_source", "build_flags", "isa_supported", "available_isas", "best_isa",
    "pack_weights", "make_requant", "requant_params_from", "gemm", "qlinear_forward", "LinearKernel",
    "dpbusd",
]


#: with weights packed for AMX, ``isa="auto"`` runs problems of fewer rows than this on
#: AVX-512 VNNI (same packed layout): a 16-row tile is mostly idle for them
AMX_MIN_ROWS = 8

_QC_OUT = {torch.uint8: 0, torch.int8: 1, torch.int32: 2, torch.float32: 3}
_QC_MODE = {"none": 0, "fp32": 1, "fixed_point": 2}


# ---------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------

def _aligned_empty(nbytes: int, align: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, view): a uint8 view of ``nbytes`` starting on an ``align``-byte boundary."""
    owner = torch.empty(nbytes + align, dtype=torch.uint8)
    off = (-owner.data_ptr()) % align
    return owner, owner[off:off + nbytes]


def _wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 → int32 modulo 2^32 (two's complement), as the kernel's wrapping adds."""
    return (((x + 2**31) % 2**32) - 2**31).to(torch.int32)


@dataclass(eq=False)
class PackedWeights:
    """Weights packed for one kernel layout (and the input dtype/zero point they were
    folded with). ``data`` holds ceil(N/nr) panels of ceil(K/kr) groups of nr×kr elements
    (gemm_common.h), zero-padded; ``bias`` the int32 bias with −za·Σ_k W[n, k] folded in
    (za +128 for int8 inputs), padded to n_pad. Tensors are owned here (kept alive)."""

    isa: str
    n: int
    k: int
    n_pad: int
    k_pad: int
    blocking: Blocking
    data: torch.Tensor
    bias: torch.Tensor
    input_zero_point: int
    input_dtype: torch.dtype
    _owner: torch.Tensor = field(repr=False)

    @property
    def nbytes(self) -> int:
        return self.data.numel()


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(x)
    except Exception as e:
        raise TypeError(f"{name}: expected a tensor or array, got {type(x).__name__}") from e


def pack_weights(weight, bias=None, input_zero_point: int = 0, isa: str = "auto", *,
                 input_dtype: torch.dtype = torch.uint8) -> PackedWeights:
    """Pack int8 weights ``[N, K]`` (zero point 0) and an int32 bias ``[N]`` for ``isa``.

    ``input_zero_point`` and ``input_dtype`` (uint8, or int8 shifted to uint8 by +128)
    are those of the activations the weights will meet: their compensation is folded into
    the packed bias. Packed weights serve every kernel with the same layout (a native VNNI
    ISA and its emulation).
    """
    isa = _resolve(isa)
    w = _as_tensor(weight, "weight")
    if w.dtype != torch.int8:
        raise TypeError(f"weight must be int8, got {w.dtype}")
    if w.dim() != 2 or w.shape[0] <= 0 or w.shape[1] <= 0:
        raise ValueError(f"weight must be a non-empty 2-D [N, K] tensor, got shape {tuple(w.shape)}")
    n, k = int(w.shape[0]), int(w.shape[1])
    if input_dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"input_dtype must be torch.uint8 or torch.int8, got {input_dtype}")
    zp = int(input_zero_point)
    lo, hi = (0, 255) if input_dtype == torch.uint8 else (-128, 127)
    if not lo <= zp <= hi:
        raise ValueError(f"input zero point {zp} is outside the {input_dtype} range [{lo}, {hi}]")
    za = zp + (128 if input_dtype == torch.int8 else 0)
    if bias is None:
        b64 = torch.zeros(n, dtype=torch.int64)
    else:
        b = _as_tensor(bias, "bias")
        if b.dtype not in (torch.int32, torch.int64) or b.shape != (n,):
            raise ValueError(f"bias must be int32 of shape ({n},), got {b.dtype} {tuple(b.shape)}")
        b64 = b.to(torch.int64)

    blk = BLOCKING[_FAMILY[isa]]
    n_pad = -(-n // blk.nr) * blk.nr
    k_pad = -(-k // blk.kr) * blk.kr
    packed_bias = torch.zeros(n_pad, dtype=torch.int32)
    packed_bias[:n] = _wrap_int32(b64 - za * w.to(torch.int64).sum(dim=1))

    wp = torch.zeros((n_pad, k_pad), dtype=torch.int16 if blk.elem == 2 else torch.int8)
    wp[:n, :k] = w
    panels = (wp.reshape(n_pad // blk.nr, blk.nr, k_pad // blk.kr, blk.kr)
              .permute(0, 2, 1, 3).contiguous())
    raw = panels.reshape(-1).view(torch.uint8)
    owner, data = _aligned_empty(raw.numel())
    data.copy_(raw)
    return PackedWeights(isa, n, k, n_pad, k_pad, blk, data, packed_bias, zp, input_dtype, owner)


# ---------------------------------------------------------------------------------------
# Requantization parameters
# ---------------------------------------------------------------------------------------

@dataclass(eq=False)
class RequantParams:
    """The epilogue of one layer: per-channel arrays padded to the packed n_pad.

    ``fp32``: out = clamp(rint_half_even(float32(acc) · mult[n]) + zero_point, qmin, qmax);
    ``fixed_point``: out = clamp(((acc · m0[n] + 2^(shift[n]−1)) >> shift[n]) + zero_point, …).
    """

    mode: str
    mult: Optional[torch.Tensor]
    m0: Optional[torch.Tensor]
    shift: Optional[torch.Tensor]
    zero_point: int
    qmin: int
    qmax: int
    out_dtype: torch.dtype
    n_pad: int


def _per_channel(x, n: int, n_pad: int, dtype: torch.dtype, pad_value, name: str) -> torch.Tensor:
    t = _as_tensor(x, name).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{name} must be a scalar or have {n} entries, got {t.numel()}")
    out = torch.full((n_pad,), pad_value, dtype=dtype)
    out[:n] = t.to(dtype)
    return out


def make_requant(packed: PackedWeights, mode: str, *, multiplier=None, m0=None, shift=None,
                 zero_point: int = 0, qmin: Optional[int] = None, qmax: Optional[int] = None,
                 out_dtype: torch.dtype = torch.uint8) -> RequantParams:
    """Requantization for ``packed``'s N channels (scalars broadcast; arrays per channel).

    ``multiplier`` is converted to float32 (as the reference does); ``m0`` must be in
    [0, 2^31) and ``shift`` in [1, 62] (checked again by the kernel).
    """
    if out_dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"requantized output must be torch.uint8 or torch.int8, got {out_dtype}")
    tlo, thi = (0, 255) if out_dtype == torch.uint8 else (-128, 127)
    qmin = tlo if qmin is None else int(qmin)
    qmax = thi if qmax is None else int(qmax)
    if not tlo <= qmin <= qmax <= thi:
        raise ValueError(f"clamp [{qmin}, {qmax}] must lie inside the {out_dtype} range [{tlo}, {thi}]")
    n, n_pad = packed.n, packed.n_pad
    if mode == "fp32":
        if multiplier is None:
            raise ValueError("fp32 requantization needs `multiplier`")
        mult = _per_channel(multiplier, n, n_pad, torch.float32, 1.0, "multiplier")
        if not bool(torch.isfinite(mult).all()):
            raise ValueError("multipliers must be finite")
        return RequantParams(mode, mult, None, None, int(zero_point), qmin, qmax, out_dtype, n_pad)
    if mode == "fixed_point":
        if m0 is None or shift is None:
            raise ValueError("fixed_point requantization needs `m0` and `shift`")
        m0_64 = _per_channel(m0, n, n_pad, torch.int64, 2**30, "m0")
        sh_64 = _per_channel(shift, n, n_pad, torch.int64, 31, "shift")
        if bool(((m0_64 < 0) | (m0_64 >= 2**31)).any()):
            raise ValueError("m0 must lie in [0, 2^31)")
        if bool(((sh_64 < 1) | (sh_64 > 62)).any()):
            raise ValueError("shift must lie in [1, 62]")
        return RequantParams(mode, None, m0_64.to(torch.int32), sh_64.to(torch.int32),
                             int(zero_point), qmin, qmax, out_dtype, n_pad)
    raise ValueError(f"unknown requantization mode {mode!r}; choose 'fp32' or 'fixed_point'")


def requant_params_from(packed: PackedWeights, requant) -> RequantParams:
    """:class:`RequantParams` from a core :class:`~qcompiler.core.integer_ops.Requant`."""
    return make_requant(packed, requant.mode, multiplier=requant.multiplier, m0=requant.m0,
                        shift=requant.shift, zero_point=requant.zero_point, qmin=requant.qmin,
                        qmax=requant.qmax, out_dtype=requant.out_qtype.storage)


# ---------------------------------------------------------------------------------------
# The call
# ---------------------------------------------------------------------------------------

#: below this many multiply-adds a call runs on one thread unless told otherwise
SERIAL_BELOW_MACS = 1 << 19


def gemm(a: torch.Tensor, packed: PackedWeights, requant: Optional[RequantParams] = None, *,
         out_dtype: Optional[torch.dtype] = None, out_scale: Optional[float] = None,
         isa: str = "auto", threads: Optional[int] = None, lib: Optional[_Library] = None) -> torch.Tensor:
    """C = requant(A · Wᵀ + bias) for A ``[M, K]`` (``packed.input_dtype``) → ``[M, N]``.

    ``requant=None`` returns the int32 accumulators (with the bias). With ``requant``, the
    output is ``requant.out_dtype`` or, with ``out_dtype=torch.float32``, the dequantized
    float ``float32(q − zero_point) · out_scale``. ``isa="auto"`` uses the ISA the weights
    were packed for; another ISA must share that layout (e.g. a VNNI ISA's emulation).
    ``threads``: None = torch.get_num_threads() (one thread for tiny problems).
    ``lib``: a library from :func:`build_library` (tuning, tests); default :func:`library`.
    """
    if not isinstance(packed, PackedWeights):
        raise TypeError(f"packed must be PackedWeights (from pack_weights), got {type(packed).__name__}")
    if isa == "auto":
        isa = packed.isa
        if isa == "amx" and isinstance(a, torch.Tensor) and a.dim() == 2 and a.shape[0] < AMX_MIN_ROWS \
                and isa_supported("avx512vnni"):
            isa = "avx512vnni"
    _check_isa_name(isa)
    lib = library() if lib is None else lib
    fam = lib.blocking[_FAMILY[isa]]
    if (fam.nr, fam.kr, fam.elem) != (packed.blocking.nr, packed.blocking.kr, packed.blocking.elem):
        raise ValueError(f"weights packed for {packed.isa} (nr={packed.blocking.nr}, kr={packed.blocking.kr}, "
                         f"elem={packed.blocking.elem}) cannot run on {isa}: pack them for {isa}")
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"a must be a torch.Tensor, got {type(a).__name__}")
    if a.device.type != "cpu":
        raise ValueError(f"a must be on the CPU, got {a.device}")
    if a.dtype != packed.input_dtype:
        raise TypeError(f"a is {a.dtype} but the weights were packed for {packed.input_dtype} inputs")
    if a.dim() != 2 or a.shape[1] != packed.k:
        raise ValueError(f"a must be [M, {packed.k}], got {tuple(a.shape)}")
    m = int(a.shape[0])

    if requant is None:
        if out_dtype not in (None, torch.int32):
            raise ValueError("without requant the output is the int32 accumulator")
        out_dtype = torch.int32
    else:
        if not isinstance(requant, RequantParams):
            raise TypeError("requant must be RequantParams (make_requant / requant_params_from)")
        if requant.n_pad != packed.n_pad:
            raise ValueError(f"requant parameters are for n_pad={requant.n_pad}, weights have {packed.n_pad}")
        out_dtype = requant.out_dtype if out_dtype is None else out_dtype
        if out_dtype not in (torch.uint8, torch.int8, torch.float32):
            raise ValueError(f"requantized output must be uint8, int8 or float32, got {out_dtype}")
        if out_dtype in (torch.uint8, torch.int8) and out_dtype != requant.out_dtype:
            raise ValueError(f"requant clamps to {requant.out_dtype}, cannot store {out_dtype}")
        if out_dtype == torch.float32 and out_scale is None:
            raise ValueError("a float32 output needs out_scale (the output quantization scale)")
    out = torch.empty((m, packed.n), dtype=out_dtype)
    if m == 0:
        return out
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if not isa_supported(isa):
        raise UnsupportedISA(f"ISA {isa!r} is not supported on this CPU; available: {available_isas()}")

    if (packed.k > 1 and a.stride(1) != 1) or (m > 1 and a.stride(0) < packed.k):
        raise ValueError(f"a must have unit stride along K and row stride >= K (got strides {a.stride()});"
                         " call .contiguous() first")
    if a.dtype == torch.int8:                      # A' = A + 128 as uint8 (folded into the bias)
        a = torch.bitwise_xor(a.view(torch.uint8), 0x80).contiguous()
    if threads is None:
        threads = 1 if m * packed.n * packed.k < SERIAL_BELOW_MACS else torch.get_num_threads()

    args = _build_args(isa, a, packed, requant, out, out_scale, threads)
    code = lib.entries["qc_gemm"](ctypes.byref(args))     # the one entry point, explicit ISA
    if code != 0:
        raise GemmError(f"qc_gemm ({isa}) failed (error {code}): {_strerror(code)}")
    return out


def _build_args(isa: str, a: torch.Tensor, packed: PackedWeights, requant: Optional[RequantParams],
                out: torch.Tensor, out_scale: Optional[float], threads: int) -> _Args:
    """The C argument struct for checked tensors (pointers stay valid while they live)."""
    m = int(a.shape[0])
    args = _Args()
    args.struct_size = ctypes.sizeof(_Args)
    args.isa = _ISA_ID[isa]
    args.m, args.n, args.k = m, packed.n, packed.k
    args.a, args.lda = a.data_ptr(), (a.stride(0) if m > 1 else packed.k)
    # a view of wider rows (a[:, :k] of [M, K'] storage): the kernel may read the rest of each
    # row in place (AMX's partial last K block) instead of copying it
    last_row_bytes = a.untyped_storage().nbytes() - (a.storage_offset() + (m - 1) * args.lda)
    args.a_cols = max(min(args.lda, last_row_bytes), packed.k)
    args.b, args.b_bytes = packed.data.data_ptr(), packed.data.numel()
    args.b_nr, args.b_kr, args.b_elem = packed.blocking.nr, packed.blocking.kr, packed.blocking.elem
    args.requant_mode = _QC_MODE["none" if requant is None else requant.mode]
    args.bias = packed.bias.data_ptr()
    if requant is not None:
        if requant.mode == "fp32":
            args.mult = requant.mult.data_ptr()
        else:
            args.m0, args.shift = requant.m0.data_ptr(), requant.shift.data_ptr()
        args.zero_point, args.qmin, args.qmax = requant.zero_point, requant.qmin, requant.qmax
        args.out_scale = float(out_scale) if out_scale is not None else 0.0
    args.out_type = _QC_OUT[out.dtype]
    args.c, args.ldc = out.data_ptr(), packed.n
    args.threads = threads
    return args


# ---------------------------------------------------------------------------------------
# From a QLinear module
# ---------------------------------------------------------------------------------------

class LinearKernel:
    """A :class:`~qcompiler.core.integer_ops.QLinear` prepared for one ISA: packed weights
    and epilogue, built once. ``kernel(x)`` equals ``module(x)`` bit for bit."""

    def __init__(self, module, isa: str = "auto"):
        from qcompiler.core.integer_ops import QLinear, check_accumulator

        if not isinstance(module, QLinear):
            raise TypeError(f"expected a QLinear, got {type(module).__name__}")
        in_qp, w_qp, rq = module.input_qparams[0], module.weight_qparams, module.requant
        if in_qp.per_channel:
            raise NotImplementedError("per-channel input quantization is not supported by the GEMM kernels")
        if bool((w_qp.zero_point != 0).any()):
            raise NotImplementedError("the GEMM kernels need symmetric weights (zero point 0)")
        if module.weight.dtype != torch.int8:
            raise NotImplementedError(f"weights must be stored as int8, got {module.weight.dtype}")
        if rq.out_qtype.storage not in (torch.uint8, torch.int8):
            raise NotImplementedError(f"output type {rq.out_qtype} is not supported")
        # the int32 accumulator must be exact (the lowering pass has checked this already)
        check_accumulator(module.source_layer or "linear", int(module.weight.shape[1]), in_qp,
                          module.weight, w_qp, module.bias)
        self.isa = _resolve(isa)
        self.input_dtype = in_qp.qtype.storage
        self.out_dtype = rq.out_qtype.storage
        self.packed = pack_weights(module.weight, module.bias, in_qp.zero_point_int(), self.isa,
                                   input_dtype=self.input_dtype)
        self.requant = requant_params_from(self.packed, rq)

    def __call__(self, x: torch.Tensor, threads: Optional[int] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != self.input_dtype:
            raise TypeError(f"x must be {self.input_dtype} (the layer's input type), got {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.packed.k:
            raise ValueError(f"x must be [..., {self.packed.k}], got {tuple(x.shape)}")
        lead = x.shape[:-1]
        y = gemm(x.reshape(-1, self.packed.k).contiguous(), self.packed, self.requant,
                 isa=self.isa, threads=threads)
        return y.reshape(*lead, self.packed.n)


_kernels: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def qlinear_forward(module, x: torch.Tensor, isa: str = "auto", threads: Optional[int] = None) -> torch.Tensor:
    """``module(x)`` for a QLinear, computed by the x86 kernels (bit for bit equal).

    Packed weights are cached per module and ISA (rebuilt when the weight or bias is
    modified or replaced, or the requant / qparams objects are replaced)."""
    from qcompiler.core.integer_ops import QLinear

    if not isinstance(module, QLinear):
        raise TypeError(f"expected a QLinear, got {type(module).__name__}")
    isa = _resolve(isa)
    per_module = _kernels.setdefault(module, {})
    # what the packed weights and epilogue were built from, compared by identity (the
    # objects are kept alive here, so an identity cannot be reused by a new object)
    state = (module.weight, module.weight._version, module.bias,
             None if module.bias is None else module.bias._version,
             module.requant, module.input_qparams[0], module.weight_qparams)
    kernel = per_module.get(isa)
    if kernel is None or len(kernel[0]) != len(state) or not all(
            x is y if not isinstance(x, int) else x == y for x, y in zip(kernel[0], state)):
        kernel = (state, LinearKernel(module, isa))
        per_module[isa] = kernel
    return kernel[1](x, threads)


# ---------------------------------------------------------------------------------------
# The instruction itself (desc/impl tests)
# ---------------------------------------------------------------------------------------

def dpbusd(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, width: int, emulated: bool) -> torch.Tensor:
    """vpdpbusd on int32 ``acc`` [V·lanes], uint8 ``a`` and int8 ``b`` [V·lanes·4], run by the
    native instruction (``emulated=False``) or its emulation; ``width`` 512 or 256."""
    lanes = {512: 16, 256: 8}[width]
    if acc.dtype != torch.int32 or a.dtype != torch.uint8 or b.dtype != torch.int8:
        raise TypeError("dpbusd takes int32 acc, uint8 a, int8 b")
    nvec = acc.numel() // lanes
    if nvec == 0 or acc.numel() != nvec * lanes or a.numel() != 4 * acc.numel() or b.numel() != a.numel():
        raise ValueError("acc must hold whole vectors and a, b four bytes per accumulator")
    acc, a, b = acc.contiguous(), a.contiguous(), b.contiguous()
    out = torch.empty_like(acc)
    name = {512: "qc_dpbusd512_avx512vnni", 256: "qc_dpbusd256_avxvnni"}[width] + ("_emu" if emulated else "")
    code = library().entries[name](acc.data_ptr(), a.data_ptr(), b.data_ptr(), out.data_ptr(), nvec)
    if code == 5:
        raise UnsupportedISA(f"{name}: not supported on this CPU")
    if code != 0:
        raise GemmError(f"{name} failed: {_strerror(code)}")
    return out
