"""The kernels of an MBConv block (EfficientNet-B0) at their vector-path edges, bit-exact:
depthwise k x k with zx folded into the bias for whole windows (any kernel size), the SE gate's
broadcast QMul rows, the lookup table's AVX2 path (vpblendvb tree), and the AVX2 GEMM's
16-column uint8/fp32 epilogue against a torch reference at every N edge and at the clamps.
"""
import ctypes

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig, TensorSpec

from helpers import OP_TARGETS, TARGETS, act_dtypes, assert_bit_exact, modes


@pytest.mark.parametrize("target", OP_TARGETS)
@settings(max_examples=12, deadline=None)
@given(channels=st.sampled_from([16, 17, 32, 40, 67]), k=st.sampled_from([(3, 3), (5, 5), (7, 7), (5, 3)]),
       stride=st.integers(1, 2), padding=st.integers(0, 3), dilation=st.integers(1, 2), mode=modes,
       act=act_dtypes, seed=st.integers(0, 2**16))
def test_depthwise_whole_windows_of_any_size(target, channels, k, stride, padding, dilation, mode, act, seed):
    """Whole blocks of 16 channels and a tail, windows inside the input (zx folded into the bias:
    vpmaddwd) and across every border (zx subtracted per tap) in one output row."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, channels, k, stride, padding, dilation, groups=channels)
    x = torch.randn(2, channels, 17, 16) + 0.7          # zero point away from the middle
    assert_bit_exact(nn.Sequential(conv), x, target, mode, act)


class Gate(nn.Module):
    """x * gate with an SE gate [N, C, 1, 1] (rows of C per pixel), either operand first."""

    def __init__(self, c, gate_first):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
        self.gate_first = gate_first

    def forward(self, x):
        gate = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))
        return gate * x if self.gate_first else x * gate


@pytest.mark.parametrize("target", OP_TARGETS)
@settings(max_examples=12, deadline=None)
@given(channels=st.integers(1, 70), hw=st.integers(1, 9), gate_first=st.booleans(), scale=st.sampled_from([1.0, 40.0]),
       mode=modes, act=act_dtypes, seed=st.integers(0, 2**16))
def test_se_gate_rows(target, channels, hw, gate_first, scale, mode, act, seed):
    """Every row length around 16 (vector steps + scalar tail); scale 40 drives the products to
    the output clamp (x is calibrated on a tenth of its range)."""
    torch.manual_seed(seed)
    model = Gate(channels, gate_first)
    x = torch.randn(2, channels, hw, hw + 1)
    cfg = QConfig(requant_mode=mode, activation=TensorSpec(act, symmetric=False, observer="minmax"))
    qm = qcompiler.quantize(model.eval(), [(x / scale,)], config=cfg, progress=False, warn_float=False)
    compiled = qcompiler.compile(qm, target=target, pytorch_fallback=False)
    assert torch.equal(compiled(x), qm(x))


# --------------------------------------------------------------------------------------------
# the x86 runtime's kernels called directly
# --------------------------------------------------------------------------------------------

def _x86_runtime():
    if "x86" not in TARGETS:
        pytest.skip("no x86 target here")
    from backends.x86.backend import X86Backend
    backend = X86Backend()
    return ctypes.CDLL(str(backend.build_runtime(backend.variant())))


@settings(max_examples=20, deadline=None)
@given(n=st.one_of(st.integers(0, 200), st.sampled_from([63, 64, 65, 127, 128, 4096 + 37])),
       offset=st.integers(0, 31), seed=st.integers(0, 2**31 - 1))
def test_lookup_kernel_every_byte(n, offset, seed):
    """qc_rt_lookup of the variant models run (the AVX2 blend tree where the CPU has it) equals
    table[x] for every byte value, at every length and alignment."""
    lib = _x86_runtime()
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 256, (256,), dtype=torch.uint8, generator=g)
    x = torch.cat([torch.arange(256, dtype=torch.uint8),
                   torch.randint(0, 256, (n + offset,), dtype=torch.uint8, generator=g)])[:n + offset]
    y = torch.zeros(n + offset + 1, dtype=torch.uint8)
    lib.qc_rt_lookup.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.qc_rt_lookup(x.data_ptr() + offset, y.data_ptr() + offset, n, table.data_ptr(), 1)
    assert torch.equal(y[offset:offset + n], table[x[offset:offset + n].long()])
    assert int(y[-1]) == 0                                        # nothing written past n


@pytest.mark.parametrize("n", [1, 8, 9, 15, 16, 17, 24, 31, 32, 33, 40, 96])
@pytest.mark.parametrize("mult", [1e-3, 0.05])
def test_avx2_gemm_uint8_fp32_epilogue(n, mult):
    """The AVX2 kernel's 16-column store (and its 8-column fallback at the N edge) against a torch
    reference: round half to even of float32(acc) * m, + zero point, clamped (m = 0.05 clamps
    most outputs at both ends, and the narrowed [lo, hi] of a fused ReLU)."""
    from backends.x86 import gemm as G
    if "x86" not in TARGETS or not G.isa_supported("avx2"):
        pytest.skip("no AVX2 here")
    g = torch.Generator().manual_seed(n)
    m, k = 23, 37
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    bias = torch.randint(-3000, 3000, (n,), dtype=torch.int32, generator=g)
    mults = torch.full((n,), mult, dtype=torch.float32) * (1 + torch.arange(n) % 3)
    # half-way products: acc * m lands on .5 for some outputs when m = 0.05 and acc = 10 (mod 20)
    for qmin, qmax, zp in ((0, 255, 7), (50, 200, 128)):
        packed = G.pack_weights(w, bias, 5, "avx2", input_dtype=torch.uint8)
        rq = G.make_requant(packed, "fp32", multiplier=mults, zero_point=zp, qmin=qmin, qmax=qmax,
                            out_dtype=torch.uint8)
        got = G.gemm(a, packed, rq, isa="avx2", threads=1)
        acc = (a.int() - 5) @ w.int().T + bias
        want = (torch.round(acc.float() * mults) + zp).clamp(qmin, qmax).to(torch.uint8)
        assert torch.equal(got, want)
