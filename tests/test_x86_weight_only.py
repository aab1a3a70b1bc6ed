"""x86 weight-only (int8 / int4 / NF4) and half-precision (bfloat16 / float16) linear layers, and
weight-only embeddings (backends/x86/kernels/qc_x86_weight_only.h, backends/x86/weight_only.py,
backends/c_runtime/qc_rt_weight_only.c), against the reference ops of core/weight_only_ops.py.

The kernels are called directly (ctypes on the model runtime) over the shape grid, both kernels
(AVX2 and portable C) and 1 and 3 threads; whole models go through quantize + compile.

The bound. With u = 2^-24, T = Σ_k |x_k ŵ_k| (x and ŵ as the reference multiplies them: rounded
to bfloat16 / the half type where the op says so) and b the bias, every output satisfies

    |y − y_ref| ≤ (K + 6) · u · (T + |b|).

y_ref is the exact dot product rounded once, plus b (two roundings: ≤ 2u·T + u·|b|). The kernel
passes each product through at most K + 2 roundings: the GEMV factors a group's scale out of its
sum (x·code summed, then times the scale: one rounding against the reference's ŵ = code·scale),
runs an FMA chain of at most K steps and multiplies the group's sum into the running total with
one FMA; the other paths use the exact ŵ and one FMA or multiply-add chain (≤ K). The bias add
is one more. That is K + 5 roundings of terms bounded by T, first order; the sixth covers the
second-order terms (nu/(1 − nu) with n ≤ K + 5 ≤ 2^12). Half products are exact in float32.
"""
import ctypes
import re
from collections import Counter

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import QConfig
from qcompiler.core.weight_only_ops import (NF4_LEVELS, QHalfLinear, QuantizedWeight, QWeightOnlyEmbedding,
                                            QWeightOnlyLinear, round_bfloat16)

ok, why = qcompiler.available_targets().get("x86", (False, "not registered"))
pytestmark = pytest.mark.skipif(not ok, reason=f"x86 target unavailable: {why}")

from qcompiler.backends import cpu  # noqa: E402
from qcompiler.backends.base import BackendUnsupported  # noqa: E402
from qcompiler.backends.native_model import NativeModelError  # noqa: E402
from qcompiler.backends.x86 import X86Backend  # noqa: E402
from qcompiler.backends.x86 import weight_only as wo  # noqa: E402

FORMATS = [("int8", True), ("int4", True), ("int4", False), ("nf4", True)]
GROUPS = [32, 64, 128, None]
ROWS = [1, 3, 8, 64, 100]
HAS_AVX2 = wo.AVX2_NEEDS <= cpu.detected_features()
ISAS = [pytest.param(wo.ISA_AVX2, id="avx2", marks=pytest.mark.skipif(not HAS_AVX2, reason="no AVX2 + FMA here")),
        pytest.param(wo.ISA_SCALAR, id="scalar")]
U = 2.0 ** -24


class Weights(ctypes.Structure):
    """qc_wo_linear_weights (kernels/qc_x86_weight_only.h)."""
    _fields_ = [("format", ctypes.c_int32), ("n", ctypes.c_int64), ("k", ctypes.c_int64),
                ("group_blocks", ctypes.c_int64), ("codes", ctypes.c_void_p), ("codes_bytes", ctypes.c_int64),
                ("scales", ctypes.c_void_p), ("zero_points", ctypes.c_void_p), ("nf4", ctypes.c_void_p),
                ("bias", ctypes.c_void_p)]


def _ptr(t):
    return None if t is None else t.data_ptr()


@pytest.fixture(scope="module")
def lib():
    """The x86 model runtime this machine builds (its kernels are the ones models call)."""
    backend = X86Backend()
    cdll = ctypes.CDLL(str(backend.build_runtime(backend.current_variant())))
    i32, i64, vp = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    cdll.qc_x86_wo_linear.argtypes = [i32, vp, i64, ctypes.POINTER(Weights), i32, vp, vp, ctypes.c_int]
    cdll.qc_x86_half_linear.argtypes = [i32, vp, i64, i64, i64, i32, vp, i64, vp, vp, vp, ctypes.c_int]
    cdll.qc_rt_wo_embedding.argtypes = [vp, i64, i32, vp, vp, vp, vp, i64, i64, i64, vp, ctypes.c_int]
    for f in (cdll.qc_x86_wo_linear, cdll.qc_x86_half_linear, cdll.qc_rt_wo_embedding):
        f.restype = ctypes.c_int
    return cdll


class Packed:
    """A QuantizedWeight packed by backends/x86/weight_only.py, with the struct pointing at it."""

    def __init__(self, qw: QuantizedWeight, bias):
        self.qw, self.bias = qw, bias
        self.codes = wo.pack_codes(qw)
        self.scales, self.zps = wo.pack_group_params(qw)
        self.nf4 = NF4_LEVELS.clone()
        self.struct = Weights(wo.wo_format(qw), qw.codes.shape[0], qw.k,
                              wo.group_blocks(qw), _ptr(self.codes), self.codes.numel(), _ptr(self.scales),
                              _ptr(self.zps), _ptr(self.nf4), _ptr(bias))


def wo_linear(lib, isa, x, packed: Packed, compute="float32", threads=1):
    m, k = x.shape
    y = torch.full((m, packed.qw.codes.shape[0]), float("nan"))
    xbuf = torch.empty(m * k) if compute == "bfloat16" else None
    rc = lib.qc_x86_wo_linear(isa, _ptr(x), m, ctypes.byref(packed.struct), int(compute == "bfloat16"), _ptr(xbuf),
                              _ptr(y), threads)
    assert rc == 0, f"qc_x86_wo_linear returned {rc}"
    return y


def half_linear(lib, isa, x, weight, bias, threads=1):
    m, k = x.shape
    n = weight.shape[0]
    packed = wo.pack_half(weight)
    y, xbuf = torch.full((m, n), float("nan")), torch.empty(m * k)
    rc = lib.qc_x86_half_linear(isa, _ptr(x), m, n, k, wo.HALF_TYPES[weight.dtype], _ptr(packed), packed.numel(),
                                _ptr(bias), _ptr(xbuf), _ptr(y), threads)
    assert rc == 0, f"qc_x86_half_linear returned {rc}"
    return y


def assert_within_bound(y, y_ref, x, w_hat, bias):
    """The module docstring's bound, for every output (x, ŵ as the reference multiplies them)."""
    k = x.shape[-1]
    t = x.double().abs() @ w_hat.double().abs().t()
    if bias is not None:
        t = t + bias.double().abs()
    err = (y.double() - y_ref.double()).abs()
    assert not bool(torch.isnan(y).any()), "an output was not written"
    bound = (k + 6) * U * t
    worst = float((err / bound.clamp_min(1e-300)).max())
    assert bool((err <= bound).all()), f"error up to {worst:.3g} x the bound"


def _weight(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[1] = 0.0                                    # a zero row: scale 0
    w[2, : k // 2] *= 50                          # groups of very different scales
    return w


@pytest.mark.parametrize("dtype, symmetric", FORMATS)
@pytest.mark.parametrize("group", GROUPS)
def test_weight_only_linear_within_the_bound(lib, dtype, symmetric, group):
    """Every format and group, m in {1, 3, 8} (GEMV) and {64, 100} (prefill), odd N (partial panels
    and chunks), both kernels, 1 and 3 threads; K a multiple of the group, or per channel a K that
    is not a multiple of 8 (the last block of k partial)."""
    k = 256 if group else (203 if dtype == "int8" else 202)
    for n, seed in ((37, 1), (203, 2)):
        qw = QuantizedWeight.quantize(_weight(n, k, seed), dtype, group, symmetric)
        bias = torch.randn(n, generator=torch.Generator().manual_seed(seed + 10))
        packed = Packed(qw, bias)
        op = QWeightOnlyLinear(qw, bias)
        w_hat = qw.dequantize()
        for m in ROWS:
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3
            y_ref = op(x)
            for isa in ([wo.ISA_AVX2] if HAS_AVX2 else []) + [wo.ISA_SCALAR]:
                for threads in (1, 3):
                    assert_within_bound(wo_linear(lib, isa, x, packed, threads=threads), y_ref, x, w_hat, bias)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype, symmetric", FORMATS)
def test_weight_only_linear_bfloat16_compute(lib, isa, dtype, symmetric):
    """compute="bfloat16": x and ŵ rounded to bfloat16 (ties to even) before the products."""
    for group, k in ((32, 96), (None, 90)):
        qw = QuantizedWeight.quantize(_weight(21, k, 3), dtype, group, symmetric)
        packed = Packed(qw, None)
        op = QWeightOnlyLinear(qw, None, compute="bfloat16")
        for m in (1, 5, 70):
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
            assert_within_bound(wo_linear(lib, isa, x, packed, "bfloat16", threads=2), op(x), round_bfloat16(x),
                                round_bfloat16(qw.dequantize()), None)


def test_results_do_not_depend_on_threads(lib):
    """Threads split N (GEMV) or (rows, panels) (prefill): each output is summed in one order."""
    qw = QuantizedWeight.quantize(_weight(203, 512, 4), "int4", 32)
    packed = Packed(qw, None)
    for m in (1, 7, 100):
        x = torch.randn(m, 512)
        for isa in ([wo.ISA_AVX2] if HAS_AVX2 else []) + [wo.ISA_SCALAR]:
            assert torch.equal(wo_linear(lib, isa, x, packed, threads=1), wo_linear(lib, isa, x, packed, threads=3))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_linear_within_the_bound(lib, isa, dtype):
    g = torch.Generator().manual_seed(6)
    for n, k in ((37, 200), (203, 64)):
        weight = (torch.randn(n, k, generator=g) * 0.1).to(dtype)
        bias = torch.randn(n, generator=g)
        op = QHalfLinear(weight, bias)
        for m in ROWS:
            x = torch.randn(m, k, generator=g) * 4
            for threads in (1, 3):
                assert_within_bound(half_linear(lib, isa, x, weight, bias, threads), op(x),
                                    x.to(dtype).float(), weight.float(), bias)


def _rounding_cases(dtype) -> torch.Tensor:
    """Ties, the largest finite values and past them, subnormals of the half type and of float32,
    NaN and infinities, and random values over a wide range."""
    eps = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    special = [0.0, -0.0, 1.0, 1 + eps / 2, 1 + 3 * eps / 2, -(1 + eps / 2), 1 + eps / 2 + 2**-23,
               65504.0, 65519.0, 65520.0, -65520.0, 3.0e38, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14 - 2.0**-26,
               1e-40, -1e-40, 2.0**-133, 2.0**-134, float("inf"), float("-inf"), float("nan")]
    g = torch.Generator().manual_seed(7)
    wide = torch.randn(3000, generator=g) * torch.pow(2.0, torch.randint(-40, 40, (3000,), generator=g).float())
    return torch.cat([torch.tensor(special), wide])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_rounding_of_the_input_is_torchs(lib, isa, dtype):
    """K = 1, weight 1: y = h(x) exactly, for every row (prefill) and rows 1..8 (GEMV)."""
    values = _rounding_cases(dtype)
    weight = torch.ones(1, 1, dtype=dtype)
    for x in [values[:, None], *(values[i:i + m, None] for i, m in ((0, 8), (8, 3), (20, 1), (21, 5)))]:
        got = half_linear(lib, isa, x.contiguous(), weight, None)
        want = x.to(dtype).float()
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        finite = ~torch.isnan(want)
        assert torch.equal(got[finite], want[finite])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_half_weight_converts_exactly(lib, isa, dtype):
    """x = 1, K = 1, all 65536 bit patterns as the weights of 65536 outputs: y = float(w)."""
    weight = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)[:, None]
    got = half_linear(lib, isa, torch.ones(1, 1), weight, None)[0]
    want = weight.float()[:, 0]
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got[~torch.isnan(want)], want[~torch.isnan(want)])


def test_kernel_choice_follows_cpu_features(monkeypatch):
    """$QCOMPILER_CPU_FEATURES narrows the kernel: no FMA (or a scalar GEMM build) -> portable C;
    float16 weights on AVX2 also need F16C."""
    if not HAS_AVX2:
        pytest.skip("no AVX2 + FMA here")
    monkeypatch.setenv("QCOMPILER_CPU_FEATURES", "avx2,fma,f16c")
    assert wo.kernel_isa("avx2") == wo.kernel_isa("avx2", torch.float16) == wo.ISA_AVX2
    assert wo.kernel_isa("scalar") == wo.ISA_SCALAR
    monkeypatch.setenv("QCOMPILER_CPU_FEATURES", "avx2,fma")
    assert wo.kernel_isa("avx2", torch.bfloat16) == wo.ISA_AVX2
    assert wo.kernel_isa("avx2", torch.float16) == wo.ISA_SCALAR
    monkeypatch.setenv("QCOMPILER_CPU_FEATURES", "avx2")
    assert wo.kernel_isa("avx2") == wo.ISA_SCALAR


@pytest.mark.parametrize("cfg", [QConfig.weight_only("nf4", 32), QConfig.half("float16")], ids=["nf4", "half-fp16"])
def test_compiled_model_without_fma_calls_the_portable_kernel(monkeypatch, cfg):
    """$QCOMPILER_CPU_FEATURES=avx2 (no FMA): the AVX2 GEMM runtime as before, but the model's C calls
    the portable weight-only kernel (isa 1), still within the bound."""
    monkeypatch.setenv("QCOMPILER_CPU_FEATURES", "avx2")
    torch.manual_seed(4)
    x = torch.randn(3, 64)
    qm = qcompiler.quantize(nn.Sequential(nn.Linear(64, 19)).eval(), [(x,)], config=cfg, target="x86",
                            progress=False)
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    call = "qc_x86_half_linear(" if cfg.method == "half" else "qc_x86_wo_linear("
    assert f"{call}{wo.ISA_SCALAR}," in compiled.source
    op, = [m for m in qm.graph_module.modules() if isinstance(m, (QWeightOnlyLinear, QHalfLinear))]
    xe, w = _operands(op, x)
    assert_within_bound(compiled(x), qm(x), xe, w, op.bias)


def test_groups_the_kernels_cannot_take_are_refused():
    qw = QuantizedWeight.quantize(torch.randn(8, 24), "int4", 4)
    with pytest.raises(BackendUnsupported, match="groups of 4"):
        wo.group_blocks(qw)


# -- bad inputs ---------------------------------------------------------------------------------

def test_linear_entries_check_their_arguments_before_touching_memory(lib):
    qw = QuantizedWeight.quantize(torch.randn(20, 64), "int4", 32, symmetric=False)
    packed = Packed(qw, None)
    x, y, xbuf = torch.randn(2, 64), torch.full((2, 20), 7.0), torch.empty(128)

    def call(isa=wo.ISA_SCALAR, xp=_ptr(x), m=2, compute=0, xb=None, yp=_ptr(y), threads=1, **fields):
        s = Weights.from_buffer_copy(packed.struct)
        for name, value in fields.items():
            setattr(s, name, value)
        return lib.qc_x86_wo_linear(isa, xp, m, ctypes.byref(s), compute, xb, yp, threads)

    assert lib.qc_x86_wo_linear(1, _ptr(x), 2, None, 0, None, _ptr(y), 1) == 1
    assert call(xp=None) == 1 and call(yp=None) == 1 and call(codes=None) == 1 and call(scales=None) == 1
    assert call(zero_points=None) == 1                    # asymmetric int4 needs its zero points
    assert call(compute=1) == 1                           # bfloat16 compute needs the scratch for x
    assert call(m=-1) == 2 and call(n=0) == 2 and call(k=-64) == 2 and call(n=2**31) == 2
    assert call(codes_bytes=packed.codes.numel() - 1) == 4 and call(format=9) == 4
    assert call(group_blocks=0) == 4 and call(k=63) == 4  # 4-bit codes pack pairs of k
    assert call(isa=7) == 5 and call(threads=-1) == 9
    assert bool((y == 7.0).all())                         # nothing written
    assert call(m=0) == 0 and call(compute=1, xb=_ptr(xbuf)) == 0


def test_half_entry_checks_its_arguments(lib):
    weight = torch.randn(20, 16).to(torch.bfloat16)
    packed = wo.pack_half(weight)
    x, y, xbuf = torch.randn(2, 16), torch.full((2, 20), 7.0), torch.empty(32)

    def call(isa=1, xp=_ptr(x), m=2, n=20, k=16, ht=1, w=_ptr(packed), wb=packed.numel(), xb=_ptr(xbuf), yp=_ptr(y)):
        return lib.qc_x86_half_linear(isa, xp, m, n, k, ht, w, wb, None, xb, yp, 1)

    assert call(xp=None) == 1 and call(w=None) == 1 and call(xb=None) == 1 and call(yp=None) == 1
    assert call(n=-1) == 2 and call(k=0) == 2 and call(ht=3) == 4 and call(wb=10) == 4 and call(isa=0) == 5
    assert bool((y == 7.0).all())
    assert call() == 0


def test_embedding_entry_checks_ids_before_writing(lib):
    qw = QuantizedWeight.quantize(torch.randn(10, 64), "nf4", 32)
    scales, nf4 = qw.scales.contiguous(), NF4_LEVELS.clone()
    y = torch.full((3, 64), 7.0)

    def call(ids, fmt=4, codes=_ptr(qw.codes), sc=_ptr(scales), table=_ptr(nf4), dim=64, group=32):
        ids = torch.tensor(ids, dtype=torch.int64)
        return lib.qc_rt_wo_embedding(_ptr(ids), ids.numel(), fmt, codes, sc, None, table, 10, dim, group, _ptr(y), 1)

    assert call([0, 10, 1]) == -1 and call([-1, 0, 1]) == -1
    assert call([0, 1, 2], codes=None) == 1 and call([0, 1, 2], table=None) == 1
    assert call([0, 1, 2], fmt=3) == 1                    # asymmetric without zero points
    assert call([0, 1, 2], fmt=0) == 4 and call([0, 1, 2], group=48) == 4 and call([0, 1, 2], dim=63) == 4
    assert bool((y == 7.0).all())
    assert call([0, 9, 3]) == 0
    assert torch.equal(y, qw.dequantize()[[0, 9, 3]])


# -- whole models through quantize + compile ------------------------------------------------------

def _operands(op, x):
    """x and ŵ as the reference op multiplies them."""
    if isinstance(op, QHalfLinear):
        return x.to(op.half_dtype).float(), op.weight.float()
    w = op.qweight.dequantize()
    return (round_bfloat16(x), round_bfloat16(w)) if op.compute == "bfloat16" else (x, w)


def _layer_bound(op, x):
    xe, w = _operands(op, x)
    return (xe.shape[-1] + 6) * U * (xe.abs().double() @ w.abs().double().t() + op.bias.abs().double())


@pytest.mark.parametrize("cfg", [QConfig.weight_only("int4", 32), QConfig.weight_only("nf4", 64),
                                 QConfig.weight_only("int8", None), QConfig.weight_only("int4", 128, symmetric=False),
                                 QConfig.weight_only("int4", 32, compute="bfloat16"),
                                 QConfig.half("bfloat16"), QConfig.half("float16")],
                         ids=["int4", "nf4", "int8", "int4-asym", "int4-bf16", "half-bf16", "half-fp16"])
def test_linear_layers_compile_to_one_program(cfg):
    """Two linear layers in a row (the first's float output feeds the second inside the program), on
    3-d inputs, and another batch size (recompiled). The second layer's bound is taken around the
    reference's hidden values, widened by how far the first layer's output may be from them (its
    own bound, plus one unit in the last place of the half type where the second layer rounds its
    input: the two may round to neighbours)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 40)).eval()
    x = torch.randn(2, 5, 128)
    qm = qcompiler.quantize(model, [(x,)], config=cfg, target="x86", progress=False)
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    first, second = [m for m in qm.graph_module.modules() if isinstance(m, (QWeightOnlyLinear, QHalfLinear))]
    rounds = isinstance(second, QHalfLinear) or second.compute == "bfloat16"
    ulp = (2.0**-10 if getattr(second, "half_dtype", None) == torch.float16 else 2.0**-7) if rounds else 0.0
    for batch in (x, torch.randn(3, 5, 128)):
        hidden = first(batch)
        moved = _layer_bound(first, batch)
        moved = moved + ulp * (hidden.abs().double() + moved)
        bound = _layer_bound(second, hidden) + moved @ _operands(second, hidden)[1].abs().double().t()
        err = (compiled(batch).double() - qm(batch).double()).abs()
        assert bool((err <= bound).all()), float((err / bound).max())


class Tokens(nn.Module):
    def __init__(self, rows, dim):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)

    def forward(self, ids):
        return self.emb(ids)


@pytest.mark.parametrize("dtype, symmetric", FORMATS)
@pytest.mark.parametrize("group", [32, None])
def test_embedding_is_exact(dtype, symmetric, group):
    torch.manual_seed(1)
    ids = torch.randint(0, 50, (3, 7))
    qm = qcompiler.quantize(Tokens(50, 64).eval(), [(ids,)], config=QConfig.weight_only(dtype, group, symmetric),
                            target="x86", progress=False)
    assert any(isinstance(m, QWeightOnlyEmbedding) for m in qm.graph_module.modules())
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    assert torch.equal(compiled(ids), qm(ids))
    edges = torch.tensor([[49, 0, 49, 1, 0, 48, 2]])          # another batch size: recompiled
    assert torch.equal(compiled(edges), qm(edges))
    with pytest.raises(IndexError, match="outside the .*50 rows"):
        compiled(torch.tensor([[0, 50, 1, 2, 3, 4, 5]]))


def test_native_embedding_refuses_an_index_itself():
    """Past the Python check (called directly), the C refuses the index before writing a row."""
    ids = torch.randint(0, 20, (1, 4))
    qm = qcompiler.quantize(Tokens(20, 32).eval(), [(ids,)], config=QConfig.weight_only("int4", 32), target="x86",
                            progress=False)
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    out = torch.full((1, 4, 32), 7.0)
    with pytest.raises(NativeModelError, match="outside its embedding table"):
        compiled._run([torch.tensor([[0, 1, 2, 1000]])], [out], False, compiled._arena_ptr, compiled._arena_bytes, 1)
    assert bool((out == 7.0).all())


def _arm_target():
    from qcompiler.backends.arm.backend import ArmBackend
    return ArmBackend.availability()


@pytest.mark.skipif(not _arm_target()[0], reason=f"ARM target unavailable: {_arm_target()[1]}")
def test_embedding_is_exact_on_arm_too():
    """The gather is the shared runtime's: the baseline ARM target runs it under qemu, bit for bit;
    ARM has no weight-only linear kernel, so the Linear after it stays in float (PyTorch)."""
    torch.manual_seed(2)
    ids = torch.randint(0, 40, (2, 6))
    for dtype, symmetric in FORMATS:
        qm = qcompiler.quantize(Tokens(40, 32).eval(), [(ids,)], target="arm", progress=False,
                                config=QConfig.weight_only(dtype, 32, symmetric))
        compiled = qcompiler.compile(qm, target="arm", pytorch_fallback=False)
        assert torch.equal(compiled(ids), qm(ids))


def test_bert_weight_only_runs_its_linear_layers_and_embedding_natively():
    """A small random BERT (zoo) quantized weight-only int4 g32: word embeddings and every Linear
    native, LayerNorm / attention / GELU in PyTorch; close to qm(x) (the kernels' rounding
    differences, within their bound per layer, pass through LayerNorm and attention)."""
    from qcompiler.zoo.bert import BertEncoder

    torch.manual_seed(3)
    model = BertEncoder(vocab_size=120, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                        max_position=32).eval()
    ids = torch.randint(0, 120, (2, 12))
    qm = qcompiler.quantize(model, [(ids,)], config=QConfig.weight_only("int4", 32), target="x86", progress=False,
                            warn_float=False)
    linears = [m for m in qm.graph_module.modules() if isinstance(m, QWeightOnlyLinear)]
    assert len(linears) == 2 * 6
    compiled = qcompiler.compile(qm, target="x86")
    native = Counter()
    for line in compiled.describe().splitlines():
        for op, count in re.findall(r"(weight_only_\w+) x(\d+)", line):
            native[op] += int(count)
    assert native == {"weight_only_linear": 12, "weight_only_embedding": 1}, compiled.describe()
    got, want = compiled(ids), qm(ids)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4, compiled.describe()
