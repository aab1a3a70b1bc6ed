"""The transformer op family (core/transformer_ops.py, lower_transformer.py, qc_rt_transformer.c):
every code-generating target equals the reference bit for bit on matmul of two activations,
softmax, LayerNorm, linear on [B, S, D], conv1d and the functional / bare-module spellings of
conv and linear; the integer ops' accuracy against float is within the bounds docs/numerics.md
states."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler.core.meta import graph_info
from qcompiler.core.quantize import dequantize, quantize, qparams_from_range
from qcompiler.core.qtypes import QParams, qtype
from qcompiler.core.transformer_ops import SOFTMAX_LUT_BITS, QLayerNorm, QMatMul, QSoftmax

from helpers import OP_COMPILED_TARGETS as TARGETS, modes
from helpers import Fn, act_dtypes as acts, quantize_minmax as quantize_model


def assert_native_bit_exact(model, args, target, mode="fp32", act="uint8", op_names=()):
    """Compiled as ONE native program (no PyTorch fallback) and equal to the reference; the
    integer graph really contains ``op_names`` (the layer was quantized, not left in float)."""
    args = args if isinstance(args, tuple) else (args,)
    qm = quantize_model(model, args, mode, act)
    ops = {getattr(m, "op_name", "") for m in qm.graph_module.modules()}
    assert set(op_names) <= ops, f"expected integer ops {op_names}, graph has {sorted(o for o in ops if o)}"
    compiled = qcompiler.compile(qm, target=target, pytorch_fallback=False)
    got, ref = compiled(*args), qm(*args)
    pairs = zip(got, ref) if isinstance(ref, (tuple, list)) else [(got, ref)]
    for g, r in pairs:
        assert torch.equal(g, r), f"{target} differs from the reference"


class Fn2(Fn):
    def forward(self, a, b):
        return self.fn(a, b)


# ---------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------

MATMUL_SPELLINGS = {
    "torch.matmul": lambda a, b: torch.matmul(a, b),
    "operator": lambda a, b: a @ b,
    "method": lambda a, b: a.matmul(b),
    "torch.bmm": lambda a, b: torch.bmm(a, b),
}


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=12)
@given(spelling=st.sampled_from(sorted(MATMUL_SPELLINGS)), batch=st.sampled_from([(), (3,), (2, 3)]),
       broadcast=st.sampled_from(["none", "a", "b"]), m=st.integers(1, 9), k=st.integers(1, 300),
       n=st.integers(1, 300), mode=modes, act=acts, seed=st.integers(0, 2**16))
def test_matmul(target, spelling, batch, broadcast, m, k, n, mode, act, seed):
    if spelling == "torch.bmm":
        batch, broadcast = (2,), "none"
    a_batch = batch if broadcast != "a" else batch[1:]
    b_batch = batch if broadcast != "b" else batch[1:]
    torch.manual_seed(seed)
    a, b = torch.randn(*a_batch, m, k), 2 * torch.rand(*b_batch, k, n) - 0.5
    assert_native_bit_exact(Fn2(MATMUL_SPELLINGS[spelling]), (a, b), target, mode, act, ["matmul"])


@pytest.mark.parametrize("target", TARGETS)
def test_matmul_vector_operands(target):
    torch.manual_seed(1)
    assert_native_bit_exact(Fn2(lambda a, b: a @ b), (torch.randn(5, 7), torch.randn(7)), target, op_names=["matmul"])
    assert_native_bit_exact(Fn2(lambda a, b: a @ b), (torch.randn(7), torch.randn(2, 7, 3)), target,
                            op_names=["matmul"])


def test_matmul_overflowing_accumulator_stays_float():
    """K · 255 · 255 > 2^31 − 1: the layer is not quantized, and the report says why."""
    torch.manual_seed(0)
    a, b = torch.rand(2, 40000), torch.rand(40000, 3)
    qm = quantize_model(Fn2(lambda a, b: a @ b), (a, b))
    assert not any(isinstance(m, QMatMul) for m in qm.graph_module.modules())
    assert any("int32 accumulator of matmul" in line for line in graph_info(qm.graph_module).notes)


def test_matmul_accuracy():
    """The accumulator is exact, so the output is the float product of the dequantized inputs
    rounded once: within 1 output step (fp32 mode: one float32 multiply of the accumulator)."""
    torch.manual_seed(0)
    a, b = torch.randn(4, 16, 32), torch.randn(4, 32, 24)
    for mode in ("fp32", "fixed_point"):
        qm = quantize_model(Fn2(lambda a, b: a @ b), (a, b), mode)
        op = next(m for m in qm.graph_module.modules() if isinstance(m, QMatMul))
        qa, qb = (quantize(t, qp) for t, qp in zip((a, b), op.input_qparams))
        exact = torch.matmul(dequantize(qa, op.input_qparams[0]).double(), dequantize(qb, op.input_qparams[1]).double())
        out = op.output_qparams
        got = dequantize(op(qa, qb), out).double()
        inside = (exact > (out.qtype.qmin - out.zero_point_int()) * out.scale_float()) & \
                 (exact < (out.qtype.qmax - out.zero_point_int()) * out.scale_float())
        assert float(((got - exact).abs() / out.scale_float())[inside].max()) <= 0.5 + 1e-4


# ---------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------

SOFTMAX_SPELLINGS = {
    "F.softmax": lambda dim: (lambda x: F.softmax(x, dim)),
    "F.softmax kw": lambda dim: (lambda x: F.softmax(x, dim=dim)),
    "torch.softmax": lambda dim: (lambda x: torch.softmax(x, dim)),
    "method": lambda dim: (lambda x: x.softmax(dim)),
}


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=14)
@given(shape=st.lists(st.integers(1, 12), min_size=1, max_size=4), data=st.data(),
       spelling=st.sampled_from(sorted(SOFTMAX_SPELLINGS) + ["nn.Softmax"]), spread=st.sampled_from([0.3, 3.0, 20.0]),
       mode=modes, act=acts, seed=st.integers(0, 2**16))
def test_softmax(target, shape, data, spelling, spread, mode, act, seed):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    torch.manual_seed(seed)
    model = nn.Softmax(dim) if spelling == "nn.Softmax" else Fn(SOFTMAX_SPELLINGS[spelling](dim))
    assert_native_bit_exact(model, torch.randn(*shape) * spread, target, mode, act, ["softmax"])


@pytest.mark.parametrize("target", TARGETS)
def test_softmax_long_rows(target):
    """Rows over 256 elements take the kernel's per-row table of 256 quotients."""
    torch.manual_seed(2)
    assert_native_bit_exact(nn.Softmax(-1), torch.randn(3, 1000) * 4, target, op_names=["softmax"])
    assert_native_bit_exact(nn.Softmax(1), torch.randn(2, 300, 5) * 4, target, op_names=["softmax"])


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("s_in", [0.004, 0.03, 0.1, 0.4])
@pytest.mark.parametrize("length", [3, 64, 1000, 4096])
def test_softmax_accuracy(act, s_in, length):
    """Against softmax of the dequantized input in float64: within 0.5 output step (the
    output rounding) plus the table's error, at most (0.5 + 0.5·L) / 2^22 in probability, plus
    the per-row reciprocal's, at most 2^(21 − sh) steps (sh = m + 31)."""
    torch.manual_seed(length)
    qt = qtype(act)
    x = torch.randint(qt.qmin, qt.qmax + 1, (32, length)).to(qt.storage)
    inp = QParams(torch.tensor(s_in), torch.tensor(qt.qmin + 90), qt)
    out = qparams_from_range(0.0, 1.0, qt, symmetric=False)
    exact = torch.softmax(dequantize(x, inp).double(), -1)
    op = QSoftmax(inp, out, -1)
    got = dequantize(op(x), out).double()
    bound = 0.5 + (0.5 + 0.5 * length) / 2**SOFTMAX_LUT_BITS / out.scale_float() + 2.0 ** (-10 - op.out_shift)
    assert float((got - exact).abs().max()) / out.scale_float() <= bound


# ---------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------

class FunctionalLayerNorm(nn.Module):
    def __init__(self, shape, affine):
        super().__init__()
        self.shape = shape
        self.w = nn.Parameter(torch.rand(shape) + 0.5) if affine else None
        self.b = nn.Parameter(torch.randn(shape) * 0.3) if affine else None

    def forward(self, x):
        return F.layer_norm(x, self.shape, self.w, self.b, 1e-6)


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=14)
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), last=st.lists(st.integers(1, 40), min_size=1, max_size=2),
       affine=st.booleans(), functional=st.booleans(), offset=st.sampled_from([0.0, 3.0]), mode=modes, act=acts,
       seed=st.integers(0, 2**16))
def test_layer_norm(target, lead, last, affine, functional, offset, mode, act, seed):
    torch.manual_seed(seed)
    shape = tuple(last)
    if functional:
        model = FunctionalLayerNorm(shape, affine)
    else:
        model = nn.LayerNorm(shape, elementwise_affine=affine)
        if affine:
            with torch.no_grad():
                model.weight.uniform_(0.5, 1.5)
                model.bias.normal_(0, 0.3)
    x = torch.randn(*lead, *shape) * 2 + offset
    assert_native_bit_exact(model, x, target, mode, act, ["layer_norm"])


@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("n", [1, 8, 768, 4096])
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_accuracy(act, n, affine):
    """Against F.layer_norm of the dequantized input in float64: the integer sums are exact,
    the float32 tail adds a few ulps, so within 0.5 output step + 1e-3."""
    torch.manual_seed(n)
    qt = qtype(act)
    x = (torch.randn(32, n) * 40 + 3).round().clamp(qt.qmin, qt.qmax).to(qt.storage)
    inp = QParams(torch.tensor(0.05), torch.tensor(5), qt)
    g, b = (torch.rand(n) + 0.5, torch.randn(n) * 0.2) if affine else (None, None)
    exact = F.layer_norm(dequantize(x, inp).double(), (n,), None if g is None else g.double(),
                         None if b is None else b.double(), 1e-5)
    out = qparams_from_range(float(exact.min()), float(exact.max()), qt, symmetric=False)
    got = dequantize(QLayerNorm(inp, out, (n,), g, b, 1e-5)(x), out).double()
    assert float((got - exact).abs().max()) / out.scale_float() <= 0.5 + 1e-3


# ---------------------------------------------------------------------------------------
# linear on [B, S, D], conv1d, functional and bare spellings
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=8)
@given(b=st.integers(1, 3), s=st.integers(1, 9), d=st.integers(1, 80), out=st.integers(1, 40), mode=modes, act=acts,
       seed=st.integers(0, 2**16))
def test_linear_3d(target, b, s, d, out, mode, act, seed):
    torch.manual_seed(seed)
    assert_native_bit_exact(nn.Sequential(nn.Linear(d, out)), torch.randn(b, s, d), target, mode, act, ["linear"])


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=10)
@given(groups=st.integers(1, 3), cpg=st.integers(1, 5), opg=st.integers(1, 5), k=st.sampled_from([1, 3, 5]),
       stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2), length=st.integers(9, 20),
       relu=st.booleans(), mode=modes, act=acts, seed=st.integers(0, 2**16))
def test_conv1d(target, groups, cpg, opg, k, stride, padding, dilation, length, relu, mode, act, seed):
    torch.manual_seed(seed)
    layers = [nn.Conv1d(groups * cpg, groups * opg, k, stride, padding, dilation, groups)] + ([nn.ReLU()] if relu else [])
    assert_native_bit_exact(nn.Sequential(*layers), torch.randn(2, groups * cpg, length), target, mode, act,
                            ["conv1d"])


class FunctionalLayers(nn.Module):
    """F.conv2d / F.linear on the module's own parameters, a BatchNorm after the conv."""

    def __init__(self):
        super().__init__()
        self.cw, self.cb = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3), nn.Parameter(torch.randn(6) * 0.1)
        self.bn = nn.BatchNorm2d(6)
        self.lw, self.lb = nn.Parameter(torch.randn(5, 6 * 16) * 0.1), nn.Parameter(torch.randn(5) * 0.1)

    def forward(self, x):
        y = F.relu(self.bn(F.conv2d(x, self.cw, self.cb, stride=2, padding=1)))
        return F.linear(y.flatten(1), self.lw, self.lb)


class FunctionalConv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 2, 3) * 0.4)

    def forward(self, x):
        return F.conv1d(x, self.w, None, 1, 1, 1, 2)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
@pytest.mark.parametrize("case", ["bare linear", "bare conv2d", "bare conv1d", "functional", "functional conv1d"])
def test_functional_and_bare_layers(target, mode, case):
    """A model that IS one nn.Linear / nn.Conv (fx traces the root's forward into F.linear on
    get_attr nodes) and F.linear / F.conv on parameters quantize and compile natively."""
    torch.manual_seed(3)
    model, x, ops = {
        "bare linear": (nn.Linear(64, 32), torch.randn(4, 64), ["linear"]),
        "bare conv2d": (nn.Conv2d(3, 8, 3, padding=1), torch.randn(2, 3, 8, 8), ["conv2d"]),
        "bare conv1d": (nn.Conv1d(3, 8, 3), torch.randn(2, 3, 12), ["conv1d"]),
        "functional": (FunctionalLayers(), torch.randn(2, 3, 8, 8), ["conv2d", "linear"]),
        "functional conv1d": (FunctionalConv1d(), torch.randn(2, 4, 10), ["conv1d"]),
    }[case]
    assert_native_bit_exact(model, x, target, mode, op_names=ops)


def test_functional_layers_fold_batchnorm_and_keep_layer_names():
    torch.manual_seed(4)
    model = FunctionalLayers().eval()
    x = torch.randn(2, 3, 8, 8)
    qm = quantize_model(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qm.graph_module.modules())
    layers = sorted(m.source_layer for m in qm.graph_module.modules() if getattr(m, "op_name", "") in ("conv2d", "linear"))
    assert layers == ["conv2d", "linear"]
    # the quantized model still tracks the float one
    assert float((qm(x) - model(x)).abs().max()) < 0.1 * float(model(x).abs().max())


class ComputedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 5))
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(F.linear(x, self.w.t()))


def test_functional_layer_on_computed_weight_stays_float():
    """F.linear on ``self.w.t()`` has no constant weight: it is left as it is (in float)."""
    torch.manual_seed(5)
    model, x = ComputedWeight().eval(), torch.randn(3, 8)
    qm = quantize_model(model, x)
    assert [m.op_name for m in qm.graph_module.modules() if getattr(m, "op_name", "") == "linear"] == ["linear"]
    assert any(n.op == "call_function" and n.target is F.linear for n in qm.graph_module.graph.nodes)


# ---------------------------------------------------------------------------------------
# a BERT-style encoder layer, end to end
# ---------------------------------------------------------------------------------------

class BertLayer(nn.Module):
    """Self-attention and feed-forward with the other spellings: ``@``, ``x.softmax``,
    ``F.layer_norm`` on parameters, ``F.gelu``, a view/permute head split."""

    def __init__(self, d=32, heads=2, ff=64):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.g1, self.b1 = nn.Parameter(torch.rand(d) + 0.5), nn.Parameter(torch.randn(d) * 0.1)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-1, -2) * (1.0 / math.sqrt(self.dh))).softmax(-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = F.layer_norm(x + self.out(ctx), (d,), self.g1, self.b1)
        return self.norm2(x + self.ff2(F.gelu(self.ff1(x))))


def encoder_layer(which):
    from qcompiler.zoo import TransformerEncoderLayer
    return TransformerEncoderLayer(64, 4, 128) if which == "zoo" else BertLayer()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("which", ["zoo", "bert"])
@pytest.mark.parametrize("mode, act", [("fp32", "uint8"), ("fixed_point", "int8")])
def test_encoder_layer_end_to_end(target, which, mode, act):
    """Every op of the layer is integer (nothing left in float), the native program equals
    the reference bit for bit, and the quantized layer tracks the float one (SQNR floor 25 dB:
    measured 33-34 dB on the zoo layer, docs/numerics.md)."""
    torch.manual_seed(6)
    model = encoder_layer(which).eval()
    d = 64 if which == "zoo" else 32
    data = [torch.randn(4, 12, d) for _ in range(3)]
    cfg = QConfig(requant_mode=mode, activation=TensorSpec(act, symmetric=False))
    qm = qcompiler.quantize(model, data, config=cfg, progress=False)
    assert qm.report().notes == []
    assert {"matmul", "softmax", "layer_norm", "linear"} <= {m.op_name for m in qm.integer_ops()}
    x = torch.randn(2, 12, d)
    compiled = qcompiler.compile(qm, target=target, pytorch_fallback=False)
    assert torch.equal(compiled(x), qm(x))
    with torch.no_grad():
        ref = model(x)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - qm(x)).pow(2).sum())
    assert float(sqnr) > 25
