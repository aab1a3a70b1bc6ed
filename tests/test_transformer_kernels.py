"""The blocked transformer kernels of qc_rt_transformer.c at their edges, on the host's ISA and
on the portable scalar path (QCOMPILER_CPU_FEATURES="" picks the baseline runtime variant):
matmul sizes that are no multiple of the 6 x 16 register block, the 512-deep depth block or the
256-column requantization block, batch x heads > 1, broadcast batches, a transposed b and a
fused-qkv head split read in place (no copy of the view); softmax rows on either side of the
per-row table (64) with strides; LayerNorm rows past the int32 sum block (16384); and the
integer softmax's per-row reciprocal against exact rational rounding."""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler.core.quantize import qparams_from_range
from qcompiler.core.qtypes import QParams, qtype
from qcompiler.core.transformer_ops import SOFTMAX_RECIP_BITS, QSoftmax

#: "native": the host's best ISA; "scalar": the portable C (no AVX2 intrinsics)
ISAS = ["native", "scalar"]


class Fn2(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, a, b):
        return self.fn(a, b)


class Fn(Fn2):
    def forward(self, x):
        return self.fn(x)


def compile_exact(model, args, isa, mode="fp32", act="uint8", op="matmul"):
    """Quantize, compile natively on ``isa`` and check bit-exactness; the compiled model."""
    cfg = QConfig(requant_mode=mode, activation=TensorSpec(act, symmetric=False, observer="minmax"))
    qm = qcompiler.quantize(model.eval(), [args], config=cfg, progress=False)
    assert op in {m.op_name for m in qm.integer_ops()}
    with pytest.MonkeyPatch.context() as mp:
        if isa == "scalar":
            mp.setenv("QCOMPILER_CPU_FEATURES", "")
        compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    if isa == "scalar":
        assert compiled.isa == "scalar"
    assert torch.equal(compiled(*args), qm(*args)), f"{isa} differs from the reference"
    return compiled


def view_copies(compiled) -> int:
    return compiled.source.count("qc_rt_strided_copy(")


sizes_m = st.one_of(st.integers(1, 14), st.sampled_from([6, 12, 13]))
sizes_k = st.one_of(st.integers(1, 40), st.integers(505, 530))
sizes_n = st.one_of(st.integers(1, 40), st.sampled_from([16, 17, 255, 256, 257, 273]))


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=10, deadline=None)
@given(heads=st.sampled_from([(1,), (3,), (2, 3)]), m=sizes_m, k=sizes_k, n=sizes_n, transposed=st.booleans(),
       broadcast=st.sampled_from(["none", "a", "b"]), mode=st.sampled_from(["fp32", "fixed_point"]),
       act=st.sampled_from(["uint8", "int8"]), seed=st.integers(0, 2**16))
def test_matmul_blocking_edges(isa, heads, m, k, n, transposed, broadcast, mode, act, seed):
    torch.manual_seed(seed)
    a_heads = heads if broadcast != "a" else heads[1:]
    b_heads = heads if broadcast != "b" else heads[1:]
    a = torch.randn(*a_heads, m, k)
    if transposed:      # b = key^T (of an integer op's output), read transposed in place by the packing
        model, b = Fn2(lambda a, key: a @ (key + key).transpose(-2, -1)), torch.randn(*b_heads, n, k)
    else:
        model, b = Fn2(lambda a, b: a @ b), torch.randn(*b_heads, k, n)
    compiled = compile_exact(model, (a, b), isa, mode, act)
    assert view_copies(compiled) == 0


class HeadSplit(nn.Module):
    """A fused qkv tensor split into heads: q, k and v are strided views of one buffer."""

    def __init__(self, heads, dh):
        super().__init__()
        self.heads, self.dh = heads, dh

    def forward(self, x):
        b, s, _ = x.shape
        x = x + x                   # an integer op's output (views of a graph input stay float)
        q, k, v = x.view(b, s, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch, seq, heads, dh", [(1, 13, 3, 7), (2, 20, 2, 17)])
def test_attention_reads_qkv_views_in_place(isa, batch, seq, heads, dh):
    torch.manual_seed(seq)
    x = torch.randn(batch, seq, 3 * heads * dh)
    compiled = compile_exact(HeadSplit(heads, dh), (x,), isa)
    assert view_copies(compiled) == 0, "q, k or v was copied before its matmul"


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=8, deadline=None)
@given(length=st.one_of(st.integers(1, 70), st.integers(120, 300)), outer=st.integers(1, 3),
       inner=st.sampled_from([1, 1, 3]), spread=st.sampled_from([0.5, 4.0, 40.0]),
       act=st.sampled_from(["uint8", "int8"]), seed=st.integers(0, 2**16))
def test_softmax_rows(isa, length, outer, inner, spread, act, seed):
    """Rows below and above the per-row table (64), contiguous and strided (inner > 1); the
    spread moves where the table's non-zero part ends."""
    torch.manual_seed(seed)
    x = torch.randn(outer, length, inner) * spread
    compile_exact(Fn(lambda x: x.softmax(1)), (x,), isa, act=act, op="softmax")


@pytest.mark.parametrize("isa", ISAS)
def test_layer_norm_past_the_sum_block(isa):
    torch.manual_seed(7)
    x = torch.randn(2, 20000) * 3 + 1
    compile_exact(nn.LayerNorm(20000), (x,), isa, op="layer_norm")


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("s_out", [None, 1 / 127, 0.3, 3e-6])
def test_softmax_reciprocal_against_exact_rounding(act, s_out):
    """The per-row reciprocal c = round(R·2^31 / S) moves e·R/(S·2^m) by at most 2^(21 − sh)
    output steps (sh = m + 31) before the half-up rounding: every output is the exact
    rational's rounding, or an adjacent integer where the rational lies that close to a half."""
    qt = qtype(act)
    inp = QParams(torch.tensor(0.05), torch.tensor(qt.qmin + 60), qt)
    out = (qparams_from_range(0.0, 1.0, qt, symmetric=False) if s_out is None
           else QParams(torch.tensor(s_out), torch.tensor(qt.qmin), qt))
    op = QSoftmax(inp, out, -1)
    torch.manual_seed(0)
    x = torch.randint(qt.qmin, qt.qmax + 1, (64, 197)).to(qt.storage)
    q = x.to(torch.int64)
    e = op.lut[q.amax(-1, keepdim=True) - q]
    s = e.sum(-1, keepdim=True)
    from fractions import Fraction
    sh = op.out_shift + SOFTMAX_RECIP_BITS
    slack = Fraction(1, 2 ** (sh - 21))
    zo = out.zero_point_int()
    got = op(x).to(torch.int64)
    for row in range(0, 64, 7):
        for col in range(0, 197, 3):
            exact = Fraction(int(e[row, col]) * op.out_mult, int(s[row]) * 2 ** op.out_shift)
            lo, hi = math.floor(exact - slack + Fraction(1, 2)), math.floor(exact + slack + Fraction(1, 2))
            lo, hi = (min(max(v + zo, qt.qmin), qt.qmax) for v in (lo, hi))
            assert lo <= int(got[row, col]) <= hi
