"""The reduction family (core/reduce_ops.py, lower_reduce.py, qc_rt_reduce.c): ``mean`` over any
dims of a quantized activation, every spelling, keepdim, negative dims, several dims, ranks 0-5,
uint8/int8, both requant modes, compiles as ONE native program equal to the reference bit for
bit; the integer mean is within half an output step of the exact mean of its dequantized input
(docs/numerics.md, "Mean")."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler.core.integer_ops import QAdaptiveAvgPool2d
from qcompiler.core.meta import graph_info
from qcompiler.core.quantize import dequantize, qparams_from_range, quantize
from qcompiler.core.qtypes import qtype
from qcompiler.core.reduce_ops import QMean

from helpers import OP_COMPILED_TARGETS as TARGETS, modes
from helpers import Fn, act_dtypes as acts, quantize_minmax as quantize_model


def means_of(qm) -> list:
    return [m for m in qm.graph_module.modules() if isinstance(m, QMean)]


def assert_native_bit_exact(model, x, target, mode="fp32", act="uint8", means=1):
    """Compiled as ONE native program (no PyTorch fallback), equal to the reference, with
    ``means`` integer means in the graph (the op was quantized, not left in float)."""
    qm = quantize_model(model, (x,), mode, act)
    assert len(means_of(qm)) == means, qm.graph_module
    compiled = qcompiler.compile(qm, target=target, pytorch_fallback=False)
    got, ref = compiled(x), qm(x)
    assert got.shape == ref.shape and torch.equal(got, ref), f"{target} differs from the reference"


SPELLINGS = {
    "method": lambda dim, keep: (lambda x: x.mean(dim, keep)),
    "method kw": lambda dim, keep: (lambda x: x.mean(dim=dim, keepdim=keep)),
    "torch.mean": lambda dim, keep: (lambda x: torch.mean(x, dim, keep)),
    "torch.mean kw": lambda dim, keep: (lambda x: torch.mean(x, dim=dim, keepdim=keep)),
}


@st.composite
def reductions(draw):
    """(shape, dim as the user writes it: int, negative int, list, tuple or None, keepdim)."""
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=5)))
    rank = len(shape)
    picked = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    signed = [d - rank if draw(st.booleans()) else d for d in picked]
    form = draw(st.sampled_from(["int", "list", "tuple", "all"]))
    dim = {"int": signed[0], "list": list(signed), "tuple": tuple(signed), "all": None}[form]
    return shape, dim, draw(st.booleans())


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=14, deadline=None)
@given(case=reductions(), spelling=st.sampled_from(sorted(SPELLINGS)), mode=modes, act=acts,
       seed=st.integers(0, 2**16))
def test_mean(target, case, spelling, mode, act, seed):
    shape, dim, keepdim = case
    fn = (lambda x: x.mean()) if dim is None and not keepdim else SPELLINGS[spelling](dim, keepdim)
    torch.manual_seed(seed)
    assert_native_bit_exact(Fn(fn), torch.randn(*shape) * 3 + 1, target, mode, act)


class Net(nn.Module):
    """``fn(self, x)`` over the submodules given by name (so fx traces them as modules)."""

    def __init__(self, fn, **layers):
        super().__init__()
        self.fn = fn
        for name, layer in layers.items():
            self.add_module(name, layer)

    def forward(self, x):
        return self.fn(self, x)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
def test_mean_in_models(target, mode):
    """The models' spellings after other integer ops: a global pool over NHWC rows after a
    conv (ShuffleNetV2's ``x.mean([2, 3])``), mean pooling over tokens after a linear (the zoo
    Transformer's ``x.mean(dim=1)``), the last dim kept, a mean over H alone (its sums copied
    into NHWC), and a mean of a permuted view."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU())
    lin = nn.Linear(16, 24)
    cases = [
        (Net(lambda m, x: m.fc(m.conv(x).mean([2, 3])), conv=conv, fc=nn.Linear(24, 5)), torch.randn(2, 3, 9, 7)),
        (Net(lambda m, x: m.conv(x).mean(2, keepdim=True) + 1, conv=conv), torch.randn(2, 3, 6, 5)),
        (Net(lambda m, x: m.head(m.lin(x).mean(dim=1)), lin=lin, head=nn.Linear(24, 3)), torch.randn(3, 11, 16)),
        (Net(lambda m, x: m.lin(x).mean(-1, keepdim=True), lin=lin), torch.randn(3, 11, 16)),
        (Net(lambda m, x: m.lin(x).permute(0, 2, 1).mean(1), lin=lin), torch.randn(2, 5, 16)),
    ]
    for model, x in cases:
        assert_native_bit_exact(model, x, target, mode)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
def test_long_mean(target, mode):
    """Rows of 70 000 values near the top of the range: sums past 2^24, where float32(acc)
    itself rounds (fp32 mode), and rows long enough to run threaded."""
    torch.manual_seed(0)
    x = torch.rand(3, 70_000) * 0.1 + 0.9
    qm = quantize_model(Fn(lambda x: x.mean(-1)), (x,), mode)
    (op,) = means_of(qm)
    acc = quantize(x, op.input_qparams[0]).to(torch.int64).sum(-1) - op.input_qparams[0].zero_point_int()
    assert int(acc.min()) > 2**24
    assert_native_bit_exact(Fn(lambda x: x.mean(-1)), x, target, mode)
    assert_native_bit_exact(Fn(lambda x: x.mean(1)), x.reshape(3, 700, 100), target, mode)   # down columns


def test_global_mean_is_the_adaptive_pool():
    """mean over [2, 3] is adaptive_avg_pool2d(x, 1) with the same qparams, bit for bit: the
    same exact sum, the same Requant of M = s_in / (s_out · H·W)."""
    torch.manual_seed(0)
    for mode in ("fp32", "fixed_point"):
        for act in ("uint8", "int8"):
            inp = qparams_from_range(-2.0, 3.0, qtype(act), symmetric=False)
            out = qparams_from_range(-0.7, 1.1, qtype(act), symmetric=False)
            q = quantize(torch.randn(2, 16, 7, 5), inp)
            mean = QMean(inp, out, mode, (2, 3), keepdim=True)
            pool = QAdaptiveAvgPool2d(inp, out, mode, 1)
            assert torch.equal(mean(q), pool(q))


@settings(max_examples=40, deadline=None)
@given(case=reductions(), mode=modes, act=acts, lo=st.floats(-8, -0.01), hi=st.floats(0.01, 8),
       shrink=st.floats(0.05, 1.0), seed=st.integers(0, 2**16))
def test_mean_accuracy(case, mode, act, lo, hi, shrink, seed):
    """The sum is exact, so the only error is the requantization of S · s_in / (count · s_out):
    fp32 rounds f32(S) (exact below 2^24) times f32(M) (relative error 2^-24) once more, and
    fixed_point's M0 · 2^-t is within 2^-31 relative; so, where the output is not clamped,
    |dequant(q_out) − mean(dequant(q_in))| ≤ s_out · (0.5 + 1e-4). The output range is drawn
    independently (``shrink``) so clamped outputs occur and are checked to be at a bound."""
    shape, dim, keepdim = case
    torch.manual_seed(seed)
    inp = qparams_from_range(lo, hi, qtype(act), symmetric=False)
    out = qparams_from_range(lo * shrink, hi * shrink, qtype(act), symmetric=False)
    x = quantize(torch.rand(*shape) * (hi - lo) + lo, inp)
    dims = tuple(range(len(shape))) if dim is None else \
        tuple(sorted({d % len(shape) for d in ([dim] if isinstance(dim, int) else dim)}))
    got = QMean(inp, out, mode, dims, keepdim)(x)
    exact = dequantize(x, inp).double().mean(dims, keepdim=keepdim)
    assert got.shape == exact.shape
    zo, s = out.zero_point_int(), out.scale_float()
    steps = exact / s + zo                                  # the exact value, in output steps
    inside = (steps > out.qtype.qmin) & (steps < out.qtype.qmax)
    err = (got.to(torch.float64) - steps).abs()
    if bool(inside.any()):
        assert float(err[inside].max()) <= 0.5 + 1e-4
    clamped = got[~inside].to(torch.int64)
    assert bool(((clamped == out.qtype.qmin) | (clamped == out.qtype.qmax)).all())


def test_mean_tracks_float():
    """End to end against the float mean of the float input: the input's rounding (≤ s_in / 2,
    averaged) plus the output's (≤ s_out / 2, the bound above)."""
    torch.manual_seed(0)
    x = torch.randn(4, 32, 48)
    qm = quantize_model(Fn(lambda x: x.mean(dim=1)), (x,))
    (op,) = means_of(qm)
    bound = op.input_qparams[0].scale_float() / 2 + op.output_qparams.scale_float() * (0.5 + 1e-4)
    assert float((qm(x) - x.mean(dim=1)).abs().max()) <= bound


@pytest.mark.filterwarnings("ignore:quantize")
def test_mean_with_dtype_stays_float():
    torch.manual_seed(0)
    model = Net(lambda m, x: m.lin(x).mean(1, dtype=torch.float64).float(), lin=nn.Linear(3, 4))
    qm = quantize_model(model, (torch.randn(2, 5, 3),))
    assert not means_of(qm)
    assert any("mean with dtype=torch.float64" in line for line in graph_info(qm.graph_module).notes)


@pytest.mark.filterwarnings("ignore:quantize")
def test_mean_overflowing_sum_stays_float():
    """count · max|q − zx| > 2^31 − 1 (the C's int32 sum): left in float, and the report says why."""
    x = torch.rand(1, 8_500_000)
    qm = quantize_model(Fn(lambda x: F.relu(x).mean(1)), (x,))
    assert not means_of(qm)
    assert any("int32 sum of a mean over 8500000 elements" in line for line in graph_info(qm.graph_module).notes)
