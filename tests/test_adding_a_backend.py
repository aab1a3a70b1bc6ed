"""The minimal C target of docs/adding-a-backend.md runs as written.

The guide's blocks marked ``skeleton`` (a Python module and its C glue) are written to a temporary
folder and imported, which registers the target ``portable-demo``; it must then equal the reference
bit for bit, partition what it refuses, report its GEMM's errors, and give a bundle that builds
with ``make`` and runs. The registry is restored afterwards.
"""
from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler import backends
from qcompiler.backends import toolchain
from qcompiler.backends.base import BackendUnsupported
from qcompiler.backends.c_emitter import EMITTED_OPS
from qcompiler.backends.c_target import CTarget
from qcompiler.backends.native_model import NativeModel, load_bundle
from qcompiler.zoo.transformer import TransformerEncoderLayer

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-backend.md"
SKELETON = re.compile(r"^```(python|c) skeleton (\S+)\n(.*?)^```$", re.S | re.M)
NAME = "portable-demo"


def skeleton_files() -> dict[str, str]:
    """{relative path: text} of the guide's skeleton blocks."""
    files = {path: text for _, path, text in SKELETON.findall(DOC.read_text())}
    assert sorted(files) == ["backend.py", "runtime/qc_portable_gemm.c", "runtime/qc_portable_gemm.h"], sorted(files)
    return files


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The guide's module, imported from the files it says to write (registering the target)."""
    try:
        toolchain.find_compiler("cc")
    except toolchain.ToolchainError as e:
        pytest.skip(str(e))
    assert NAME not in backends._REGISTRY
    root = tmp_path_factory.mktemp("portable_demo")
    for rel, text in skeleton_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    spec = importlib.util.spec_from_file_location("portable_demo_backend", root / "backend.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        backends._REGISTRY.pop(NAME, None)


class ConvNet(nn.Module):
    """Stem, 3x3 depthwise + pointwise with a residual add, 5x5 stride-2 depthwise, linear head;
    20 channels: two whole 8-lane depthwise blocks and a partial one."""

    def __init__(self, c: int = 20):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.dw3 = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.pw = nn.Conv2d(c, c, 1)
        self.dw5 = nn.Conv2d(c, c, 5, 2, 2, groups=c)
        self.fc = nn.Linear(c * 16, 7)

    def forward(self, x):
        y = F.relu(self.stem(x))
        y = y + self.pw(F.relu(self.dw3(y)))
        return self.fc(F.relu(self.dw5(y)).flatten(1))


def quantized(model, x, mode, act, target=NAME):
    cfg = QConfig(requant_mode=mode, activation=TensorSpec(act, symmetric=False, observer="minmax"))
    return qcompiler.quantize(model.eval(), [(x,)], config=cfg, target=target, progress=False)


def conv_input():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_the_skeleton_is_a_ctarget_with_its_own_depthwise_lanes(demo):
    target = backends.get_backend(NAME)
    assert isinstance(target, demo.PortableTarget) and isinstance(target, CTarget)
    lanes = demo.PortableTarget.settings.depthwise_lanes
    assert lanes not in {backends._REGISTRY[t].settings.depthwise_lanes for t in ("x86", "arm")}
    assert f"-DQC_DW_BLOCK={lanes}" in target.runtime_flags(target.variant())
    assert qcompiler.available_targets()[NAME] == (True, "")


@pytest.mark.parametrize("k, stride", [(3, 1), (5, 2)])
def test_depthwise_in_8_lane_blocks(demo, k, stride):
    """The depthwise layout the setting asks for ([C/8][taps][8], QC_DW_BLOCK=8), alone: whole and
    partial blocks, windows inside the input and across its borders."""
    torch.manual_seed(k)
    x = torch.randn(1, 20, 9, 10)
    qm = quantized(nn.Sequential(nn.Conv2d(20, 20, k, stride, k // 2, groups=20)), x, "fixed_point", "uint8")
    assert torch.equal(qcompiler.compile(qm, pytorch_fallback=False)(x), qm(x))


@pytest.mark.parametrize("mode, act", [("fp32", "uint8"), ("fixed_point", "int8")])
def test_conv_net_with_depthwise_residual_and_linear(demo, mode, act):
    torch.manual_seed(0)
    x = conv_input()
    qm = quantized(ConvNet(), x, mode, act)
    compiled = qcompiler.compile(qm, pytorch_fallback=False)
    assert isinstance(compiled, NativeModel) and compiled.target == NAME
    assert "qc_portable_gemm(" in compiled.source and compiled.source.count("qc_rt_depthwise(") == 2
    assert torch.equal(compiled(x), qm(x))


@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
def test_transformer_encoder_layer(demo, mode):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 32)
    qm = quantized(TransformerEncoderLayer(d_model=32, nhead=4, dim_ff=64), x, mode, "uint8")
    compiled = qcompiler.compile(qm, pytorch_fallback=False)
    assert "0 op(s) in PyTorch" in compiled.describe()
    assert torch.equal(compiled(x), qm(x))


def test_an_op_left_out_of_capabilities_runs_in_pytorch(demo):
    """quantize(target=...) leaves softmax in float for a target without it; compile runs that
    float region in PyTorch between native segments, and the whole stays bit-exact."""
    class NoSoftmax(demo.PortableTarget):
        name = NAME + "-no-softmax"
        capabilities = dataclasses.replace(demo.PortableTarget.capabilities, ops=EMITTED_OPS - {"softmax"})

    torch.manual_seed(0)
    x = torch.randn(2, 6, 32)
    backends.register(NoSoftmax)
    try:
        with pytest.warns(UserWarning, match="stay in float: softmax"):
            qm = quantized(TransformerEncoderLayer(d_model=32, nhead=4, dim_ff=64), x, "fixed_point", "uint8",
                           target=NoSoftmax.name)
        assert_partitioned(qcompiler.compile(qm), qm, x, "softmax (softmax): float")
        with pytest.raises(BackendUnsupported, match="softmax"):
            qcompiler.compile(qm, pytorch_fallback=False)
    finally:
        backends._REGISTRY.pop(NoSoftmax.name, None)


def test_a_gemm_the_lowering_refuses_runs_in_pytorch(demo):
    """BackendUnsupported from GemmLowering.emit is attributed to the layer, which runs in PyTorch."""
    class ShallowGemm(demo.PortableGemm):
        def emit(self, em, **kw):
            if kw["weight"].shape[1] > 32:
                raise BackendUnsupported(f"this GEMM takes k <= 32, not {kw['weight'].shape[1]}")
            return super().emit(em, **kw)

    class Shallow(demo.PortableTarget):
        def gemm_lowering(self, variant):
            return ShallowGemm()

    torch.manual_seed(0)
    x = torch.randn(2, 6, 32)
    qm = quantized(TransformerEncoderLayer(d_model=32, nhead=4, dim_ff=64), x, "fp32", "uint8")
    assert_partitioned(Shallow().compile(qm.graph_module, (x,)), qm, x,
                       "ff2 (linear): integer (this GEMM takes k <= 32, not 64), in PyTorch")
    with pytest.raises(BackendUnsupported, match="ff2"):         # the only layer with k = 64
        Shallow().compile(qm.graph_module, (x,), pytorch_fallback=False)


def assert_partitioned(compiled, qm, x, in_pytorch: str):
    """Native segments of the demo target, ``in_pytorch`` (a line of describe()) between them."""
    lines = compiled.describe().splitlines()
    assert re.match(r"\d+ portable-demo\S* segment\(s\), [1-9]\d* op\(s\) in PyTorch", lines[0]), lines
    assert any(line.strip().startswith(in_pytorch) for line in lines[1:]), lines
    assert torch.equal(compiled(x), qm(x))


class QcRq(ctypes.Structure):
    """qc_rq of qc_runtime.h."""
    _fields_ = [("mode", ctypes.c_int32), ("mult", ctypes.POINTER(ctypes.c_float)), ("m0", ctypes.c_void_p),
                ("shift", ctypes.c_void_p), ("zp", ctypes.c_int32), ("qmin", ctypes.c_int32), ("qmax", ctypes.c_int32)]


def test_gemm_errors_are_named_by_qc_rt_gemm_strerror(demo):
    target = backends.get_backend(NAME)
    lib = toolchain.load_library(target.build_runtime(target.variant()))
    gemm, strerror = lib.qc_portable_gemm, lib.qc_rt_gemm_strerror
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    gemm.argtypes = [i64, i64, i64, ptr, i64, ctypes.c_int32, ptr, ptr, ctypes.POINTER(QcRq), ptr, i64, ctypes.c_int]
    strerror.argtypes, strerror.restype = [ctypes.c_int], ctypes.c_char_p
    a = (ctypes.c_uint8 * 8)(*range(8))                      # A [2, 4], za 3
    w = (ctypes.c_int8 * 8)(1, -1, 2, 0, 0, 1, 1, 1)         # W [2, 4]
    c = (ctypes.c_uint8 * 4)()
    mult = (ctypes.c_float * 2)(1.0, 1.0)
    rq = QcRq(1, mult, None, None, 100, 0, 255)              # QC_RQ_FP32: C = acc + 100

    def call(a=a, k=4, lda=4):
        return gemm(2, 2, k, a, lda, 3, w, None, ctypes.byref(rq), c, 2, 1)

    assert call() == 0
    acc = (np.arange(8).reshape(2, 4) - 3) @ np.frombuffer(w, dtype=np.int8).reshape(2, 4).T.astype(np.int64)
    assert list(c) == (acc + 100).reshape(-1).tolist()
    assert (call(a=None), call(k=0), call(lda=3)) == (1, 2, 3)
    texts = [strerror(code).decode() for code in (1, 2, 3, 7)]
    assert len(set(texts)) == 4 and "unknown" not in " ".join(texts), texts


def test_bundle_builds_with_make_and_runs(demo, tmp_path):
    torch.manual_seed(0)
    x = conv_input()
    qm = quantized(ConvNet(), x, "fp32", "uint8")
    compiled = qcompiler.compile(qm, pytorch_fallback=False)
    want = qm(x)
    root = compiled.save(tmp_path / "bundle")
    assert "-DQC_DW_BLOCK=8" in (root / "Makefile").read_text()
    made = subprocess.run(["make", "-j2", "-C", str(root)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-3000:]
    (root / "inputs.bin").write_bytes(x.numpy().tobytes())
    ran = subprocess.run(["./qc_model_main", "run", "weights.bin", "inputs.bin", "outputs.bin"], cwd=root,
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    got = torch.from_numpy(np.fromfile(root / "outputs.bin", dtype=np.float32)).reshape(want.shape)
    assert torch.equal(got, want)
    assert torch.equal(load_bundle(root)(x), want)
    steps = compiled.profile(x, repeats=1, warmup=0)
    assert len(steps) == compiled.manifest["steps"] and all(s["ms"] >= 0 for s in steps)
