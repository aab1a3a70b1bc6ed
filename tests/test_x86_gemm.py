"""x86 int8 GEMM kernels (backends/x86): bit-exact with the reference, on every ISA this
host can run — scalar, AVX2 (vpmaddwd), AVX-VNNI, AVX-512 VNNI and AMX, and the VNNI / AMX
sources built with their exact emulations (so CI machines without VNNI or AMX test the
same code).

Level 1 of DESIGN.md §3: each kernel == QLinear.forward / Requant.apply, bit for bit, for
both requantization modes, uint8/int8 activations and outputs, fused clamps, ragged M/N/K,
strided A, threads, the K-blocked path, and the extreme operands on which vpmaddubsw-based
kernels saturate.
"""
from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcompiler.backends import toolchain
from qcompiler.core.integer_ops import QAdd, QLinear, Requant, real_multiplier
from qcompiler.core.meta import FusedActivation
from qcompiler.core.qtypes import INT8, INT8_NARROW, UINT8, QParams
from qcompiler.core.quantize import (dequantize, fixed_point_multiplier, requantize_fixed_point,
                                     requantize_fp32)

try:
    from qcompiler.backends.x86 import gemm as g
    LIB = g.library()
except toolchain.ToolchainError as e:  # no C compiler: nothing here can run
    pytest.skip(f"x86 kernels cannot be built here: {e}", allow_module_level=True)

ISAS = g.available_isas()
NATIVE_VNNI = [isa for isa in ("avxvnni", "avx512vnni") if isa in ISAS]
isas = st.sampled_from(ISAS)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randint(lo, hi, shape, dtype, gen):
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64).to(dtype)


def _act_range(dtype):
    return (0, 255) if dtype == torch.uint8 else (-128, 127)


def _exact_acc(a, w, za, bias):
    acc = (a.to(torch.int64) - za) @ w.to(torch.int64).t()
    return acc + (bias.to(torch.int64) if bias is not None else 0)


# ---------------------------------------------------------------------------------------
# Which kernels run here
# ---------------------------------------------------------------------------------------

def test_available_isas_follow_the_cpu():
    assert {"scalar"} <= set(ISAS)
    try:
        from qcompiler.backends.cpu import cpu_features
        feats = cpu_features()
    except ImportError:
        pytest.skip("backends/cpu.py not present")
    if "avx2" in feats:
        assert {"avx2", "avxvnni_emu"} <= set(ISAS)
    if "avx512_vnni" in feats and {"avx512f", "avx512bw", "avx512vl"} <= feats:
        assert "avx512vnni" in ISAS
    if "avx_vnni" in feats and "avx2" in feats:
        assert "avxvnni" in ISAS
    assert g.best_isa() in ISAS
    assert not g.best_isa().endswith("_emu")
    if "amx" in ISAS:                       # AMX is decided by CPUID (cpu.py does not list it)
        assert LIB.cdll.qc_isa_supported(g._ISA_ID["amx"])


def test_auto_runs_few_rows_of_amx_weights_on_avx512_vnni():
    if "amx" not in ISAS or "avx512vnni" not in ISAS:
        pytest.skip("needs AMX and AVX-512 VNNI")
    gen = _gen(1)
    w = _randint(-128, 127, (100, 300), torch.int8, gen)
    packed = g.pack_weights(w, None, 0, "amx")
    for m in (1, g.AMX_MIN_ROWS - 1, g.AMX_MIN_ROWS, 40):
        a = _randint(0, 255, (m, 300), torch.uint8, gen)
        assert torch.equal(g.gemm(a, packed).to(torch.int64), _exact_acc(a, w, 0, None))


def test_blocking_table_is_what_was_compiled():
    out = (ctypes.c_int32 * 6)()
    for isa in g.ISAS:
        assert LIB.cdll.qc_layout(g._ISA_ID[isa], out) == 0
        b = g.BLOCKING[g._FAMILY[isa]]
        assert tuple(out) == (b.mr, b.nr, b.kr, b.elem, b.mc, b.kc)


# ---------------------------------------------------------------------------------------
# QLinear: the kernel equals module(x) bit for bit
# ---------------------------------------------------------------------------------------

ACTS = {"none": None, "relu": FusedActivation("relu", 0.0, None),
        "relu6": FusedActivation("relu6", 0.0, 6.0), "clamp": FusedActivation("clamp", -0.5, 0.5)}


def make_qlinear(n, k, *, in_dtype, za, mode, out_dtype, zo, act, per_channel, bias, gain, seed,
                 weight_range=(-127, 127)):
    """A QLinear with random int8 weights and scales chosen so that outputs spread over the
    output range (``gain`` scales the requant multiplier around that)."""
    gen = _gen(seed)
    w = _randint(*weight_range, (n, k), torch.int8, gen)
    in_qp = QParams(torch.tensor(0.02), torch.tensor(za), UINT8 if in_dtype == torch.uint8 else INT8)
    if per_channel:
        w_scale = (torch.rand(n, generator=gen) * 0.02 + 0.001).to(torch.float32)
        w_qp = QParams(w_scale, torch.zeros(n, dtype=torch.int64), INT8_NARROW, axis=0)
    else:
        w_qp = QParams(torch.tensor(0.01), torch.tensor(0), INT8_NARROW)
    acc_std = (k ** 0.5) * 75.0 * 75.0
    out_scale = float(0.02 * 0.01 * acc_std / 40.0 / gain)
    out_qp = QParams(torch.tensor(out_scale), torch.tensor(zo), UINT8 if out_dtype == torch.uint8 else INT8)
    b = _randint(-(2**20), 2**20, (n,), torch.int32, gen) if bias else None
    requant = Requant.make(real_multiplier(in_qp.scale, w_qp.scale, out=out_qp), out_qp, mode, act)
    return QLinear(w, w_qp, b, in_qp, out_qp, requant, "fc")


@st.composite
def linear_cases(draw):
    in_dtype = draw(st.sampled_from([torch.uint8, torch.int8]))
    out_dtype = draw(st.sampled_from([torch.uint8, torch.int8]))
    return dict(
        isa=draw(isas),
        m=draw(st.one_of(st.just(1), st.integers(1, 29))),
        n=draw(st.one_of(st.integers(1, 70), st.sampled_from([15, 16, 17, 63, 64, 65, 129, 200]))),
        k=draw(st.one_of(st.integers(1, 96), st.sampled_from([3, 5, 31, 33, 255, 257, 1001, 2050, 4093, 4096]))),
        in_dtype=in_dtype, za=draw(st.integers(*_act_range(in_dtype))),
        mode=draw(st.sampled_from(["fp32", "fixed_point"])),
        out_dtype=out_dtype, zo=draw(st.integers(*_act_range(out_dtype))),
        act=ACTS[draw(st.sampled_from(sorted(ACTS)))],
        per_channel=draw(st.booleans()), bias=draw(st.booleans()),
        gain=draw(st.sampled_from([1.0, 0.01, 30.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@given(case=linear_cases())
def test_qlinear_forward_is_bit_exact(case):
    isa, m = case.pop("isa"), case.pop("m")
    module = make_qlinear(case["n"], case["k"], **{k: v for k, v in case.items() if k not in ("n", "k")})
    lo, hi = _act_range(case["in_dtype"])
    x = _randint(lo, hi, (m, case["k"]), case["in_dtype"], _gen(case["seed"] + 1))
    expected = module(x)
    got = g.qlinear_forward(module, x, isa=isa)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected), f"{isa}: {int((got != expected).sum())} of {got.numel()} differ"


def test_qlinear_forward_batched_input_and_cache():
    module = make_qlinear(37, 50, in_dtype=torch.uint8, za=7, mode="fp32", out_dtype=torch.uint8, zo=3,
                          act=None, per_channel=True, bias=True, gain=1.0, seed=3)
    x = _randint(0, 255, (2, 3, 50), torch.uint8, _gen(4))
    for isa in ISAS:
        assert torch.equal(g.qlinear_forward(module, x, isa=isa), module(x))
    # a changed weight is re-packed, not served from the cache
    module.weight.mul_(-1)
    assert torch.equal(g.qlinear_forward(module, x), module(x))
    assert g.qlinear_forward(module, x[..., :0, :]).shape == (2, 0, 37)


# ---------------------------------------------------------------------------------------
# The raw GEMM: int32 accumulators, requant modes, float output, strided A, threads
# ---------------------------------------------------------------------------------------

@st.composite
def gemm_cases(draw):
    in_dtype = draw(st.sampled_from([torch.uint8, torch.int8]))
    return dict(
        isa=draw(isas), m=draw(st.integers(1, 20)), n=draw(st.integers(1, 140)),
        k=draw(st.one_of(st.integers(1, 70), st.integers(70, 1200))),
        in_dtype=in_dtype, za=draw(st.integers(*_act_range(in_dtype))),
        lda_pad=draw(st.sampled_from([0, 0, 1, 13])),
        threads=draw(st.sampled_from([None, 1, 2, 3])),
        seed=draw(st.integers(0, 2**31 - 1)),
        # log2 of the real multiplier: tiny, typical, and > 1 (exercises the 64-bit clamps)
        log2_real=draw(st.one_of(st.floats(-30, 4), st.sampled_from([-1.0, -2.0, -12.0, 0.0, 9.0]))),
    )


@given(case=gemm_cases())
def test_gemm_matches_reference_in_every_mode(case):
    isa, m, n, k, za = case["isa"], case["m"], case["n"], case["k"], case["za"]
    gen = _gen(case["seed"])
    lo, hi = _act_range(case["in_dtype"])
    base = _randint(lo, hi, (m, k + case["lda_pad"]), case["in_dtype"], gen)
    a = base[:, :k]                                   # row stride k + pad
    w = _randint(-128, 127, (n, k), torch.int8, gen)  # full int8 range: the kernels need no narrowing
    bias = _randint(-(2**24), 2**24, (n,), torch.int32, gen)
    packed = g.pack_weights(w, bias, za, isa, input_dtype=case["in_dtype"])
    acc = _exact_acc(a, w, za, bias)
    th = case["threads"]

    got = g.gemm(a, packed, isa=isa, threads=th)
    assert got.dtype == torch.int32 and torch.equal(got.to(torch.int64), acc)

    real = torch.tensor(2.0 ** case["log2_real"], dtype=torch.float64) * (1 + torch.rand(n, generator=gen, dtype=torch.float64))
    mult = real.to(torch.float32)
    m0, shift = fixed_point_multiplier(real)
    for out_dtype, zo, (qmin, qmax) in ((torch.uint8, 11, (0, 255)), (torch.int8, -3, (-128, 127)),
                                        (torch.uint8, 100, (100, 180))):
        rq = g.make_requant(packed, "fp32", multiplier=mult, zero_point=zo, qmin=qmin, qmax=qmax, out_dtype=out_dtype)
        expected = requantize_fp32(acc, mult, zo, qmin, qmax).to(out_dtype)
        assert torch.equal(g.gemm(a, packed, rq, isa=isa, threads=th), expected)
        out_qp = QParams(torch.tensor(0.037), torch.tensor(zo), UINT8 if out_dtype == torch.uint8 else INT8)
        deq = g.gemm(a, packed, rq, out_dtype=torch.float32, out_scale=0.037, isa=isa, threads=th)
        assert torch.equal(deq, dequantize(expected, out_qp))

        rq = g.make_requant(packed, "fixed_point", m0=m0, shift=shift, zero_point=zo, qmin=qmin, qmax=qmax,
                            out_dtype=out_dtype)
        expected = requantize_fixed_point(acc, m0, shift, zo, qmin, qmax).to(out_dtype)
        assert torch.equal(g.gemm(a, packed, rq, isa=isa, threads=th), expected)


@pytest.mark.parametrize("out_dtype, zo", [(torch.int8, 0), (torch.uint8, 100)])
@pytest.mark.parametrize("isa", ISAS)
def test_fp32_requant_rounds_half_to_even(isa, out_dtype, zo):
    """Accumulators k + 0.5 after the multiply: ties go to even, as torch.round does (uint8
    with 64+ columns: the packed epilogue, qc_store64)."""
    n, k = 72, 8
    w = torch.zeros((n, k), dtype=torch.int8)
    w[:, 0] = 1
    a = torch.arange(-30, 30, dtype=torch.int64).add(128).to(torch.uint8).reshape(-1, 1).repeat(1, k)
    packed = g.pack_weights(w, None, 128, isa)
    acc = _exact_acc(a, w, 128, None)
    rq = g.make_requant(packed, "fp32", multiplier=0.5, zero_point=zo, out_dtype=out_dtype)
    lo, hi = (-128, 127) if out_dtype == torch.int8 else (0, 255)
    expected = requantize_fp32(acc, torch.tensor(0.5), zo, lo, hi).to(out_dtype)
    got = g.gemm(a, packed, rq, isa=isa)
    assert torch.equal(got, expected)
    # 0.5 → 0, 1.5 → 2, -1.5 → -2
    assert got[31, 0] == zo and got[33, 0] == zo + 2 and got[27, 0] == zo - 2


@pytest.mark.parametrize("isa", ISAS)
def test_threads_and_partitions_agree(isa):
    gen = _gen(5)
    # split N, split M, few rows, and chunks of whole output rows (150 int32 = 600 bytes: rows
    # share cache lines, 3 panels)
    for m, n, k in ((97, 300, 77), (150, 5, 64), (3, 1000, 40), (333, 150, 24)):
        a = _randint(0, 255, (m, k), torch.uint8, gen)
        w = _randint(-128, 127, (n, k), torch.int8, gen)
        packed = g.pack_weights(w, None, 9, isa)
        results = [g.gemm(a, packed, isa=isa, threads=t) for t in (1, 2, 3, 7)]
        assert torch.equal(results[0].to(torch.int64), _exact_acc(a, w, 9, None))
        assert all(torch.equal(results[0], r) for r in results[1:])


def test_concurrent_calls_from_python_threads():
    """One pool serves one call at a time; a concurrent call runs on its own thread."""
    import threading

    isa = g.best_isa()
    gen = _gen(11)
    jobs = []
    for i in range(6):
        a = _randint(0, 255, (40 + i, 300), torch.uint8, gen)
        w = _randint(-128, 127, (200, 300), torch.int8, gen)
        jobs.append((a, w, g.pack_weights(w, None, 5, isa)))
    results = [None] * len(jobs)

    def work(i):
        a, w, packed = jobs[i]
        for _ in range(5):
            results[i] = g.gemm(a, packed, isa=isa, threads=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (a, w, _), r in zip(jobs, results):
        assert torch.equal(r.to(torch.int64), _exact_acc(a, w, 5, None))


# the K- and M-blocked loop nest (int32 partial sums in scratch between K blocks), with
# tiny blocks so that small problems cross many block and tail boundaries
SMALL_BLOCKS = {fam: dataclasses.replace(b, mc=2 * b.mr, kc=64 if fam == "amx" else 12)   # AMX: whole 64-k blocks
                for fam, b in g.BLOCKING.items()}


@given(isa=isas, m=st.integers(1, 70), n=st.integers(1, 140), k=st.integers(1, 200),
       mode=st.sampled_from(["none", "fp32", "fixed_point"]), seed=st.integers(0, 2**31 - 1))
def test_cache_blocked_loop_nest_is_exact(isa, m, n, k, mode, seed):
    lib = _small_block_library()
    gen = _gen(seed)
    a = _randint(0, 255, (m, k), torch.uint8, gen)
    w = _randint(-128, 127, (n, k), torch.int8, gen)
    bias = _randint(-1000, 1000, (n,), torch.int32, gen)
    packed = g.pack_weights(w, bias, 17, isa)
    acc = _exact_acc(a, w, 17, bias)
    if mode == "none":
        assert torch.equal(g.gemm(a, packed, isa=isa, threads=2, lib=lib).to(torch.int64), acc)
        return
    real = torch.rand(n, generator=gen, dtype=torch.float64) * 1e-3 + 1e-5
    m0, shift = fixed_point_multiplier(real)
    rq = g.make_requant(packed, mode, multiplier=real.to(torch.float32), m0=m0, shift=shift, zero_point=5)
    expected = (requantize_fp32(acc, real.to(torch.float32), 5, 0, 255) if mode == "fp32"
                else requantize_fixed_point(acc, m0, shift, 5, 0, 255)).to(torch.uint8)
    assert torch.equal(g.gemm(a, packed, rq, isa=isa, threads=2, lib=lib), expected)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [19, 147, 200, 64])
def test_rows_readable_past_k_are_read_in_place_and_ignored(isa, k):
    """A as a view of wider rows (qc_gemm_args.a_cols > k): AMX reads its partial last K
    block in place; whatever the extra bytes hold (here random), they meet zero weights."""
    gen = _gen(k)
    width = -(-k // 64) * 64 + 64
    wide = _randint(0, 255, (37, width), torch.uint8, gen)
    a = wide[:, :k]
    w = _randint(-128, 127, (70, k), torch.int8, gen)
    packed = g.pack_weights(w, None, 3, isa)
    out = g.gemm(a, packed, isa=isa, threads=2)
    assert torch.equal(out.to(torch.int64), _exact_acc(a, w, 3, None))
    assert torch.equal(out, g.gemm(a.contiguous(), packed, isa=isa, threads=2))


@pytest.mark.parametrize("isa", [i for i in ISAS if i.startswith(("avx512vnni", "amx"))] or ["scalar"])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 64 + 8, 64 + 24, 64 + 40])
@pytest.mark.parametrize("mode", ["none", "fp32"])
def test_narrow_panels_are_exact(isa, n, mode):
    """Panels with at most 32 valid columns run taller, narrower tiles (12 rows x 1-2
    vectors); rows 29 = two full tiles and a tail, K with a partial group."""
    gen = _gen(n)
    a = _randint(0, 255, (29, 150), torch.uint8, gen)
    w = _randint(-128, 127, (n, 150), torch.int8, gen)
    bias = _randint(-1000, 1000, (n,), torch.int32, gen)
    packed = g.pack_weights(w, bias, 9, isa)
    acc = _exact_acc(a, w, 9, bias)
    if mode == "none":
        assert torch.equal(g.gemm(a, packed, isa=isa, threads=2).to(torch.int64), acc)
        return
    real = torch.rand(n, generator=gen, dtype=torch.float64) * 1e-3 + 1e-5
    rq = g.make_requant(packed, "fp32", multiplier=real.to(torch.float32), zero_point=5)
    expected = requantize_fp32(acc, real.to(torch.float32), 5, 0, 255).to(torch.uint8)
    assert torch.equal(g.gemm(a, packed, rq, isa=isa, threads=2), expected)


@pytest.mark.parametrize("isa", [i for i in ("amx", "amx_emu", "avx512vnni", "avx512vnni_emu") if i in ISAS])
@pytest.mark.parametrize("kh, kw, ph, pw", [(3, 3, 1, 1), (1, 3, 0, 1), (3, 3, 0, 0)])
@pytest.mark.parametrize("cout", [40, 20, 130])
def test_shifted_views_are_a_convolution(isa, kh, kw, ph, pw, cout):
    """qc_gemm_shifted_<isa>: a stride-1 convolution read from the padded NHWC image through
    per-64-k-block offsets, padding rows dropped by the row map, against exact integers;
    bad offsets and maps are refused before any load. 20 output channels: AVX-512 VNNI's
    narrow tiles; 130: a full panel and a tail."""
    gen = _gen(kh * 10 + ph)
    n, h, w, c = 2, 9, 11, 128
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    hp, wp = oh + kh - 1, ow + kw - 1
    x = _randint(0, 255, (n, h, w, c), torch.uint8, gen)
    xp = torch.full((n, hp, wp, c), 7, dtype=torch.uint8)           # 7: the input zero point
    xp[:, ph:ph + h, pw:pw + w] = x
    wt = _randint(-128, 127, (cout, kh, kw, c), torch.int8, gen)
    packed = g.pack_weights(wt.reshape(cout, -1), None, 7, isa)
    koff = torch.tensor([(ky * wp + kx) * c + cb * 64 for ky in range(kh) for kx in range(kw)
                         for cb in range(c // 64)], dtype=torch.int64)
    m = (n - 1) * hp * wp + (oh - 1) * wp + ow
    out = torch.full((n * oh * ow, cout), -1, dtype=torch.int32)
    args = g._build_args(isa, xp.reshape(-1, c)[:m], packed, None, out, None, 2)
    args.k, args.lda = kh * kw * c, c
    entry = getattr(LIB.cdll, f"qc_gemm_shifted_{isa}")
    entry.restype = ctypes.c_int
    def call(offsets=koff, a_bytes=xp.numel(), base=0, plane=hp * wp, wpad=wp):
        return entry(ctypes.byref(args), ctypes.c_void_p(offsets.data_ptr()), ctypes.c_int64(a_bytes),
                     ctypes.c_int64(base), ctypes.c_int64(plane), ctypes.c_int64(wpad), ctypes.c_int64(oh),
                     ctypes.c_int64(ow))
    assert call() == 0
    cols = torch.nn.functional.unfold(xp.permute(0, 3, 1, 2).to(torch.float64), (kh, kw))   # [n, c*kh*kw, L]
    cols = cols.reshape(n, c, kh, kw, -1).permute(0, 4, 2, 3, 1).reshape(-1, kh * kw * c).to(torch.int64)
    expected = (cols - 7) @ wt.reshape(cout, -1).to(torch.int64).t()
    assert torch.equal(out.to(torch.int64), expected)
    bad = koff.clone()
    bad[-1] += 64
    assert call(offsets=bad) == 3                                  # the last block would read past xp
    assert call(a_bytes=xp.numel() - 1) == 3
    assert call(wpad=ow - 1) == 2 and call(base=-1) == 2


class _PostAdd(ctypes.Structure):
    """``qc_post_add`` (gemm_common.h)."""
    _fields_ = [("r", ctypes.c_void_p), ("ldr", ctypes.c_int64), ("mode", ctypes.c_int32),
                ("za", ctypes.c_int32), ("zb", ctypes.c_int32), ("zo", ctypes.c_int32), ("qmin", ctypes.c_int32),
                ("qmax", ctypes.c_int32), ("shift", ctypes.c_int32), ("ma", ctypes.c_float), ("mb", ctypes.c_float),
                ("m0a", ctypes.c_int64), ("m0b", ctypes.c_int64)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
def test_fused_residual_add_is_qadd(isa, mode):
    """The epilogue's fused residual add equals QAdd on the GEMM's requantized output and r
    (AVX-512 VNNI and AMX, native and emulated); the other kernels refuse it."""
    gen = _gen(3)
    m, k, n = 37, 150, 70
    a = _randint(0, 255, (m, k), torch.uint8, gen)
    w = _randint(-128, 127, (n, k), torch.int8, gen)
    r = _randint(0, 255, (m, n), torch.uint8, gen)
    packed = g.pack_weights(w, None, 11, isa)
    real = torch.full((n,), 2e-4, dtype=torch.float64)
    m0, shift = fixed_point_multiplier(real)
    rq = g.make_requant(packed, mode, multiplier=real.to(torch.float32), m0=m0, shift=shift, zero_point=100)
    add = QAdd(QParams(0.1, 100, UINT8), QParams(0.05, 120, UINT8), QParams(0.12, 90, UINT8), mode)
    out = torch.empty((m, n), dtype=torch.uint8)
    args = g._build_args(isa, a, packed, rq, out, None, 2)
    post = _PostAdd(r.data_ptr(), n, 1 if mode == "fp32" else 2, 100, 120, 90, add.qmin, add.qmax, add.shift,
                    float(add.multipliers[0]), float(add.multipliers[1]), int(add.m0[0]), int(add.m0[1]))
    args.post_add = ctypes.cast(ctypes.pointer(post), ctypes.c_void_p)
    entry = LIB.entries["qc_gemm"]
    if not isa.startswith(("avx512vnni", "amx")):
        assert entry(ctypes.byref(args)) == 6
        return
    assert entry(ctypes.byref(args)) == 0
    own = g.gemm(a, packed, rq, isa=isa, threads=2)
    assert torch.equal(out, add(own, r))
    post.ldr = n - 1
    assert entry(ctypes.byref(args)) == 3


_small_lib = {}


def _small_block_library():
    if "lib" not in _small_lib:
        _small_lib["lib"] = g.build_library(SMALL_BLOCKS)
    return _small_lib["lib"]


# ---------------------------------------------------------------------------------------
# Extreme operands: where vpmaddubsw (u8 x s8 -> saturating int16 pairs) goes wrong
# ---------------------------------------------------------------------------------------

def _saturating_pair_sum(a_row, w_row):
    """What a vpmaddubsw kernel accumulates: int16-saturated sums of adjacent products."""
    p = a_row.to(torch.int64) * w_row.to(torch.int64)
    pairs = p[: p.numel() // 2 * 2].reshape(-1, 2).sum(1).clamp(-32768, 32767)
    return int(pairs.sum()) + int(p[p.numel() // 2 * 2:].sum())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [4096, 4093])
@pytest.mark.parametrize("wval", [-127, -128, 127])
def test_extreme_operands_are_exact(isa, k, wval):
    m, n = 7, 70
    a = torch.full((m, k), 255, dtype=torch.uint8)
    w = torch.full((n, k), wval, dtype=torch.int8)
    w[1::2, 1::2] = -wval if wval != -128 else 127          # mixed-sign pairs in odd rows
    packed = g.pack_weights(w, None, 0, isa)
    acc = _exact_acc(a, w, 0, None)
    got = g.gemm(a, packed, isa=isa)
    assert torch.equal(got.to(torch.int64), acc)
    assert int(acc[0, 0]) == 255 * wval * k
    if abs(wval) >= 127:                                      # the saturating kernel is wrong here
        assert _saturating_pair_sum(a[0], w[0]) != int(acc[0, 0])
    # and through a QLinear with requantization (all-255 inputs, zero point 0)
    for mode in ("fp32", "fixed_point"):
        module = make_qlinear(n, k, in_dtype=torch.uint8, za=0, mode=mode, out_dtype=torch.int8, zo=0,
                              act=None, per_channel=True, bias=False, gain=1.0, seed=1,
                              weight_range=(-127, 127))
        module.weight.copy_(torch.full((n, k), max(wval, -127), dtype=torch.int8))
        assert torch.equal(g.qlinear_forward(module, a, isa=isa), module(a))


@pytest.mark.parametrize("isa", ISAS)
def test_extreme_int8_activations_are_exact(isa):
    k = 4096
    for aval, za in ((-128, 127), (127, -128), (-128, -128)):
        a = torch.full((5, k), aval, dtype=torch.int8)
        w = torch.full((33, k), -127, dtype=torch.int8)
        w[::3] = 127
        packed = g.pack_weights(w, None, za, isa, input_dtype=torch.int8)
        assert torch.equal(g.gemm(a, packed, isa=isa).to(torch.int64), _exact_acc(a, w, za, None))


# ---------------------------------------------------------------------------------------
# VNNI: emulation == instruction == description; the native build really uses vpdpbusd
# ---------------------------------------------------------------------------------------

def _dpbusd_desc(acc, a, b):
    """The instruction's meaning: per 32-bit lane, acc + Σ_{i<4} u8·s8, wrapping int32."""
    s = (a.to(torch.int64).reshape(-1, 4) * b.to(torch.int64).reshape(-1, 4)).sum(1)
    r = acc.to(torch.int64) + s
    return (((r + 2**31) % 2**32) - 2**31).to(torch.int32)


def _dpbusd_operands(nvec, lanes, seed):
    gen = _gen(seed)
    acc = _randint(INT32_MIN, INT32_MAX, (nvec * lanes,), torch.int32, gen)
    a = _randint(0, 255, (nvec * lanes * 4,), torch.uint8, gen)
    b = _randint(-128, 127, (nvec * lanes * 4,), torch.int8, gen)
    # extremes: 255 x -128 everywhere next to INT32_MIN / MAX accumulators (wrap-around)
    a[: lanes * 4] = 255
    b[: lanes * 4] = -128
    acc[: lanes // 2] = INT32_MIN
    b[lanes * 4: lanes * 8] = 127
    a[lanes * 4: lanes * 8] = 255
    acc[lanes: lanes + lanes // 2] = INT32_MAX
    return acc, a, b


@pytest.mark.parametrize("width,emu_isa,native_isa", [(512, "avx512vnni_emu", "avx512vnni"),
                                                      (256, "avxvnni_emu", "avxvnni")])
@given(seed=st.integers(0, 2**31 - 1))
def test_vnni_emulation_equals_description_and_instruction(width, emu_isa, native_isa, seed):
    if emu_isa not in ISAS:
        pytest.skip(f"{emu_isa} needs {'AVX-512F/BW' if width == 512 else 'AVX2'}")
    lanes = width // 32
    acc, a, b = _dpbusd_operands(9, lanes, seed)
    desc = _dpbusd_desc(acc, a, b)
    assert torch.equal(g.dpbusd(acc, a, b, width, emulated=True), desc)
    if native_isa in ISAS:                    # the real instruction, where the CPU has it
        assert torch.equal(g.dpbusd(acc, a, b, width, emulated=False), desc)


def _disassembly(path) -> str:
    dis = getattr(toolchain, "disassemble", None)
    if dis is not None:
        try:
            text = dis(path)
            if isinstance(text, str) and text:
                return text
        except Exception:  # another engineer's helper: fall back to objdump on any mismatch
            pass
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not installed")
    return subprocess.run([objdump, "-d", "--no-show-raw-insn", str(path)], capture_output=True,
                          text=True, check=True).stdout


def _functions(text: str) -> dict[str, list[str]]:
    funcs, cur = {}, None
    for line in text.splitlines():
        if line.endswith(">:") and "<" in line:
            cur = line[line.index("<") + 1:-2].split(".")[0]     # drop .constprop.0, .cold…
            funcs.setdefault(cur, [])
        elif cur is not None and line.strip():
            funcs[cur].append(line)
    return funcs


def test_disassembly_uses_vpdpbusd_natively_and_never_vpmaddubsw():
    if not LIB.native_vnni:
        pytest.skip("this compiler cannot target VNNI (built with QC_NO_NATIVE_VNNI)")
    funcs = _functions(_disassembly(LIB.path))

    def insns(suffix):
        return [ln for name, body in funcs.items() if name.endswith(suffix) for ln in body]

    zmm = [ln for ln in insns("_avx512vnni") if "vpdpbusd" in ln]
    ymm = [ln for ln in insns("_avxvnni") if "vpdpbusd" in ln]
    assert zmm and all("zmm" in ln for ln in zmm), "AVX-512 VNNI kernel lacks vpdpbusd zmm"
    assert ymm and all("ymm" in ln for ln in ymm), "AVX-VNNI kernel lacks vpdpbusd ymm"
    assert any("tdpbusd" in ln for ln in insns("_amx")), "AMX kernel lacks tdpbusd"
    for suffix in ("_avx512vnni_emu", "_avxvnni_emu", "_amx_emu", "_avx2", "_scalar"):
        body = insns(suffix)
        assert body, f"no functions named *{suffix}"
        assert not any("vpdpbusd" in ln or "tdpbusd" in ln or "tileloadd" in ln for ln in body), \
            f"*{suffix} must not use VNNI or AMX"
    assert any("vpmaddwd" in ln for ln in insns("_avx2"))
    everything = [ln for body in funcs.values() for ln in body]
    assert not any("vpmaddubsw" in ln for ln in everything), "vpmaddubsw saturates: never used"


# ---------------------------------------------------------------------------------------
# Bad inputs: clear Python errors, and the C entry validates before touching memory
# ---------------------------------------------------------------------------------------

def _small_problem(isa="scalar"):
    w = torch.ones((5, 8), dtype=torch.int8)
    return torch.zeros((3, 8), dtype=torch.uint8), g.pack_weights(w, None, 0, isa)


def test_python_wrapper_rejects_bad_inputs():
    a, packed = _small_problem()
    with pytest.raises(TypeError, match="int8"):
        g.pack_weights(torch.ones((5, 8)), None, 0, "scalar")
    with pytest.raises(ValueError, match="bias"):
        g.pack_weights(torch.ones((5, 8), dtype=torch.int8), torch.ones(4, dtype=torch.int32), 0, "scalar")
    with pytest.raises(ValueError, match="zero point"):
        g.pack_weights(torch.ones((5, 8), dtype=torch.int8), None, 300, "scalar")
    with pytest.raises(ValueError, match="unknown ISA"):
        g.pack_weights(torch.ones((5, 8), dtype=torch.int8), None, 0, "sse9")
    with pytest.raises(TypeError, match="packed for torch.uint8"):
        g.gemm(a.to(torch.int8), packed)
    with pytest.raises(TypeError, match="uint8"):
        g.gemm(a.float(), packed)
    with pytest.raises(ValueError, match=r"\[M, 8\]"):
        g.gemm(a[:, :7], packed)
    with pytest.raises(ValueError, match=r"\[M, 8\]"):
        g.gemm(a.reshape(1, 3, 8), packed)
    with pytest.raises(ValueError, match="unit stride"):
        g.gemm(torch.zeros((8, 3), dtype=torch.uint8).t(), packed)
    with pytest.raises(ValueError, match="threads"):
        g.gemm(a, packed, threads=0)
    with pytest.raises(ValueError, match="out_scale"):
        g.gemm(a, packed, g.make_requant(packed, "fp32", multiplier=0.1), out_dtype=torch.float32)
    with pytest.raises(ValueError, match="shift"):
        g.make_requant(packed, "fixed_point", m0=2**30, shift=0)
    with pytest.raises(ValueError, match="m0"):
        g.make_requant(packed, "fixed_point", m0=2**31, shift=31)
    with pytest.raises(ValueError, match="finite"):
        g.make_requant(packed, "fp32", multiplier=float("nan"))
    with pytest.raises(ValueError, match="clamp"):
        g.make_requant(packed, "fp32", multiplier=0.1, qmin=10, qmax=5)
    with pytest.raises(ValueError, match="mode"):
        g.make_requant(packed, "fp16", multiplier=0.1)
    other = [isa for isa in ISAS if g.BLOCKING[g._FAMILY[isa]].nr != packed.blocking.nr]
    if other:
        with pytest.raises(ValueError, match="cannot run on"):
            g.gemm(a, packed, isa=other[0])
    assert g.gemm(a[:0], packed).shape == (0, 5)


def test_native_errors_surface_as_gemm_error():
    a, packed = _small_problem()
    truncated = dataclasses.replace(packed, data=packed.data[:-1])   # wrong buffer size
    with pytest.raises(g.GemmError, match="layout"):
        g.gemm(a, truncated)


def test_unsupported_isa_is_refused(monkeypatch):
    pytest.importorskip("qcompiler.backends.cpu")
    monkeypatch.setenv("QCOMPILER_CPU_FEATURES", "")
    assert g.available_isas() == ["scalar"] and g.best_isa() == "scalar"
    a, packed = _small_problem("avx2")
    with pytest.raises(g.UnsupportedISA, match="avx2"):
        g.gemm(a, packed)


def test_qlinear_forward_rejects_what_it_cannot_run():
    module = make_qlinear(4, 6, in_dtype=torch.uint8, za=0, mode="fp32", out_dtype=torch.uint8, zo=0,
                          act=None, per_channel=False, bias=False, gain=1.0, seed=0)
    with pytest.raises(TypeError, match="torch.uint8"):
        g.qlinear_forward(module, torch.zeros((2, 6), dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\[\.\.\., 6\]"):
        g.qlinear_forward(module, torch.zeros((2, 5), dtype=torch.uint8))
    with pytest.raises(TypeError, match="QLinear"):
        g.qlinear_forward(torch.nn.Linear(6, 4), torch.zeros((2, 6), dtype=torch.uint8))
    module.weight_qparams = QParams(torch.tensor(0.01), torch.tensor(3), INT8)
    with pytest.raises(NotImplementedError, match="symmetric"):
        g.qlinear_forward(module, torch.zeros((2, 6), dtype=torch.uint8))


def _raw_args(isa, a, packed, out):
    return g._build_args(isa, a, packed, None, out, None, 1)


@pytest.mark.parametrize("isa", ISAS)
def test_c_entry_validates_before_touching_memory(isa):
    a, packed = _small_problem(isa)
    out = torch.empty((3, 5), dtype=torch.int32)
    entry = LIB.entries["qc_gemm"]

    def call(**changes):
        args = _raw_args(isa, a, packed, out)
        for key, value in changes.items():
            setattr(args, key, value)
        return entry(ctypes.byref(args))

    assert call() == 0 and torch.equal(out, torch.zeros((3, 5), dtype=torch.int32))
    assert entry(None) == 1
    for field in ("a", "b", "bias", "c"):
        assert call(**{field: None}) == 1, field
    assert call(m=0) == 2 and call(n=-1) == 2 and call(k=0) == 2 and call(m=2**40) == 2
    assert call(lda=7) == 3 and call(ldc=4) == 3
    assert call(a_cols=a.shape[1] - 1) == 3 and call(a_cols=a.shape[1] + 1) == 3   # k <= a_cols <= lda
    assert call(b_bytes=packed.data.numel() - 1) == 4 and call(b_nr=packed.blocking.nr * 2) == 4
    assert call(struct_size=8) == 8
    assert call(threads=-1) == 9
    assert call(out_type=0) == 6                    # uint8 output needs a requant mode
    assert call(requant_mode=1, out_type=0) == 1    # fp32 mode without multipliers
    assert call(isa=99) == 5
    m0 = torch.full((packed.n_pad,), 2**30, dtype=torch.int32)
    bad_shift = torch.full((packed.n_pad,), 63, dtype=torch.int32)
    assert call(requant_mode=2, out_type=0, m0=m0.data_ptr(), shift=bad_shift.data_ptr(), qmax=255) == 6
    assert call(requant_mode=2, out_type=0, m0=m0.data_ptr(), shift=bad_shift.data_ptr(), qmax=300) == 6
    for code in range(10):
        assert LIB.cdll.qc_strerror(code)


def test_c_auto_entry_picks_the_cpuid_best():
    best = {v: k for k, v in g._ISA_ID.items()}[LIB.cdll.qc_best_isa()]
    gen = _gen(0)
    a = _randint(0, 255, (9, 100), torch.uint8, gen)
    w = _randint(-128, 127, (70, 100), torch.int8, gen)
    packed = g.pack_weights(w, None, 3, best)
    out = torch.empty((9, 70), dtype=torch.int32)
    args = _raw_args(best, a, packed, out)
    args.isa = 0                                    # QC_ISA_AUTO
    assert LIB.entries["qc_gemm"](ctypes.byref(args)) == 0
    assert torch.equal(out.to(torch.int64), _exact_acc(a, w, 3, None))
