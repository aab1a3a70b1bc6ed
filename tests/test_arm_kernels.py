"""ARM int8 kernels (backends/arm/kernels, issue 11 groundwork) against qcompiler's reference.

Each NEON level's GEMM (baseline smull/smlal/sadalp, dotprod sdot, i8mm smmla) and the baseline
depthwise convolution must equal, byte for byte, both the portable scalar C reference beside
them and QLinear / QConv.forward (qcompiler/core/integer_ops.py), in both requantization
modes, for int8 and uint8 tensors in ARM's signed storage (uint8 stored as q - 128).

Cross-compiled with aarch64-linux-gnu-gcc -static and run under qemu-aarch64 -cpu max on
other hosts; built and run natively on aarch64 (levels the CPU lacks are skipped). Many cases
go through one driver process (tests of a batch share one qemu start).
"""
import dataclasses
import math
import os
import platform
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.backends import toolchain
from qcompiler.core.integer_ops import QConv, QLinear, Requant
from qcompiler.core.qtypes import INT8, INT8_NARROW, UINT8, QParams

KERNELS = Path(__file__).resolve().parents[1] / "backends" / "arm" / "kernels"
RUNTIME = Path(__file__).resolve().parents[1] / "backends" / "c_runtime"
LEVELS = ("neon", "dotprod", "i8mm")
MARCH = {"neon": "armv8-a", "dotprod": "armv8.2-a+dotprod", "i8mm": "armv8.6-a+i8mm"}
CPU_FEATURE = {"neon": "asimd", "dotprod": "asimddp", "i8mm": "i8mm"}   # /proc/cpuinfo names
RQ_MODE = {"fp32": 1, "fixed_point": 2}
INT32_MAX = 2**31 - 1


def _toolchain():
    """(compiler, runner prefix, levels) or a reason to skip."""
    if platform.machine() in ("aarch64", "arm64"):
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            return "no C compiler on this aarch64 host"
        try:
            flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                          if ln.startswith("Features")), [])
        except OSError:
            flags = []
        return cc, [], [lv for lv in LEVELS if CPU_FEATURE[lv] in flags or lv == "neon"]
    try:  # the toolchain's cross compiler and emulator ($QCOMPILER_CROSS_CC, $QCOMPILER_QEMU honoured)
        return toolchain.find_compiler("aarch64"), toolchain.runner("aarch64"), list(LEVELS)
    except toolchain.ToolchainError as e:
        return f"ARM kernel tests skip: {e}"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """(run(records) -> results, levels)."""
    tc = _toolchain()
    if isinstance(tc, str):
        pytest.skip(tc)
    cc, runner, levels = tc
    out = tmp_path_factory.mktemp("arm_kernels")
    common = ["-O2", "-Wall", "-Wextra", "-Werror", f"-I{RUNTIME}", f"-I{KERNELS}"]
    objs = []
    for src, march in [("qc_arm_ref.c", "armv8-a"), ("qc_arm_gemm_neon.c", "armv8-a"),
                       ("qc_arm_depthwise_neon.c", "armv8-a"), ("qc_arm_test_driver.c", "armv8-a"),
                       ("qc_arm_gemm_dotprod.c", MARCH["dotprod"]), ("qc_arm_gemm_i8mm.c", MARCH["i8mm"])]:
        obj = out / (src[:-2] + ".o")
        subprocess.run([cc, *common, f"-march={march}", "-c", str(KERNELS / src), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        objs.append(str(obj))
    exe = out / "qc_arm_test_driver"
    subprocess.run([cc, "-static", *objs, "-o", str(exe)], check=True, capture_output=True, text=True)
    counter = iter(range(10**9))

    def run(records, lv=levels):
        i = next(counter)
        inp, outp = out / f"in{i}.bin", out / f"out{i}.bin"
        inp.write_bytes(b"".join(r.payload for r in records) + struct.pack("<q", 0))
        proc = subprocess.run([*runner, str(exe), ",".join(lv), str(inp), str(outp)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        data, pos, results = outp.read_bytes(), 0, []
        for r in records:
            per = []
            for _ in range(1 + len(lv)):
                status = struct.unpack_from("<i", data, pos)[0]
                per.append((status, np.frombuffer(data, np.int8, r.out_bytes, pos + 4)))
                pos += 4 + r.out_bytes
            results.append(per)
        assert pos == len(data)
        inp.unlink(), outp.unlink()
        return results

    return run, levels


# ---- cases: parameters drawn by hypothesis, contents from a seeded generator ----

def _stored(q: torch.Tensor, qtype) -> np.ndarray:
    """ARM storage of a reference tensor: int8 as is, uint8 shifted by -128."""
    q = q.to(torch.int16) - (128 if qtype is UINT8 else 0)
    return q.to(torch.int8).numpy()


@dataclasses.dataclass
class Record:
    payload: bytes
    out_bytes: int
    expected: np.ndarray          # stored int8, the reference's output
    has_neg128: bool              # a weight of -128: the neon level must refuse it
    describe: str


def _requant(g, channels, k, mode, out_qtype, narrow, spread, ties=False):
    # multipliers near the one that maps a typical |acc| (√k · 64 · 64) to ~60, spread 2^±spread;
    # ties: powers of two, so that many products land exactly halfway (half-even vs half-up)
    centre = 60.0 / (math.sqrt(k) * 4096.0)
    u = (torch.rand(channels, generator=g, dtype=torch.float64) * 2 - 1) * spread
    real = torch.exp2(torch.round(math.log2(centre) + u)) if ties else centre * torch.exp2(u)
    zp = int(torch.randint(out_qtype.qmin, out_qtype.qmax + 1, (), generator=g))
    rq = Requant.make(real, QParams(torch.tensor(1.0), torch.tensor(zp), out_qtype), mode)
    if narrow:   # a fused activation's clamp
        lo, hi = sorted(int(v) for v in torch.randint(out_qtype.qmin, out_qtype.qmax + 1, (2,), generator=g))
        rq = dataclasses.replace(rq, qmin=lo, qmax=hi)
    return rq


def _rq_payload(rq, out_qtype, bias, channels):
    shift = 128 if out_qtype is UINT8 else 0
    b = bias if bias is not None else torch.zeros(channels, dtype=torch.int32)
    header = struct.pack("<5q", RQ_MODE[rq.mode], rq.zero_point - shift, rq.qmin - shift, rq.qmax - shift,
                         int(bias is not None))
    arrays = (b.to(torch.int32).numpy().tobytes() + rq.multiplier.to(torch.float32).reshape(-1).numpy().tobytes()
              + rq.m0.to(torch.int32).reshape(-1).numpy().tobytes()
              + rq.shift.to(torch.int32).reshape(-1).numpy().tobytes())
    return header, arrays


def _weights(g, shape, full_int8, extreme):
    lo = -128 if full_int8 else -127
    if extreme:   # the magnitudes where int16 pair sums and int32 sums are tightest
        return torch.where(torch.rand(shape, generator=g) < 0.5, lo, 127).to(torch.int8)
    return torch.randint(lo, 128, shape, generator=g, dtype=torch.int8)


def _activations(g, shape, qtype, extreme):
    if extreme:
        return torch.where(torch.rand(shape, generator=g) < 0.5, qtype.qmin, qtype.qmax).to(qtype.storage)
    return torch.randint(qtype.qmin, qtype.qmax + 1, shape, generator=g, dtype=torch.int64).to(qtype.storage)


def _bias(g, channels, k, max_dx, max_w, kind):
    if kind == "none":
        return None
    if kind == "edge":   # |bias| up to what keeps the exact accumulator inside int32 (check_accumulator)
        room = INT32_MAX - k * max_dx * max_w
        sign = torch.where(torch.rand(channels, generator=g) < 0.5, -1, 1)
        return (sign * room).to(torch.int32)
    return torch.randint(-2**20, 2**20, (channels,), generator=g, dtype=torch.int32)


def gemm_record(seed, m, n, k, mode, in_dt, out_dt, bias_kind, narrow, extreme, full_int8, pad_a, pad_c,
                ties=False, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    iq, oq = (INT8 if in_dt == "int8" else UINT8), (INT8 if out_dt == "int8" else UINT8)
    x = _activations(g, (m, k), iq, extreme)
    za = int(torch.randint(iq.qmin, iq.qmax + 1, (), generator=g))
    w = _weights(g, (n, k), full_int8, extreme)
    max_dx = max(iq.qmax - za, za - iq.qmin)
    bias = _bias(g, n, k, max_dx, 128 if full_int8 else 127, bias_kind)
    rq = _requant(g, n, k, mode, oq, narrow, spread, ties)
    wqp = QParams(torch.ones(n), torch.zeros(n, dtype=torch.int64), INT8 if full_int8 else INT8_NARROW, axis=0)
    op = QLinear(w, wqp, bias, QParams(torch.tensor(1.0), torch.tensor(za), iq),
                 QParams(torch.tensor(1.0), torch.tensor(rq.zero_point), oq), rq)
    expected = _stored(op(x), oq)
    lda, ldc = k + pad_a, n + pad_c
    a = np.zeros((m, lda), np.int8)
    a[:, :k] = _stored(x, iq)
    a[:, k:] = 0x77   # junk past k: kernels must not read it into sums
    head, arrays = _rq_payload(rq, oq, bias, n)
    payload = (struct.pack("<7q", 1, m, n, k, lda, ldc, za - (128 if iq is UINT8 else 0)) + head
               + a.tobytes() + w.numpy().tobytes() + arrays)
    full = np.full((m, ldc), 0x5A, np.int8)
    full[:, :n] = expected
    return Record(payload, m * ldc, full.reshape(-1), bool((w == -128).any()),
                  f"gemm m={m} n={n} k={k} {mode} {in_dt}->{out_dt} bias={bias_kind} narrow={narrow} "
                  f"extreme={extreme} int8w={full_int8} lda={lda} ldc={ldc} ties={ties} seed={seed}")


def dw_record(seed, n, h, w, c, k, stride, pad, dil, mode, in_dt, out_dt, bias_kind, narrow, extreme, ties=False):
    g = torch.Generator().manual_seed(seed)
    iq, oq = (INT8 if in_dt == "int8" else UINT8), (INT8 if out_dt == "int8" else UINT8)
    x = _activations(g, (n, c, h, w), iq, extreme)
    zx = int(torch.randint(iq.qmin, iq.qmax + 1, (), generator=g))
    wt = _weights(g, (c, 1, k, k), False, extreme)
    taps = k * k
    bias = _bias(g, c, taps, max(iq.qmax - zx, zx - iq.qmin), 127, bias_kind)
    rq = _requant(g, c, taps, mode, oq, narrow, 3.0, ties)
    wqp = QParams(torch.ones(c), torch.zeros(c, dtype=torch.int64), INT8_NARROW, axis=0)
    op = QConv(2, wt, wqp, bias, QParams(torch.tensor(1.0), torch.tensor(zx), iq),
               QParams(torch.tensor(1.0), torch.tensor(rq.zero_point), oq), rq,
               (stride, stride), (pad, pad), (dil, dil), c)
    y = op(x)
    oh, ow = y.shape[2], y.shape[3]
    expected = _stored(y.permute(0, 2, 3, 1).contiguous(), oq).reshape(-1)
    head, arrays = _rq_payload(rq, oq, bias, c)
    payload = (struct.pack("<16q", 2, n, h, w, c, oh, ow, k, k, stride, stride, pad, pad, dil, dil,
                           zx - (128 if iq is UINT8 else 0)) + head
               + _stored(x.permute(0, 2, 3, 1).contiguous(), iq).tobytes() + wt.numpy().tobytes() + arrays)
    return Record(payload, n * oh * ow * c, expected, False,
                  f"depthwise {n}x{h}x{w}x{c} k={k} s={stride} p={pad} d={dil} {mode} {in_dt}->{out_dt} "
                  f"bias={bias_kind} narrow={narrow} extreme={extreme} ties={ties} seed={seed}")


def check(records, results, levels):
    for r, per in zip(records, results):
        (ref_status, ref), rest = per[0], per[1:]
        assert ref_status == 0
        assert np.array_equal(ref, r.expected), f"scalar C reference != qcompiler reference: {r.describe}"
        for lv, (status, got) in zip(levels, rest):
            if lv == "neon" and r.has_neg128:
                assert status == -2, f"neon must refuse a -128 weight: {r.describe}"
                continue
            assert status == 0, f"{lv}: status {status}: {r.describe}"
            bad = np.flatnonzero(got != r.expected)
            assert bad.size == 0, (f"{lv} differs at {bad.size} bytes (first flat index {bad[0]}: "
                                   f"{got[bad[0]]} != {r.expected[bad[0]]}): {r.describe}")


# ---- strategies ----

modes = st.sampled_from(["fp32", "fixed_point"])
dtypes = st.sampled_from(["int8", "uint8"])


@st.composite
def gemm_cases(draw, max_k=3000, max_mn=40):
    return gemm_record(
        seed=draw(st.integers(0, 2**31 - 1)), m=draw(st.integers(1, max_mn)), n=draw(st.integers(1, max_mn)),
        k=draw(st.one_of(st.integers(1, 64), st.integers(1, max_k))), mode=draw(modes), in_dt=draw(dtypes),
        out_dt=draw(dtypes), bias_kind=draw(st.sampled_from(["none", "random", "edge"])), narrow=draw(st.booleans()),
        extreme=draw(st.booleans()), full_int8=draw(st.sampled_from([False, False, False, True])),
        pad_a=draw(st.sampled_from([0, 0, 3, 16])), pad_c=draw(st.sampled_from([0, 0, 5])), ties=draw(st.booleans()))


@st.composite
def dw_cases(draw):
    k, dil = draw(st.sampled_from([3, 3, 3, 1, 5])), draw(st.sampled_from([1, 1, 1, 2]))
    pad = draw(st.integers(0, k // 2 + 1))
    smallest = max(1, dil * (k - 1) + 1 - 2 * pad)   # at least one output
    return dw_record(
        seed=draw(st.integers(0, 2**31 - 1)), n=draw(st.integers(1, 2)), h=draw(st.integers(smallest, 12)),
        w=draw(st.integers(smallest, 12)), c=draw(st.integers(1, 40)), k=k, stride=draw(st.sampled_from([1, 2])),
        pad=pad, dil=dil, mode=draw(modes),
        in_dt=draw(dtypes), out_dt=draw(dtypes), bias_kind=draw(st.sampled_from(["none", "random", "edge"])),
        narrow=draw(st.booleans()), extreme=draw(st.booleans()), ties=draw(st.booleans()))


# ---- tests ----

def test_gemm_tile_edges(driver):
    """Every M, N, K around each level's tile and k-block (4x4/16, 8x8/4, 8x8/8), both modes."""
    run, levels = driver
    records = [gemm_record(seed=i, m=m, n=n, k=k, mode=("fp32", "fixed_point")[i % 2],
                           in_dt=("int8", "uint8")[(i // 2) % 2], out_dt=("uint8", "int8")[(i // 4) % 2],
                           bias_kind=("random", "none", "edge")[i % 3], narrow=i % 5 == 0, extreme=i % 7 == 0,
                           full_int8=False, pad_a=i % 3, pad_c=(i // 3) % 2, ties=(i // 5) % 2 == 1)
               for i, (m, n, k) in enumerate((m, n, k) for m in (1, 3, 4, 5, 8, 9, 17)
                                             for n in (1, 4, 5, 8, 9, 16, 17) for k in (1, 4, 7, 8, 16, 17, 33))]
    check(records, run(records), levels)


@settings(max_examples=10, deadline=None)
@given(cases=st.lists(gemm_cases(), min_size=6, max_size=6))
def test_gemm_matches_reference(driver, cases):
    run, levels = driver
    check(cases, run(cases), levels)


@settings(max_examples=8, deadline=None)
@given(cases=st.lists(dw_cases(), min_size=8, max_size=8))
def test_depthwise_matches_reference(driver, cases):
    run, _ = driver
    check(cases, run(cases, ["neon"]), ["neon"])


def test_depthwise_3x3_strides_and_padding(driver):
    """The MobileNet shapes: 3x3, stride 1 and 2, padding 0 / 1, channel counts around 8."""
    run, _ = driver
    records = [dw_record(seed=i, n=1, h=h, w=w, c=c, k=3, stride=s, pad=p, dil=1, mode=("fp32", "fixed_point")[i % 2],
                         in_dt=("uint8", "int8")[(i // 2) % 2], out_dt=("int8", "uint8")[(i // 4) % 2],
                         bias_kind=("random", "edge", "none")[i % 3], narrow=i % 3 == 1, extreme=i % 5 == 0,
                         ties=i % 4 == 1)
               for i, (h, w, c, s, p) in enumerate((h, w, c, s, p) for h, w in ((7, 7), (8, 5), (2, 3))
                                                   for c in (1, 7, 8, 9, 16, 32) for s in (1, 2) for p in (0, 1)
                                                   if min(h, w) + 2 * p >= 3)]
    check(records, run(records, ["neon"]), ["neon"])


def test_neon_refuses_minus_128_weights(driver):
    """The baseline's int16 pair sums need |w| <= 127: a -128 weight is refused, not miscomputed;
    dotprod and i8mm take full int8 weights."""
    run, levels = driver
    records = [gemm_record(seed=s, m=5, n=6, k=40, mode="fp32", in_dt="int8", out_dt="int8", bias_kind="random",
                           narrow=False, extreme=True, full_int8=True, pad_a=0, pad_c=0) for s in range(3)]
    assert all(r.has_neg128 for r in records)
    check(records, run(records), levels)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(cases=st.lists(gemm_cases(max_k=8192, max_mn=96), min_size=4, max_size=4))
def test_gemm_large_sweep(driver, cases):
    run, levels = driver
    check(cases, run(cases), levels)
