"""The x86 whole-model compiler: bit-exact with the reference on real models in both
requantization modes, the same bytes on every ISA path, input checks before native code,
bundles, the build cache and deterministic emission. (Per-op conformance, shared by every
target, is tests/test_conformance.py.)"""
import ctypes
import json
import shutil
import subprocess
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler.core.integer_ops import Dequantize
from qcompiler.core.reference import run_reference
from qcompiler.zoo import prepare_random_model, smooth_random_images

ok, why = qcompiler.available_targets().get("x86", (False, "not registered"))
pytestmark = pytest.mark.skipif(not ok, reason=f"x86 target unavailable: {why}")

from qcompiler.backends.c_emitter import BackendUnsupported  # noqa: E402
from qcompiler.backends.native_model import NativeModel, load_bundle  # noqa: E402

from helpers import SmallNet  # noqa: E402


def quantized(model, x, mode="fp32", act="uint8"):
    cfg = QConfig(requant_mode=mode, activation=TensorSpec(act, symmetric=False, observer="minmax"))
    return qcompiler.quantize(model.eval(), [(x,)], config=cfg, progress=False)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    return quantized(SmallNet(), x), x


@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_whole_models_bit_exact(name, mode):
    model = prepare_random_model(name, calib_images=2, size=64, num_classes=10)
    x = smooth_random_images(2, size=64, seed=3)
    qm = quantized(model, x, mode)          # min/max observers: the fastest calibration
    compiled = qcompiler.compile(qm, target="x86")
    assert torch.equal(compiled(x), qm(x))


@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_small_net_and_int_outputs(act):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    qm = quantized(SmallNet(), x, "fixed_point", act)
    compiled = qcompiler.compile(qm, target="x86")
    assert torch.equal(compiled(x), qm(x))
    # return_int: the integers the final Dequantize reads, in the reference's dtype
    gm = qm.graph_module
    _, values = run_reference(gm, x, capture=True)
    dq = next(n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Dequantize))
    ints = compiled(x, return_int=True)
    assert ints.dtype == values[dq.args[0].name].dtype
    assert torch.equal(ints, values[dq.args[0].name])


@pytest.mark.parametrize("features", ["avx2,avx512f,avx512bw,avx512vl,avx512_vnni", "avx2,fma", "avx2,avx_vnni", ""])
def test_forced_isa_paths_give_identical_bytes(small, features, monkeypatch):
    from qcompiler.backends.x86 import choose_isa
    qm, x = small
    native = qcompiler.compile(qm, target="x86")(x)
    monkeypatch.setenv("QCOMPILER_CPU_FEATURES", features)
    expected_isa = choose_isa()
    compiled = qcompiler.compile(qm, target="x86")
    assert compiled.isa == expected_isa
    assert torch.equal(compiled(x), native)
    assert torch.equal(native, qm(x))


def test_input_checks_before_native_code(small):
    qm, x = small
    compiled = qcompiler.compile(qm, target="x86")
    with pytest.raises(ValueError, match="compiled for"):
        compiled(torch.randn(2, 3, 17, 16))
    with pytest.raises(TypeError, match="float"):
        compiled(torch.zeros(2, 3, 16, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="expected 1 input"):
        compiled(x, x)
    with pytest.raises(TypeError):
        compiled("not a tensor")


def test_native_entry_rejects_null_pointers(small):
    qm, x = small
    compiled = qcompiler.compile(qm, target="x86")
    cdll = compiled.native.cdll
    ins = (ctypes.c_void_p * 1)(x.data_ptr())
    outs = (ctypes.c_void_p * 1)(None)
    assert cdll.qc_model_run(ins, outs, compiled._arena_ptr, 1) == -1
    out = torch.empty(2, 10)
    outs = (ctypes.c_void_p * 1)(out.data_ptr())
    assert cdll.qc_model_run(ins, outs, None, 1) == -1
    assert cdll.qc_model_init(b"QCWEIGHT", 8) == -2     # wrong size: refused
    # the checked entry the module calls refuses buffers of the wrong size
    n_in, n_out = (ctypes.c_int64 * 1)(x.numel()), (ctypes.c_int64 * 1)(out.numel() - 1)
    assert cdll.qc_model_run_checked(ins, n_in, 1, outs, n_out, 1, 0, compiled._arena_ptr,
                                     compiled._arena_bytes, 1) == -5
    n_out[0] = out.numel()
    assert cdll.qc_model_run_checked(ins, n_in, 1, outs, n_out, 1, 0, compiled._arena_ptr,
                                     compiled._arena_bytes - 1, 1) == -5
    assert cdll.qc_model_run_checked(ins, n_in, 1, outs, n_out, 1, 0, compiled._arena_ptr,
                                     compiled._arena_bytes, 1) == 0
    assert torch.equal(out, qm(x))


def test_other_batch_sizes_and_threads(small):
    qm, x = small
    compiled = qcompiler.compile(qm, target="x86", )
    x3 = torch.randn(3, 3, 16, 16)
    assert torch.equal(compiled(x3), qm(x3))
    compiled.threads = 1
    one = compiled(x)
    compiled.threads = 2
    assert torch.equal(compiled(x), one)


def test_bundle_roundtrip(small, tmp_path):
    qm, x = small
    compiled = qcompiler.compile(qm, target="x86")
    bundle = compiled.save(tmp_path / "bundle")
    names = {p.name for p in bundle.rglob("*") if p.is_file()}
    assert {"model.c", "model.h", "weights.bin", "Makefile", "qc_model_main.c", "manifest.json",
            "qc_runtime_x86.c"} <= names
    assert not any(n.endswith((".pt", ".pkl", ".pickle")) for n in names)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [2, 3, 16, 16]
    assert manifest["outputs"][0]["shape"] == [2, 10]
    loaded = load_bundle(bundle)
    assert isinstance(loaded, NativeModel)
    assert torch.equal(loaded(x), compiled(x))
    with pytest.raises(ValueError, match="batch size"):
        loaded(torch.randn(3, 3, 16, 16))


def test_cache_hit_and_deterministic_emission(small):
    qm, x = small
    first = qcompiler.compile(qm, target="x86")
    start = time.perf_counter()
    second = qcompiler.compile(qm, target="x86")
    elapsed = time.perf_counter() - start
    assert second.native.path == first.native.path          # same content hash: the cached library
    assert second.source == first.source                    # same graph -> same bytes
    assert second.native.weights == first.native.weights
    assert elapsed < 5.0, f"a cached compile took {elapsed:.2f} s"
    assert "/* [" in first.source and "stem" in first.source  # one comment per layer, naming it


def test_profile_times_every_step_of_the_same_source(small, tmp_path):
    qm, x = small
    compiled = qcompiler.compile(qm, target="x86")
    steps = compiled.profile(x, repeats=3)
    comments = [line.strip() for line in compiled.source.splitlines() if line.strip().startswith("/* [")]
    assert len(steps) == len(comments) == compiled.native.cdll.qc_model_num_steps()
    for step, comment in zip(steps, comments):
        assert comment.startswith(f"/* [{step['index']}] {step['step']}")
        assert step["ms"] >= 0 and 0 <= step["share"] <= 1
    assert any("stem" in s["step"] and s["ms"] > 0 for s in steps)
    assert abs(sum(s["share"] for s in steps) - 1) < 1e-6
    assert torch.equal(compiled(x), qm(x))            # the plain build is untouched
    assert load_bundle(compiled.save(tmp_path / "b")).profile(x, repeats=1)


class _Erf(nn.Module):
    """A float op no target covers (its own module: traced as a leaf, kept in float)."""

    def forward(self, x):
        return torch.special.erf(x)


def _float_island_model():
    return nn.Sequential(nn.Linear(8, 4), _Erf(), nn.Linear(4, 2)).eval()


def test_float_island_runs_in_pytorch_between_native_segments():
    x = torch.randn(3, 8)
    qm = qcompiler.quantize(_float_island_model(), [(x,)], progress=False, leaf_modules=[_Erf], warn_float=False)
    assert "1 (_Erf)" in qm.report().float_ops[0]
    compiled = qcompiler.compile(qm, target="x86")
    assert len(compiled.plan.segments) == 2 and compiled.plan.crossings == 2
    assert "1 (_Erf): float, in PyTorch" in compiled.describe()
    assert torch.equal(compiled(x), qm(x))
    x5 = torch.randn(5, 8)                          # another batch size compiles its own segments
    assert torch.equal(compiled(x5), qm(x5))


def test_quantize_warns_naming_the_float_module():
    x = torch.randn(3, 8)
    with pytest.warns(UserWarning, match=r"1 \(_Erf\)"):
        qcompiler.quantize(_float_island_model(), [(x,)], progress=False, leaf_modules=[_Erf])


def test_without_pytorch_fallback_the_error_names_the_module():
    x = torch.randn(3, 8)
    qm = qcompiler.quantize(_float_island_model(), [(x,)], progress=False, leaf_modules=[_Erf], warn_float=False)
    with pytest.raises(BackendUnsupported, match=r"1 \(_Erf\).*pytorch_fallback=True"):
        qcompiler.compile(qm, target="x86", pytorch_fallback=False)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="build.sh uses gcc")
def test_bundle_builds_with_make_and_its_program_runs(small, tmp_path):
    """The bundle stands alone (no qcompiler): `make` builds the library and the program without a
    compiler warning (a user sees that output); both compute the compiled model's bytes, the
    program from an inputs file."""
    qm, x = small
    compiled = qcompiler.compile(qm, target="x86")
    bundle = compiled.save(tmp_path / "bundle")
    built = subprocess.run(["make", "-C", str(bundle), "CFLAGS_EXTRA=-Wall"], check=True, capture_output=True,
                           text=True, timeout=300)
    assert "warning" not in built.stderr, built.stderr[:2000]
    lib = ctypes.CDLL(str(bundle / "libqc_model.so"))
    lib.qc_model_arena_bytes.restype = ctypes.c_int64
    weights = (bundle / "weights.bin").read_bytes()
    assert lib.qc_model_init(weights, ctypes.c_int64(len(weights))) == 0
    arena = torch.empty(lib.qc_model_arena_bytes() + 64, dtype=torch.uint8)
    out = torch.empty(2, 10)
    ins, outs = (ctypes.c_void_p * 1)(x.data_ptr()), (ctypes.c_void_p * 1)(out.data_ptr())
    assert lib.qc_model_run(ins, outs, ctypes.c_void_p(arena.data_ptr()), 1) == 0
    assert torch.equal(out, qm(x))
    (tmp_path / "in.bin").write_bytes(x.numpy().tobytes())
    for kind, expected in (("int", compiled(x, return_int=True)), ("float", compiled(x))):
        subprocess.run([str(bundle / "qc_model_main"), "run", str(bundle / "weights.bin"), str(tmp_path / "in.bin"),
                        str(tmp_path / "out.bin"), kind, "1"], check=True)
        out = torch.frombuffer(bytearray((tmp_path / "out.bin").read_bytes()), dtype=expected.dtype)
        assert torch.equal(out.reshape(expected.shape), expected)
    bad = subprocess.run([str(bundle / "qc_model_main"), "run", str(bundle / "weights.bin"), str(bundle / "model.h"),
                          str(tmp_path / "out.bin")], capture_output=True, text=True)
    assert bad.returncode == 1 and "the inputs file does not have the model's input sizes" in bad.stderr
    corrupt = bytearray((bundle / "weights.bin").read_bytes())
    corrupt[-100] ^= 0x10                         # the payload, behind an intact header
    (tmp_path / "corrupt.bin").write_bytes(bytes(corrupt))
    bad = subprocess.run([str(bundle / "qc_model_main"), "run", str(tmp_path / "corrupt.bin"), str(tmp_path / "in.bin"),
                          str(tmp_path / "out.bin")], capture_output=True, text=True)
    assert bad.returncode == 1 and "error -2" in bad.stderr and "weights do not match" in bad.stderr, bad.stderr


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.conv = nn.Conv2d(4, 6, 3, 1, 2, dilation=2)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.fn(self, x)


EDGE_CASES = {
    "dilated_conv": lambda m, x: m.conv(x),
    "avg_pool_ceil_include_pad": lambda m, x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True),
    "avg_pool_ceil_exclude_pad": lambda m, x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    "avg_pool_divisor_override": lambda m, x: F.avg_pool2d(x, 2, divisor_override=3),
    "adaptive_pool_uneven": lambda m, x: F.adaptive_avg_pool2d(x, (4, 3)),
    "cat_height_with_relu": lambda m, x: torch.cat([x, F.relu(x)], 2),     # relu arrives as clamp(q, zp)
    "mul_relu": lambda m, x: F.relu(x * x),
    "flatten_nchw_order": lambda m, x: m.fc(torch.flatten(F.max_pool2d(F.relu(m.conv(x)), 2), 1)),
    # the flattened tensor goes to a linear layer (weights permuted) and out (transposed)
    "flatten_two_users": lambda m, x: _flatten_two_users(m, x),
}


def _flatten_two_users(m, x):
    f = torch.flatten(F.max_pool2d(F.relu(m.conv(x)), 2), 1)
    return m.fc(f), f


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_bit_exact(case, act):
    torch.manual_seed(2)
    x = torch.randn(2, 4, 9, 9)
    qm = quantized(Lambda(EDGE_CASES[case]), x, "fixed_point" if act == "int8" else "fp32", act)
    got, want = qcompiler.compile(qm, target="x86")(x), qm(x)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))


class _Rq(ctypes.Structure):
    _fields_ = [("mode", ctypes.c_int32), ("mult", ctypes.c_void_p), ("m0", ctypes.c_void_p),
                ("shift", ctypes.c_void_p), ("zp", ctypes.c_int32), ("qmin", ctypes.c_int32),
                ("qmax", ctypes.c_int32)]


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["fp32", "fixed_point"]), seed=st.integers(0, 2**16), zp=st.integers(0, 255),
       extreme=st.booleans())
def test_runtime_requant_matches_the_reference(mode, seed, zp, extreme):
    """desc/impl: the runtime's vectorized channel requantization == qcompiler.core.quantize."""
    from qcompiler.backends.x86.backend import X86Backend
    from qcompiler.core.quantize import fixed_point_multiplier, requantize_fixed_point, requantize_fp32

    g = torch.Generator().manual_seed(seed)
    n = 37
    acc = torch.randint(-2**31, 2**31, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    if extreme:
        acc[:4] = torch.tensor([-2**31, 2**31 - 1, 0, -1], dtype=torch.int32)
    real = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-25, 2, generator=g))
    m0, shift = fixed_point_multiplier(real)
    mult = real.to(torch.float32)
    qmin, qmax = sorted(torch.randint(0, 256, (2,), generator=g).tolist())
    if mode == "fp32":
        want = requantize_fp32(acc.to(torch.int64), mult, zp, qmin, qmax)
    else:
        want = requantize_fixed_point(acc.to(torch.int64), m0, shift, zp, qmin, qmax)
    mult32, m032, shift32 = mult.contiguous(), m0.to(torch.int32), shift.to(torch.int32)
    rq = _Rq(1 if mode == "fp32" else 2, mult32.data_ptr(), m032.data_ptr(), shift32.data_ptr(), zp, qmin, qmax)
    backend = X86Backend()
    lib = ctypes.CDLL(str(backend.build_runtime(backend.variant())))
    out = torch.empty(n, dtype=torch.uint8)
    lib.qc_rt_requant_channels(ctypes.c_void_p(acc.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                               ctypes.c_int64(n), ctypes.byref(rq))
    assert torch.equal(out.to(torch.int64), want)


@pytest.mark.parametrize("space_to_depth", [True, False])
@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
@pytest.mark.parametrize("k, stride, pad, size", [(7, 2, 3, (45, 38)), (3, 2, 1, (33, 30)), (5, 2, 2, (29, 31))])
def test_rgb_stems_with_and_without_space_to_depth(k, stride, pad, size, mode, space_to_depth, monkeypatch):
    """A thin strided stem runs either after a space-to-depth (quantized straight into that
    layout) or on its own input, as X86Gemm.space_to_depth_stems says per kernel; both exact."""
    from qcompiler.backends.x86 import backend, choose_isa
    monkeypatch.setattr(backend, "SPACE_TO_DEPTH_ISAS", (choose_isa(),) if space_to_depth else ())
    torch.manual_seed(k)
    x = torch.randn(3, 3, *size)
    qm = quantized(nn.Sequential(nn.Conv2d(3, 24, k, stride, pad), nn.ReLU()), x, mode)
    compiled = qcompiler.compile(qm, target="x86")
    assert ("space-to-depth" in compiled.source) == space_to_depth
    assert torch.equal(compiled(x), qm(x))


class _ShiftedConv(nn.Module):
    """A stride-1 convolution; a residual add (fused on AMX) where the shape allows."""

    def __init__(self, channels, k, pad):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, k, 1, pad)
        self.residual = 2 * pad[0] == k[0] - 1 and 2 * pad[1] == k[1] - 1

    def forward(self, x):
        y = self.conv(x)
        return F.relu(y + x) if self.residual else y


@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
@pytest.mark.parametrize("channels", [64, 12])
@pytest.mark.parametrize("k, pad", [((3, 3), (1, 1)), ((3, 1), (1, 0)), ((1, 3), (0, 2)), ((2, 2), (0, 0)),
                                    ((5, 5), (2, 2))])
def test_shifted_view_convolutions_bit_exact(k, pad, channels, mode, monkeypatch):
    """qc_rt_conv_shifted on every padding shape: each thread pads many small slabs of its own
    (or, without padding, reads the input in place, but for the last rows, whose 64-byte
    reads would pass its end), rows on the border are dropped, and the residual add is fused.
    12 channels: one K block per kernel row (kw * 12 <= 64 bytes, zero weights after)."""
    from qcompiler.backends.x86 import backend, choose_isa
    isa = choose_isa()
    if isa not in backend.SHIFTED_LIMITS:
        pytest.skip(f"shifted-view convolutions run on {' and '.join(backend.SHIFTED_LIMITS)} only")
    monkeypatch.setitem(backend.SHIFTED_LIMITS, isa, backend.ShiftedLimit(max_padding=100.0, thin=True))
    monkeypatch.setattr(backend, "CONV_BLOCK_BYTES", 16 << 10)     # 4-8 blocks a thread
    torch.manual_seed(3)
    x = torch.randn(3, channels, 13, 11)
    qm = quantized(_ShiftedConv(channels, k, pad), x, mode)
    compiled = qcompiler.compile(qm, target="x86")
    assert "qc_rt_conv_shifted" in compiled.source
    assert torch.equal(compiled(x), qm(x))


def test_streams_split_the_batch_with_identical_bytes(small, tmp_path):
    """streams=k runs k slices of the batch at once on the part module (arena of their own);
    the bytes are those of one call, and tune_streams keeps the fastest choice it timed."""
    qm, x = small
    compiled = qcompiler.compile(qm, target="x86")
    one, ints = compiled(x), compiled(x, return_int=True)
    compiled.streams = 2
    assert compiled.streams == 2
    assert torch.equal(compiled(x), one) and torch.equal(compiled(x, return_int=True), ints)
    compiled.threads = 2
    times = compiled.tune_streams(x, rounds=1, repeats=1)
    assert set(times) == {1, 2} and compiled.streams == min(times, key=times.get)
    assert torch.equal(compiled(x), one)
    for bad, match in ((3, "divide the batch"), (0, "at least 1")):
        with pytest.raises(ValueError, match=match):
            compiled.streams = bad
    bundled = load_bundle(compiled.save(tmp_path / "bundle"))
    with pytest.raises(ValueError, match="compile it again"):
        bundled.streams = 2


def test_streams_need_batch_major_outputs():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9)
    qm = quantized(Lambda(lambda m, x: torch.flatten(F.relu(m.conv(x)), 0)), x)
    compiled = qcompiler.compile(qm, target="x86")
    with pytest.raises(ValueError, match="batch as dimension 0"):
        compiled.streams = 2
    assert compiled.streams == 1 and torch.equal(compiled(x), qm(x))
