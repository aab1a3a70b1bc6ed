"""x86 dynamic int8 linear layers (QDynamicLinear, core/dynamic_ops.py) bit for bit with the
reference: the kernel (qc_rt_dynamic_linear) called directly on every ISA path this machine runs —
scalar, AVX2 and the AVX-VNNI tile through its exact vpdpbusd emulation — then whole models through
quantize(config=QConfig.dynamic()) + compile(target="x86"); ARM targets leave the op to PyTorch."""
import ctypes
import functools

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import QConfig
from qcompiler.core.dynamic_ops import QDynamicLinear
from qcompiler.core.qtypes import INT8_NARROW, QParams

ok, why = qcompiler.available_targets().get("x86", (False, "not registered"))
pytestmark = pytest.mark.skipif(not ok, reason=f"x86 target unavailable: {why}")

from qcompiler.backends import toolchain  # noqa: E402
from qcompiler.backends.c_emitter import BackendUnsupported  # noqa: E402
from qcompiler.backends.native_model import NativeModel, NativeModelError  # noqa: E402
from qcompiler.backends.x86 import dynamic, gemm, runtime_library  # noqa: E402
from qcompiler.backends.x86.backend import X86Backend  # noqa: E402

QC_RT_ERR_NONFINITE, QC_RT_ERR_DYNAMIC_RANGE = -1, 10
QC_ERR_NULL, QC_ERR_SIZE, QC_ERR_LAYOUT, QC_ERR_PARAM, QC_ERR_THREADS = 1, 2, 4, 6, 9
MODES = [(True, True), (True, False), (False, True), (False, False)]   # (per_token, symmetric)
MODE_IDS = ["token-sym", "token-asym", "tensor-sym", "tensor-asym"]


# -- the kernel, called directly --------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def runtime_path():
    """The x86 runtime unit built WITH the emulated kernels (models' runtimes leave them out), so
    the VNNI tile runs here through its exact vpdpbusd emulation."""
    flags = [f for f in runtime_library.runtime_flags("avx2") if f != "-DQC_NO_EMULATION"]
    return toolchain.build_shared_library(X86Backend().runtime_source("avx2"),
                                          flags=flags + X86Backend().setting_flags(), name="qc_x86_rt_dynamic_test")


@functools.lru_cache(maxsize=None)
def runtime():
    lib = toolchain.load_library(runtime_path())
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    lib.qc_rt_dynamic_linear.argtypes = [i32, p, i64, i64, i64, p, i64, i32, i32, i32, p, p, p, i32, i32, p, p, i64,
                                         ctypes.c_int]
    lib.qc_rt_dynamic_linear.restype = ctypes.c_int
    lib.qc_rt_dynamic_linear_scratch.argtypes = [i32, i64, i64]
    lib.qc_rt_dynamic_linear_scratch.restype = i64
    return lib


def kernels_here():
    names = ["scalar"]
    if gemm.isa_supported("avx2"):
        names += ["avx2", "avxvnni_emu"]
    return names


KERNELS = kernels_here()


def make_op(n, k, per_token, symmetric, bias=True, seed=0, weight=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8) if weight is None else weight
    scales = (torch.rand(n, generator=g) * 0.05 + 1e-3).to(torch.float32)
    qp = QParams(scales, torch.zeros(n, dtype=torch.int64), INT8_NARROW, axis=0)
    b = torch.randn(n, generator=g) if bias else None
    return QDynamicLinear(w, qp, b, per_token, symmetric, source_layer="fc")


def ptr(t):
    return None if t is None else t.data_ptr()


def run_kernel(name, op, x, threads=1, **override):
    """y of qc_rt_dynamic_linear (or its return code, when nonzero)."""
    kernel = dynamic.KERNELS[name]
    n, k = op.weight.shape
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    packed, w_scale, b, colsum = dynamic.pack(kernel, op.weight, op.weight_scales, op.bias)
    nbytes = dynamic.scratch_bytes(kernel, m, k)
    scratch = torch.empty(nbytes + 1, dtype=torch.uint8)[1:]        # deliberately misaligned
    y = torch.full((m, n), float("nan"))
    blk = packed.blocking
    args = dict(isa=kernel.isa_id, x=ptr(x2), m=m, k=k, n=n, w=ptr(packed.data), w_bytes=packed.nbytes, nr=blk.nr,
                kr=blk.kr, elem=blk.elem, colsum=ptr(colsum), w_scale=ptr(w_scale), bias=ptr(b),
                per_token=int(op.per_token), symmetric=int(op.symmetric), y=ptr(y), scratch=ptr(scratch),
                scratch_bytes=nbytes, threads=threads)
    args.update(override)
    rc = runtime().qc_rt_dynamic_linear(*args.values())
    return rc if rc else y.reshape(*x.shape[:-1], n)


def assert_kernel_exact(name, op, x, threads=1):
    got, ref = run_kernel(name, op, x, threads), op(x)
    assert isinstance(got, torch.Tensor), f"{name}: error {got}"
    assert torch.equal(got, ref), f"{name}: max |diff| {(got - ref).abs().max()}"


def test_scratch_size_is_the_kernels():
    for name in KERNELS:
        for m, k in [(0, 1), (1, 1), (3, 17), (100, 384), (7, 1537)]:
            kernel = dynamic.KERNELS[name]
            assert runtime().qc_rt_dynamic_linear_scratch(kernel.isa_id, m, k) == dynamic.scratch_bytes(kernel, m, k)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("per_token, symmetric", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 17, 5), (17, 3, 33), (100, 384, 17), (5, 1536, 40),
                                     (13, 100, 100), (2, 4096, 3)])
def test_kernel_bit_exact(name, per_token, symmetric, m, k, n):
    op = make_op(n, k, per_token, symmetric, seed=m * 7 + k)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m)[:, None]   # rows of very different ranges
    if m > 2:
        x[1] = 0.0                                          # a zero row: its output is the bias
        x[2] -= x[2].min() + 0.5                            # a row of one sign (asymmetric zp at a bound)
    assert_kernel_exact(name, op, x)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("per_token, symmetric", MODES, ids=MODE_IDS)
def test_kernel_threads(name, threads, per_token, symmetric):
    """Enough rows for several phase-1 blocks and GEMM chunks: the same bytes on 1 and 3 threads."""
    op = make_op(97, 384, per_token, symmetric, seed=3)
    x = torch.randn(2, 150, 384, generator=torch.Generator().manual_seed(1))
    assert_kernel_exact(name, op, x, threads)


def corner_rows(k):
    """Rows that exercise the spec's corners (core/dynamic_ops.py docstring)."""
    g = torch.Generator().manual_seed(5)
    ties = torch.arange(k, dtype=torch.float32) % 254 - 126.5      # x · inv = x: halves round to even
    ties[0] = 127.0
    rows = [
        torch.zeros(k),
        -torch.zeros(k),                                            # -0.0: zero range
        torch.full((k,), 2.0 ** -121),                              # below TINY_RANGE: a zero row
        torch.full((k,), 2.0 ** -120),                              # at it: quantized
        torch.randn(k, generator=g) * 1e-36,                        # just above 2^-120, subnormals in it
        torch.randn(k, generator=g) * 1e30,                         # huge values
        torch.full((k,), 3.0e38),                                   # near FLT_MAX, one sign
        ties,
        torch.randn(k, generator=g).abs() + 1.0,                    # positive only: zp 0
        -(torch.randn(k, generator=g).abs() + 1.0),                 # negative only: zp 255
        torch.where(torch.arange(k) == k // 2, torch.tensor(1e4), torch.randn(k, generator=g)),  # an outlier
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("per_token, symmetric", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("k", [1, 31, 260])
def test_kernel_corner_rows(name, per_token, symmetric, k):
    op = make_op(19, k, per_token, symmetric, seed=k)
    rows = corner_rows(k)
    if per_token:
        assert_kernel_exact(name, op, rows)
    else:                           # each row its own tensor (one row would set every row's range)
        for row in rows:
            assert_kernel_exact(name, op, row[None])


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_kernel_extreme_operands(name, symmetric):
    """±127 weights against rows at the ends of the code range, K deep: every accumulator near
    the int32 bound the op allows (the VNNI tile's u8 sums wrap on the way and still come out exact)."""
    k = 70000 if symmetric else 66000     # the deepest the op allows: 133144 and 66311
    w = torch.full((5, k), 127, dtype=torch.int8)
    w[1] = -127
    w[2, ::2] = -127
    op = make_op(5, k, True, symmetric, bias=False, weight=w)
    x = torch.stack([torch.ones(k), -torch.ones(k), torch.where(torch.arange(k) % 2 == 0, 1.0, -1.0)])
    assert_kernel_exact(name, op, x)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("per_token, symmetric", MODES, ids=MODE_IDS)
def test_kernel_refuses_nonfinite(name, per_token, symmetric):
    op = make_op(4, 33, per_token, symmetric)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(6, 33)
        x[4, 32] = bad                  # in the scalar tail of a row
        assert run_kernel(name, op, x) == QC_RT_ERR_NONFINITE
        with pytest.raises(ValueError, match="NaN or an infinity"):
            op(x)


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_refuses_overflowing_asymmetric_span(name):
    for per_token in (True, False):
        op = make_op(4, 9, per_token, False)
        x = torch.randn(3, 9)
        x[1, 2], x[1, 5] = 3e38, -3e38          # max − min overflows float32
        assert run_kernel(name, op, x) == QC_RT_ERR_DYNAMIC_RANGE
        with pytest.raises(ValueError, match="spans more than float32"):
            op(x)
        assert torch.equal(run_kernel(name, make_op(4, 9, per_token, True), x), make_op(4, 9, per_token, True)(x))


def test_kernel_validates_before_touching_memory():
    name = KERNELS[-1]
    op = make_op(20, 40, True, True)
    x = torch.randn(3, 40)
    kernel = dynamic.KERNELS[name]
    nbytes = dynamic.scratch_bytes(kernel, 3, 40)
    assert run_kernel(name, op, x, scratch_bytes=nbytes - 1) == QC_ERR_SIZE
    assert run_kernel(name, op, x, w_bytes=1) == QC_ERR_LAYOUT
    assert run_kernel(name, op, x, kr=8) == QC_ERR_LAYOUT
    assert run_kernel(name, op, x, y=None) == QC_ERR_NULL
    assert run_kernel(name, op, x, per_token=2) == QC_ERR_PARAM
    assert run_kernel(name, op, x, threads=-1) == QC_ERR_THREADS
    assert run_kernel(name, op, x, k=(2**31 - 1) // (127 * 127) + 1) == QC_ERR_SIZE    # int32 accumulator
    if kernel.vnni:
        assert run_kernel(name, op, x, colsum=None) == QC_ERR_NULL


def test_disassembly_of_the_tiles():
    """The native VNNI tiles (not runnable on every CI machine) use vpdpbusd ymm — VEX for AVX-VNNI,
    EVEX for AVX-512 VNNI; the emulated and AVX2 ones use vpmaddwd and no VNNI; vpmaddubsw (which
    saturates) nowhere."""
    import re
    import shutil
    import subprocess

    if shutil.which("objdump") is None:
        pytest.skip("no objdump")
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(runtime_path())], capture_output=True, text=True,
                          check=True).stdout
    funcs = {m.group(1): m.group(2) for m in re.finditer(r"<([\w.]+)>:\n(.*?)(?=\n\n|\Z)", text, re.S)}

    def body(suffix):
        return "\n".join(b for name, b in funcs.items() if name.split(".")[0].endswith(suffix))

    if "avxvnni" in "".join(funcs):                  # built with native VNNI (else QC_NO_NATIVE_VNNI)
        assert re.search(r"\{vex\} vpdpbusd .*ymm", body("_dyn_avxvnni"))
        evex = [ln for ln in body("_dyn_avx512vnni").splitlines() if "vpdpbusd" in ln]
        assert evex and all("ymm" in ln and "{vex}" not in ln for ln in evex)
    for suffix in ("_dyn_avx2", "_dyn_vnni_emu", "_dyn_scalar"):
        assert body(suffix) and "vpdpbusd" not in body(suffix), suffix
    assert "vpmaddwd" in body("_dyn_avx2") and "vpmaddwd" in body("_dyn_vnni_emu")
    dyn = "\n".join(b for name, b in funcs.items() if "_dyn_" in name or name.startswith("qc_dyn"))
    assert dyn and "vpmaddubsw" not in dyn
    assert "vfmadd" not in dyn and "vfnmadd" not in dyn, "a contracted multiply-add in the float epilogue"


def test_runtime_is_built_without_fma_contraction():
    """y = f32(acc)·scale + bias is an FMA pattern: the runtime's flags keep the roundings apart
    (the disassembly test finds no FMA in the kernel; the bit-exact tests with a bias would fail)."""
    for isa in ("scalar", "avx2", "avxvnni", "avx512vnni"):
        assert "-ffp-contract=off" in runtime_library.runtime_flags(isa)


# -- whole models --------------------------------------------------------------------------

def quantize_dynamic(model, x, per_token=True, symmetric=True):
    args = x if isinstance(x, tuple) else (x,)
    cfg = QConfig.dynamic(per_token=per_token, symmetric=symmetric)
    return qcompiler.quantize(model.eval(), [args], config=cfg, target="x86", progress=False)


@pytest.mark.parametrize("per_token, symmetric", MODES, ids=MODE_IDS)
def test_model_bit_exact_and_batch_change(per_token, symmetric):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 33), nn.GELU(), nn.Linear(33, 7, bias=False))
    x = torch.randn(2, 5, 48) * 4
    qm = quantize_dynamic(model, x, per_token, symmetric)
    compiled = qcompiler.compile(qm, target="x86")
    assert torch.equal(compiled(x), qm(x))
    x2 = torch.randn(3, 5, 48)          # another batch: recompiled on first use
    assert torch.equal(compiled(x2), qm(x2))
    text = compiled.describe()
    assert "dynamic_linear" in text and "in PyTorch" in text, text    # the GELU runs in PyTorch


@pytest.mark.parametrize("per_token, symmetric", MODES, ids=MODE_IDS)
def test_one_linear_is_one_native_program_on_1_and_3_threads(per_token, symmetric):
    """BERT's FFN shape at 2 x 64 tokens: above the serial threshold, so threads matter."""
    torch.manual_seed(1)
    model = nn.Linear(384, 1536)
    x = torch.randn(2, 64, 384)
    qm = quantize_dynamic(model, x, per_token, symmetric)
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    assert isinstance(compiled, NativeModel)
    ref = qm(x)
    for threads in (1, 3):
        compiled.threads = threads
        assert torch.equal(compiled(x), ref)


def test_chained_layers_read_the_float_value_in_the_arena():
    """Two dynamic layers in a row: one native program, the second reading the first's float
    output where the program keeps it (then both outputs leave)."""
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(20, 30), nn.Linear(30, 10)

        def forward(self, x):
            h = self.a(x)
            return self.b(h), h

    torch.manual_seed(7)
    x = torch.randn(6, 20)
    model = Two()
    qm = quantize_dynamic(model, x, per_token=False, symmetric=False)
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    assert isinstance(compiled, NativeModel)
    for got, ref in zip(compiled(x), qm(x)):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("features", ["", "avx2,fma"])
def test_forced_isa_paths(features, monkeypatch):
    """The scalar kernel in the baseline runtime, the AVX2 one in the AVX2 runtime: the same bytes."""
    from qcompiler.backends.x86 import choose_isa

    torch.manual_seed(5)
    x = torch.randn(3, 4, 70)
    qm = quantize_dynamic(nn.Linear(70, 21), x, per_token=True, symmetric=False)
    monkeypatch.setenv("QCOMPILER_CPU_FEATURES", features)
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    assert compiled.isa == choose_isa() == ("scalar" if not features else "avx2")
    assert torch.equal(compiled(x), qm(x))


def test_bundle_roundtrip(tmp_path):
    """A saved bundle carries the kernel (in its runtime file) and its header; reloaded, the same
    bytes. (`make` on a bundle, with -Wall, is tests/test_x86_backend.py's: the kernel is part of
    every x86 runtime.)"""
    from qcompiler.backends.native_model import load_bundle

    torch.manual_seed(6)
    x = torch.randn(5, 40)
    qm = quantize_dynamic(nn.Linear(40, 24), x)
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    bundle = compiled.save(tmp_path / "bundle")
    assert "qc_rt_dynamic_linear(" in (bundle / "model.c").read_text()
    assert (bundle / "runtime" / "qc_x86_dynamic.h").is_file()
    assert torch.equal(load_bundle(bundle)(x), qm(x))


def test_model_refuses_nan_and_overflowing_span():
    torch.manual_seed(2)
    x = torch.randn(4, 16)
    compiled = qcompiler.compile(quantize_dynamic(nn.Linear(16, 8), x), target="x86", pytorch_fallback=False)
    bad = x.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or an infinity"):
        compiled(bad)
    asym = qcompiler.compile(quantize_dynamic(nn.Linear(16, 8), x, True, False), target="x86",
                             pytorch_fallback=False)
    wide = x.clone()
    wide[1, 0], wide[1, 1] = 3e38, -3e38
    with pytest.raises(NativeModelError, match="spans more than float32's range"):
        asym(wide)


def test_a_nan_made_inside_the_model_is_not_blamed_on_an_input():
    # finite inputs near FLT_MAX: the first layer's outputs overflow to inf, which the second
    # layer's range scan meets
    torch.manual_seed(3)
    x = torch.randn(2, 8)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    compiled = qcompiler.compile(quantize_dynamic(model, x), target="x86", pytorch_fallback=False)
    huge = torch.full((2, 8), 3e38)
    with pytest.raises(ValueError, match="computed inside the model"):
        compiled(huge)
