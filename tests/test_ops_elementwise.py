"""Elementwise functions of one int8 tensor as 256-entry lookup tables (core/lookup_ops.py).

Every spelling of every function becomes one QLookup whose table is built from the float op
itself; compiled targets equal the reference bit for bit (they index the same table); and the
result is within the stated bound of float (see test_accuracy_against_float).
"""
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler.core.integer_ops import QAdd, QMul
from qcompiler.core.lookup_ops import QLookup
from qcompiler.core.meta import graph_info

from helpers import OP_COMPILED_TARGETS, OP_TARGETS, TARGETS  # noqa: E402
ACT_DTYPES = ["uint8", "int8"]
MODES = ["fp32", "fixed_point"]


class Unary(nn.Module):
    """``fn(x)``: a module (traced as call_module) or a lambda (traced through: its function
    or method calls are what the graph records)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# (id, the float function, its Lipschitz constant on R: max |f'| — None where f jumps)
SPELLINGS = [
    ("nn.Hardswish", nn.Hardswish(), 1.5),
    ("F.hardswish", lambda x: F.hardswish(x), 1.5),
    ("nn.SiLU", nn.SiLU(), 1.0999),
    ("F.silu", lambda x: F.silu(x), 1.0999),
    ("nn.GELU", nn.GELU(), 1.129),
    ("nn.GELU(tanh)", nn.GELU(approximate="tanh"), 1.129),
    ("F.gelu(tanh)", lambda x: F.gelu(x, approximate="tanh"), 1.129),
    ("nn.LeakyReLU(0.2)", nn.LeakyReLU(0.2), 1.0),
    ("F.leaky_relu(0.1)", lambda x: F.leaky_relu(x, 0.1), 1.0),
    ("nn.ELU(0.7)", nn.ELU(alpha=0.7), 1.0),
    ("F.elu(1.5)", lambda x: F.elu(x, 1.5), 1.5),
    ("nn.CELU(1.5)", nn.CELU(1.5), 1.0),
    ("nn.SELU", nn.SELU(), 1.7581),
    ("torch.selu", lambda x: torch.selu(x), 1.7581),
    ("nn.Hardtanh(-0.5,1.25)", nn.Hardtanh(-0.5, 1.25), 1.0),
    ("F.hardtanh(-2,2)", lambda x: F.hardtanh(x, -2.0, 2.0), 1.0),
    ("nn.ReLU6", nn.ReLU6(), 1.0),
    ("F.relu6", lambda x: F.relu6(x), 1.0),
    ("nn.Sigmoid", nn.Sigmoid(), 0.25),
    ("torch.sigmoid", lambda x: torch.sigmoid(x), 0.25),
    ("x.sigmoid()", lambda x: x.sigmoid(), 0.25),
    ("nn.Tanh", nn.Tanh(), 1.0),
    ("torch.tanh", lambda x: torch.tanh(x), 1.0),
    ("x.tanh()", lambda x: x.tanh(), 1.0),
    ("nn.Hardsigmoid", nn.Hardsigmoid(), 1 / 6),
    ("F.hardsigmoid", lambda x: F.hardsigmoid(x), 1 / 6),
    ("nn.Mish", nn.Mish(), 1.0885),
    ("nn.Softplus(beta=2)", nn.Softplus(beta=2.0), 1.0),
    ("F.softplus", lambda x: F.softplus(x), 1.0),
    ("nn.LogSigmoid", nn.LogSigmoid(), 1.0),
    ("nn.Softsign", nn.Softsign(), 1.0),
    ("nn.Softshrink(0.3)", nn.Softshrink(0.3), 1.0),
    ("nn.Hardshrink(0.5)", nn.Hardshrink(0.5), None),
    ("nn.Tanhshrink", nn.Tanhshrink(), 1.0),
    ("torch.clamp(-1,1)", lambda x: torch.clamp(x, -1.0, 1.0), 1.0),
    ("x.clamp(min=0.5)", lambda x: x.clamp(min=0.5), 1.0),
    ("x.clip(max=0.25)", lambda x: x.clip(max=0.25), 1.0),
    ("torch.clamp_min", lambda x: torch.clamp_min(x, -0.2), 1.0),
    ("abs(x)", lambda x: abs(x), 1.0),
    ("x + 3", lambda x: x + 3, 1.0),
    ("3 + x", lambda x: 3 + x, 1.0),
    ("x - 0.5", lambda x: x - 0.5, 1.0),
    ("2 - x", lambda x: 2 - x, 1.0),
    ("x * 0.25", lambda x: x * 0.25, 0.25),
    ("-1.5 * x", lambda x: -1.5 * x, 1.5),
    ("x / 6", lambda x: x / 6, 1 / 6),
    ("-x", lambda x: -x, 1.0),
    ("x.add(1.5)", lambda x: x.add(1.5), 1.0),
    ("x.sub(0.5)", lambda x: x.sub(0.5), 1.0),
    ("x.mul(3)", lambda x: x.mul(3), 3.0),
    ("x.div(4)", lambda x: x.div(4), 0.25),
    ("x.neg()", lambda x: x.neg(), 1.0),
    ("torch.add(alpha)", lambda x: torch.add(x, 2, alpha=0.5), 1.0),
    ("torch.sub", lambda x: torch.sub(x, 1), 1.0),
    ("torch.rsub", lambda x: torch.rsub(x, 1), 1.0),
    ("torch.div(floor)", lambda x: torch.div(x, 0.5, rounding_mode="floor"), None),
    ("torch.mul", lambda x: torch.mul(x, -2), 2.0),
    ("torch.neg", lambda x: torch.neg(x), 1.0),
]
IDS = [s[0] for s in SPELLINGS]


def _config(act: str, mode: str = "fp32") -> QConfig:
    return QConfig(requant_mode=mode, activation=TensorSpec(act, symmetric=False, observer="minmax"))


def _lookups(qm) -> list:
    return [m for m in qm.graph_module.modules() if isinstance(m, QLookup)]


def _quantize(model, x, act="uint8", mode="fp32", **kwargs):
    return qcompiler.quantize(model.eval(), [(x,)], config=_config(act, mode), progress=False, **kwargs)


def _compile_exact(qm, args: tuple, target: str, fallback: bool = False):
    """Compiled == reference, bit for bit; natively (no op left to PyTorch) unless ``fallback``."""
    compiled = qcompiler.compile(qm, target=target, pytorch_fallback=fallback) if target != "reference" \
        else qcompiler.compile(qm, target=target)
    got, ref = compiled(*args), qm(*args)
    got, ref = (got, ref) if isinstance(ref, tuple) else ((got,), (ref,))
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert torch.equal(g, r), f"{target}: output {i} differs from the reference"


@pytest.mark.parametrize("name, fn, lipschitz", SPELLINGS, ids=IDS)
def test_every_spelling_is_one_lookup_of_the_float_function(name, fn, lipschitz):
    """The op becomes one QLookup (nothing left in float) whose recovered function is the float
    op exactly: the same values on any input, other arguments and keywords included."""
    model = Unary(fn)
    x = 3 * torch.randn(2, 3, 5, 4)
    qm = _quantize(model, x)
    lookups = _lookups(qm)
    assert len(lookups) == 1, qm.graph_module.code
    assert graph_info(qm.graph_module).float_ops == []
    probe = torch.linspace(-8, 8, 1001)
    assert torch.equal(lookups[0].function(probe), model(probe))


@pytest.mark.parametrize("name, fn, lipschitz", [s for s in SPELLINGS if s[2] is not None],
                         ids=[s[0] for s in SPELLINGS if s[2] is not None])
@pytest.mark.parametrize("act", ACT_DTYPES)
def test_accuracy_against_float(name, fn, lipschitz, act):
    """|dequant(table[q(x)]) − f(x)| ≤ s_out/2 + L·s_in/2 (+ float32 slack), for x the
    calibration data itself (min/max ranges, so neither end clips anything f(x) reaches).

    Why: the table holds round(f(x̂)) with x̂ = dequant(q(x)), |x̂ − x| ≤ s_in/2 (rounding to
    the input grid), so |f(x̂) − f(x)| ≤ L·s_in/2, and rounding f(x̂) to the output grid adds at
    most s_out/2; clamping to the output grid only moves the value toward f(x), which lies in
    the observed range. The slack covers float32 rounding in dequantize, f and the division
    of quantize (a few ulps of values below 100)."""
    torch.manual_seed(0)
    model = Unary(fn)
    x = 3 * torch.randn(4, 3, 16, 16)
    qm = _quantize(model, x, act)
    lut = _lookups(qm)[0]
    s_in, s_out = lut.input_qparams[0].scale_float(), lut.output_qparams.scale_float()
    err = (qm(x) - model(x)).abs().max().item()
    bound = s_out / 2 + lipschitz * s_in / 2 + 1e-5
    assert err <= bound, f"{name}: max error {err:.6g} > {bound:.6g} (s_in={s_in:.4g}, s_out={s_out:.4g})"


class AllSpellings(nn.Module):
    """Every spelling on the same input (one compile for all), plus two on a flattened NHWC
    value (the lookup keeps the layout it is given) and one behind a convolution."""

    def __init__(self):
        super().__init__()
        self.fns = [fn for _, fn, _ in SPELLINGS]
        self.mods = nn.ModuleList(fn for fn in self.fns if isinstance(fn, nn.Module))
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        outs = [fn(x) for fn in self.fns]
        flat = x.flatten(1)
        outs += [torch.sigmoid(flat), F.gelu(flat) / 3]
        outs.append(F.silu(self.conv(x)))
        return tuple(outs)


@pytest.mark.parametrize("target", OP_TARGETS)
@pytest.mark.parametrize("act", ACT_DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_all_spellings_bit_exact(target, act, mode):
    torch.manual_seed(1)
    x = 2 * torch.randn(2, 3, 7, 6) + 0.5
    qm = _quantize(AllSpellings(), x, act, mode)
    assert len(_lookups(qm)) == len(SPELLINGS) + 4
    _compile_exact(qm, (x,), target)


@pytest.mark.parametrize("target", OP_COMPILED_TARGETS)
@settings(max_examples=6, deadline=None)
@given(shape=st.sampled_from([(1, 1, 1, 1), (3, 17), (2, 64, 33, 40), (1, 300001)]),
       act=st.sampled_from(ACT_DTYPES), scale=st.floats(0.01, 50.0), seed=st.integers(0, 2**16))
def test_lookup_sizes_and_ranges(target, shape, act, scale, seed):
    """Any size (one element; tails; large enough to be split across threads) and any range."""
    torch.manual_seed(seed)
    x = scale * torch.randn(shape)
    _compile_exact(_quantize(Unary(nn.Hardswish()), x, act), (x,), target)


class StandaloneRelu6(nn.Module):
    """relu6 on the model input, after a max-pool and after a cat: nothing before it to fold
    into, so each is a lookup; the one after the convolution is folded into its clamp."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU6()

    def forward(self, x):
        x = F.relu6(x)
        y = self.act(self.conv(x))
        y = F.relu6(F.max_pool2d(y, 2) * 1.5)
        z = torch.cat([y, F.max_pool2d(x, 2)], 1)
        return F.hardtanh(z, -0.5, 0.5), nn.functional.relu6(F.max_pool2d(z, 2))


@pytest.mark.parametrize("target", OP_TARGETS)
@pytest.mark.parametrize("act", ACT_DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_standalone_relu6(target, act, mode):
    torch.manual_seed(2)
    x = 4 * torch.randn(2, 3, 8, 8)
    qm = _quantize(StandaloneRelu6(), x, act, mode)
    # relu6(input); x*1.5 with relu6 folded into its table; hardtanh(cat); relu6(pool)
    assert len(_lookups(qm)) == 4
    assert graph_info(qm.graph_module).float_ops == []
    _compile_exact(qm, (x,), target)


def _hardswish(x):
    return x * F.relu6(x + 3) / 6


class MobileNetV3Block(nn.Module):
    """MobileNetV3's inverted residual: expand (conv-bn-hardswish), depthwise (conv-bn-hardswish,
    the hand-written form), a hard-sigmoid gate of the same shape, project, residual."""

    def __init__(self, c=8, e=24):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e))
        self.gate = nn.Conv2d(e, e, 1)
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = _hardswish(self.dw(self.expand(x)))
        y = y * (F.relu6(self.gate(y) + 3) / 6)      # hard-sigmoid gate, torchvision's spelling
        return x + self.project(y)


class EfficientNetBlock(nn.Module):
    """EfficientNet's MBConv: conv → bn → SiLU twice, a sigmoid gate, project, residual."""

    def __init__(self, c=8, e=32):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.SiLU())
        self.gate = nn.Sequential(nn.Conv2d(e, e, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.dw(self.expand(x))
        return x + self.project(y * self.gate(y))


def _randomize_bn(model):
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("target", OP_TARGETS)
@pytest.mark.parametrize("block, n_lookups", [(MobileNetV3Block, 5), (EfficientNetBlock, 3)])
@pytest.mark.parametrize("act, mode", [("uint8", "fp32"), ("int8", "fixed_point")])
def test_mobile_blocks(target, block, n_lookups, act, mode):
    """MobileNetV3: expand hardswish, (x+3) with relu6 folded, /6, gate (x+3)+relu6, /6 — five
    tables; EfficientNet: two SiLU and the sigmoid. Every activation integer, compiled exactly."""
    model = _randomize_bn(block()).eval()
    x = torch.randn(2, 8, 10, 10)
    qm = _quantize(model, x, act, mode)
    assert len(_lookups(qm)) == n_lookups
    assert graph_info(qm.graph_module).float_ops == []
    _compile_exact(qm, (x,), target)


class SqueezeExcite(nn.Module):
    """torchvision's SqueezeExcitation with a hard-sigmoid scale: the gate broadcasts over H, W."""

    def __init__(self, c=16):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.act, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x):
        x = nn.functional.hardswish(self.conv(x))
        s = self.scale_activation(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return s * x


@pytest.mark.parametrize("target", OP_TARGETS)
def test_squeeze_excite_exact_with_whatever_runs_natively(target):
    """The gate's broadcasting multiply may run natively or in PyTorch; the activations are
    lookups either way, and the result is exact."""
    x = torch.randn(2, 3, 9, 9)
    qm = _quantize(SqueezeExcite(), x)
    assert len(_lookups(qm)) == 2
    _compile_exact(qm, (x,), target, fallback=True)


class ShapesAndPairs(nn.Module):
    """Arithmetic on sizes stays Python, tensor⊕tensor stays QAdd/QMul, and a number operand
    makes a lookup."""

    def forward(self, x, y):
        n = x.size(0) * 2 - 1
        z = (x + y) * (y - 0.5)
        return z.reshape(n + 1 - x.size(0), -1) * 2


def test_scalar_arithmetic_leaves_tensor_pairs_and_sizes_alone():
    x, y = torch.randn(2, 4, 3, 3), torch.rand(2, 4, 3, 3)
    qm = qcompiler.quantize(ShapesAndPairs().eval(), [(x, y)], config=_config("uint8"), progress=False)
    kinds = [type(m) for m in qm.graph_module.modules()]
    assert kinds.count(QAdd) == 1 and kinds.count(QMul) == 1 and kinds.count(QLookup) == 2
    assert graph_info(qm.graph_module).float_ops == []
    assert qm(x, y).shape == (2, 36)


def test_division_by_zero_stays_in_float_and_says_why():
    qm = _quantize(Unary(lambda x: torch.sigmoid(x) / 0), torch.randn(2, 3), warn_float=False)
    assert len(_lookups(qm)) == 1          # the sigmoid
    assert any("division by a zero constant" in line for line in graph_info(qm.graph_module).notes)


def test_clamp_with_tensor_bounds_is_not_a_lookup():
    class M(nn.Module):
        def forward(self, x, lo):
            return torch.clamp(torch.sigmoid(x), min=lo)

    x, lo = torch.randn(2, 5), torch.randn(2, 5)
    qm = qcompiler.quantize(M().eval(), [(x, lo)], config=_config("uint8"), progress=False, warn_float=False)
    assert len(_lookups(qm)) == 1          # the sigmoid
    assert any("clamp of more than one tensor" in line for line in graph_info(qm.graph_module).notes)


def test_float_reference_is_the_float_function():
    """The report's isolated SQNR runs the op's float function (fused clamp included)."""
    qm = _quantize(Unary(lambda x: F.relu6(x + 3)), torch.randn(2, 8))
    (lut,) = _lookups(qm)
    t = torch.linspace(-6, 6, 97)
    assert torch.equal(lut.float_reference(t), F.relu6(t + 3))


@pytest.mark.parametrize("act", ACT_DTYPES)
def test_lookup_chain_runs_as_one_table(act):
    """hard-sigmoid written by hand: (x + 3 → relu6) then / 6, two lookups in the reference; the
    x86 code composes them into one table, exactly (t2[t1[x]])."""
    if "x86" not in TARGETS:
        pytest.skip("x86 not available")
    torch.manual_seed(4)
    x = 4 * torch.randn(2, 5, 6, 7)
    qm = _quantize(Unary(lambda x: torch.tanh(F.relu6(x + 3) / 6)), x, act)
    assert len(_lookups(qm)) == 3
    compiled = qcompiler.compile(qm, target="x86", pytorch_fallback=False)
    assert compiled.source.count("qc_rt_lookup(") == 1
    assert torch.equal(compiled(x), qm(x))
