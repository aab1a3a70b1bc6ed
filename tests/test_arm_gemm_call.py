"""The ARM GEMM glue (backends/arm/runtime/qc_arm_gemm_call.c) and the Python weight packer
(backends/arm/gemm.py) against qcompiler's reference.

Per level, one runtime unit (qcompiler.backends.arm.gemm.library_source(level, runtime=SHARED_RUNTIME_FILES):
thread pool, the kernels that level's -march allows, the glue, the shared C runtime) plus a
batch driver is cross-compiled for aarch64 and run under qemu (natively on an aarch64 host),
one process per level and batch. Each case checks, byte for byte:
  - qc_arm_rt_gemm on the shared runtime's uint8 storage (int8 stored + 128) against
    QLinear.forward, both requant modes, uint8 / int8 in and out, per-channel multipliers,
    fused clamps, threads 1 and 3, M / N / K around every tile, row strides, odd addresses;
  - the Python packer against the C packer qc_arm_pack_<level>;
  - that C outside [m, n] is never written, and that a repeated call allocates nothing.
Invalid arguments must come back as error codes with C untouched.
"""
import dataclasses
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.backends import toolchain
from qcompiler.backends.c_target import SHARED_RUNTIME_FILES
from qcompiler.backends.arm import gemm
from qcompiler.core.integer_ops import QLinear
from qcompiler.core.qtypes import INT8, INT8_NARROW, UINT8, QParams

from test_arm_kernels import RQ_MODE, _activations, _bias, _requant, _weights

DRIVER = gemm.GLUE_DIR / "qc_arm_rt_test_driver.c"
FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fno-math-errno",
         "-pthread", "-static", "-Wl,--wrap=aligned_alloc", "-lm"]
ERR = {"NULL": 1, "SIZE": 2, "STRIDE": 3, "LAYOUT": 4, "LEVEL": 5, "PARAM": 6, "THREADS": 9, "CPU": 10}


def _available_levels():
    """(runner prefix, levels this host runs) or a reason to skip."""
    try:
        toolchain.find_compiler("aarch64")
        run = toolchain.runner("aarch64")
    except toolchain.ToolchainError as e:
        return f"ARM GEMM glue tests skip: {e}"
    if run:        # qemu -cpu max: every level
        return run, list(gemm.LEVELS)
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("Features")), [])
    except OSError:
        flags = []
    return run, [lv for lv in gemm.LEVELS if lv == "neon" or gemm.spec(lv).cpu_feature in flags]


def _driver_source(level):
    return gemm.library_source(level, runtime=[*SHARED_RUNTIME_FILES, DRIVER])


@pytest.fixture(scope="module")
def drivers(tmp_path_factory):
    """run(level, records) -> per-record results, and the levels this host runs."""
    avail = _available_levels()
    if isinstance(avail, str):
        pytest.skip(avail)
    runner, levels = avail
    exes = {lv: toolchain.build_executable(_driver_source(lv), flags=[f"-march={gemm.spec(lv).march}", *FLAGS],
                                           name=f"qc_arm_rt_test_{lv}", kind="aarch64") for lv in levels}
    tmp = tmp_path_factory.mktemp("arm_gemm_call")
    counter = iter(range(10**9))

    def run(level, records):
        i = next(counter)
        inp, outp = tmp / f"in{i}.bin", tmp / f"out{i}.bin"
        inp.write_bytes(b"".join(r.payload for r in records) + struct.pack("<q", 0))
        proc = subprocess.run([*runner, str(exes[level]), str(inp), str(outp)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        data, pos, results = outp.read_bytes(), 0, []
        for r in records:
            res, pos = r.parse(data, pos)
            results.append(res)
        assert pos == len(data)
        inp.unlink(), outp.unlink()
        return results

    return run, levels


# ---- cases ----

def _stored(q: torch.Tensor, qtype) -> np.ndarray:
    """The shared runtime's storage: uint8 as is, int8 + 128."""
    return (q.to(torch.int16) + (128 if qtype is INT8 else 0)).to(torch.uint8).numpy()


@dataclasses.dataclass
class Gemm:
    payload: bytes
    m: int
    n: int
    ldc: int
    packed: bytes          # Python's packing (empty when it refused the weights)
    expected: np.ndarray   # [m, ldc] uint8: the reference, 0x5A outside [m, n]
    describe: str

    def parse(self, data, pos):
        pack_status, = struct.unpack_from("<i", data, pos)
        csize, = struct.unpack_from("<q", data, pos + 4)
        cpacked = data[pos + 12:pos + 12 + csize]
        pos += 12 + csize
        status, allocs = struct.unpack_from("<ii", data, pos)
        c = np.frombuffer(data, np.uint8, self.m * self.ldc, pos + 8).reshape(self.m, self.ldc)
        return (pack_status, cpacked, status, allocs, c), pos + 8 + self.m * self.ldc


def gemm_case(level, seed, m, n, k, mode="fp32", in_dt="uint8", out_dt="uint8", bias_kind="random", narrow=False,
              extreme=False, full_int8=False, pad_a=0, pad_c=0, threads=1, ties=False, repeat=1, mutation=0,
              call_level=None):
    g = torch.Generator().manual_seed(seed)
    iq, oq = (INT8 if in_dt == "int8" else UINT8), (INT8 if out_dt == "int8" else UINT8)
    x = _activations(g, (m, k), iq, extreme)
    za = int(torch.randint(iq.qmin, iq.qmax + 1, (), generator=g))
    w = _weights(g, (n, k), full_int8, extreme)
    bias = _bias(g, n, k, max(iq.qmax - za, za - iq.qmin), 128 if full_int8 else 127, bias_kind)
    rq = _requant(g, n, k, mode, oq, narrow, 3.0, ties)
    wqp = QParams(torch.ones(n), torch.zeros(n, dtype=torch.int64), INT8 if full_int8 else INT8_NARROW, axis=0)
    op = QLinear(w, wqp, bias, QParams(torch.tensor(1.0), torch.tensor(za), iq),
                 QParams(torch.tensor(1.0), torch.tensor(rq.zero_point), oq), rq)
    expected = np.full((m, n + pad_c), 0x5A, np.uint8)
    expected[:, :n] = _stored(op(x), oq)
    lda, ldc = k + pad_a, n + pad_c
    a = np.full((m, lda), 0x77, np.uint8)   # junk past k: must not reach the sums
    a[:, :k] = _stored(x, iq)
    try:
        packed = gemm.pack_weights(w, level).numpy().tobytes()
    except ValueError:
        packed = b""
    ishift, oshift = (128 if iq is INT8 else 0), (128 if oq is INT8 else 0)
    b = bias if bias is not None else torch.zeros(n, dtype=torch.int32)
    level_id = gemm.spec(call_level or level).level_id
    payload = (struct.pack("<17q", 1, level_id, m, n, k, lda, ldc, za + ishift, threads, RQ_MODE[rq.mode],
                           rq.zero_point + oshift, rq.qmin + oshift, rq.qmax + oshift, int(bias is not None),
                           repeat, len(packed), mutation)
               + a.tobytes() + w.numpy().tobytes() + packed + b.to(torch.int32).numpy().tobytes()
               + rq.multiplier.to(torch.float32).reshape(-1).numpy().tobytes()
               + rq.m0.to(torch.int32).reshape(-1).numpy().tobytes()
               + rq.shift.to(torch.int32).reshape(-1).numpy().tobytes())
    return Gemm(payload, m, n, ldc, packed, expected,
                f"{level} m={m} n={n} k={k} {mode} {in_dt}->{out_dt} bias={bias_kind} narrow={narrow} "
                f"extreme={extreme} int8w={full_int8} lda={lda} ldc={ldc} threads={threads} ties={ties} seed={seed}")


def check(level, cases, results):
    for case, (pack_status, cpacked, status, allocs, c) in zip(cases, results):
        if level == "neon" and not case.packed:    # Python refused a -128 weight: so must C
            assert pack_status == -2, f"C packer accepted what pack_weights refused: {case.describe}"
            continue
        assert pack_status == 0, f"C packer status {pack_status}: {case.describe}"
        assert cpacked == case.packed, f"pack_weights != qc_arm_pack_{level}: {case.describe}"
        assert status == 0, f"qc_arm_rt_gemm returned {status}: {case.describe}"
        bad = np.argwhere(c != case.expected)
        assert bad.size == 0, (f"{bad.shape[0]} bytes differ (first at {tuple(bad[0])}: {c[tuple(bad[0])]} != "
                               f"{case.expected[tuple(bad[0])]}): {case.describe}")


# ---- tests ----

def test_tile_edges_every_level(drivers):
    """M, N, K around every level's tile and k block, threads 1 and 3, both modes and storages."""
    run, levels = drivers
    for level in levels:
        cases = [gemm_case(level, seed=i, m=m, n=n, k=k, mode=("fp32", "fixed_point")[i % 2],
                           in_dt=("int8", "uint8")[(i // 2) % 2], out_dt=("uint8", "int8")[(i // 4) % 2],
                           bias_kind=("random", "none", "edge")[i % 3], narrow=i % 5 == 0, extreme=i % 7 == 0,
                           pad_a=i % 3, pad_c=(i // 3) % 2, threads=(1, 3)[(i // 6) % 2], ties=(i // 5) % 2 == 1)
                 for i, (m, n, k) in enumerate((m, n, k) for m in (1, 3, 4, 5, 8, 9, 17)
                                               for n in (1, 4, 5, 8, 9, 17) for k in (1, 4, 7, 8, 16, 17, 33))]
        check(level, cases, run(level, cases))


def test_threads_split_m(drivers):
    """Calls large enough to run on the pool (m·n·k >= 2^16): 1, 2, 3 and 0 (= every CPU) threads
    give the reference, with M a few chunks long and not a multiple of any strip."""
    run, levels = drivers
    for level in levels:
        cases = [gemm_case(level, seed=100 + i, m=m, n=n, k=k, mode=("fp32", "fixed_point")[i % 2],
                           in_dt=("uint8", "int8")[i % 2], out_dt=("int8", "uint8")[(i // 2) % 2], threads=t,
                           narrow=i % 3 == 0, pad_c=i % 2)
                 for i, (m, n, k, t) in enumerate([(97, 24, 300, 3), (64, 40, 129, 2), (203, 9, 77, 3),
                                                   (33, 64, 64, 0), (250, 33, 40, 3)])]
        check(level, cases, run(level, cases))


@st.composite
def cases(draw, level):
    return gemm_case(
        level, seed=draw(st.integers(0, 2**31 - 1)), m=draw(st.integers(1, 70)), n=draw(st.integers(1, 40)),
        k=draw(st.one_of(st.integers(1, 64), st.integers(1, 1500))), mode=draw(st.sampled_from(["fp32", "fixed_point"])),
        in_dt=draw(st.sampled_from(["int8", "uint8"])), out_dt=draw(st.sampled_from(["int8", "uint8"])),
        bias_kind=draw(st.sampled_from(["none", "random", "edge"])), narrow=draw(st.booleans()),
        extreme=draw(st.booleans()), full_int8=draw(st.sampled_from([False, False, True])),
        pad_a=draw(st.sampled_from([0, 0, 5, 16])), pad_c=draw(st.sampled_from([0, 0, 3])),
        threads=draw(st.sampled_from([1, 3])), ties=draw(st.booleans()))


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_matches_reference(drivers, data):
    run, levels = drivers
    for level in levels:
        batch = [data.draw(cases(level)) for _ in range(6)]
        check(level, batch, run(level, batch))


def test_repeated_call_allocates_nothing(drivers):
    """The per-thread A-strip scratch is grown once: a second identical call allocates nothing."""
    run, levels = drivers
    for level in levels:
        batch = [gemm_case(level, seed=7, m=20, n=12, k=300, repeat=2),
                 gemm_case(level, seed=8, m=5, n=3, k=100, repeat=1),      # smaller k: no growth
                 gemm_case(level, seed=9, m=9, n=30, k=900, repeat=2)]     # larger k: grows on the first call
        results = run(level, batch)
        check(level, batch, results)
        assert [r[3] for r in results] == [0, 0, 0], f"{level}: allocations per last call {[r[3] for r in results]}"


# mutation id (qc_arm_rt_test_driver.c) -> expected code; fp32-only and fixed-point-only ones apart
MUTATIONS = {1: "NULL", 2: "NULL", 3: "NULL", 4: "NULL", 5: "SIZE", 6: "SIZE", 7: "SIZE", 8: "STRIDE",
             9: "STRIDE", 10: "THREADS", 11: "LEVEL", 12: "LAYOUT", 13: "PARAM", 14: "PARAM", 15: "PARAM",
             16: "PARAM", 22: "PARAM"}
FP32_MUTATIONS = {17: "PARAM", 18: "PARAM", 23: "NULL"}
FIXED_MUTATIONS = {19: "PARAM", 20: "PARAM", 21: "PARAM", 24: "NULL"}


def test_invalid_arguments_are_refused(drivers):
    """Every argument check returns its code before C is written."""
    run, levels = drivers
    batch, want = [], []
    for mode, muts in (("fp32", {**MUTATIONS, **FP32_MUTATIONS}), ("fixed_point", {**MUTATIONS, **FIXED_MUTATIONS})):
        for mut, name in muts.items():
            batch.append(gemm_case("neon", seed=mut, m=6, n=5, k=20, mode=mode, mutation=mut))
            want.append((mut, mode, ERR[name]))
    # a level this build does not have (the neon runtime is built for armv8-a)
    for lv in ("dotprod", "i8mm"):
        batch.append(gemm_case(lv, seed=3, m=6, n=5, k=20, call_level=lv))
        want.append((0, f"{lv} on the neon build", ERR["LEVEL"]))
    for case, (pack_status, _, status, _, c), (mut, what, code) in zip(batch, run("neon", batch), want):
        assert status == code, f"mutation {mut} ({what}): status {status}, want {code}"
        assert (c == 0x5A).all(), f"mutation {mut} ({what}): C was written"


class _Texts:
    payload = struct.pack("<q", 2)

    @staticmethod
    def parse(data, pos):
        mask, = struct.unpack_from("<i", data, pos)
        pos, texts = pos + 4, {}
        for code in range(-1, 12):
            n, = struct.unpack_from("<i", data, pos)
            texts[code] = data[pos + 4:pos + 4 + n].decode()
            pos += 4 + n
        return (mask, texts), pos


def test_levels_and_error_texts(drivers):
    """Each level's runtime has itself and the levels before it; every code has its own text."""
    run, levels = drivers
    for level in levels:
        [(mask, texts)] = run(level, [_Texts])
        assert mask == (1 << (gemm.spec(level).level_id + 1)) - 1, f"{level}: level mask {mask:#x}"
        codes = [0, *ERR.values(), 7]
        assert all(texts[c] != "unknown error" for c in codes)
        assert len({texts[c] for c in codes}) == len(codes)
        assert texts[-1] == texts[8] == texts[11] == "unknown error"


def test_neon_refuses_minus_128_weights(drivers):
    """pack_weights and qc_arm_pack_neon both refuse a -128 weight for the neon level (its int16
    pair sums); dotprod and i8mm take and compute full int8 weights."""
    run, levels = drivers
    w = torch.tensor([[-128, 5], [3, 4]], dtype=torch.int8)
    with pytest.raises(ValueError, match="int8_narrow"):
        gemm.pack_weights(w, "neon")
    for level in levels:
        batch = [gemm_case(level, seed=s, m=7, n=6, k=40, full_int8=True, extreme=True) for s in range(3)]
        assert level != "neon" or all(not c.packed for c in batch)
        check(level, batch, run(level, batch))


# ---- the Python side alone ----

@pytest.mark.parametrize("level", gemm.LEVELS)
def test_packed_size(level):
    for n, k in ((1, 1), (5, 17), (8, 16), (9, 33), (64, 1000)):
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        assert gemm.pack_weights(w, level).numel() == gemm.packed_size(n, k, level)


def test_pack_weights_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown ARM GEMM level"):
        gemm.pack_weights(torch.zeros(2, 2, dtype=torch.int8), "sve")
    with pytest.raises(ValueError, match="int8 tensor"):
        gemm.pack_weights(torch.zeros(2, 2, dtype=torch.int16), "i8mm")
    with pytest.raises(ValueError, match="int8 tensor"):
        gemm.pack_weights(torch.zeros(2, 2, 2, dtype=torch.int8), "i8mm")
    with pytest.raises(ValueError, match="empty"):
        gemm.pack_weights(torch.zeros(0, 2, dtype=torch.int8), "dotprod")


def test_library_source_compiles_only_the_levels_march_allows():
    for level in gemm.LEVELS:
        src = gemm.library_source(level)
        assert src.index("QC_THREAD_POOL_H") < src.index("QC_RUNTIME_H")
        assert ("qc_arm_gemm_dotprod.c" in src) == (level != "neon")
        assert ("qc_arm_gemm_i8mm.c" in src) == (level == "i8mm")
        assert "qc_rt_shapes.c" not in src and "qc_rt_shapes.c" in gemm.library_source(level, runtime=SHARED_RUNTIME_FILES)
