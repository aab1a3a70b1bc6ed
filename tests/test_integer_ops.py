"""Integer ops: exact accumulators (level 1 of the reference itself) and INTEGER vs QDQ
(equivalence level 2 of DESIGN.md §3) per op, over hypothesis-generated shapes and params.

Level-2 bound per op: at most 1 output step. Both graphs compute the same real value; the
INTEGER one rounds the multiplier to float32 (relative 2^-24) and the bias to int32 at
scale s_x·s_w (≤ 0.5·M output steps, M < 1 here), the QDQ one accumulates in float32. The
two real values therefore differ by less than one step, and rounding each to the nearest
integer can differ by at most 1.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import qcompiler
from qcompiler.core.integer_ops import AccumulatorOverflowError, QConv, QLinear, check_accumulator
from qcompiler.core.qconfig import QConfig, TensorSpec
from qcompiler.core.qtypes import INT8_NARROW, UINT8, QParams

from helpers import output_qparams, qdq_and_integer, steps_apart

modes = st.sampled_from(["fp32", "fixed_point"])
act_dtypes = st.sampled_from(["uint8", "int8"])


def config(mode="fp32", act="uint8", granularity="per_channel", weight="int8_narrow", symmetric_act=False):
    return QConfig(activation=TensorSpec(act, symmetric=symmetric_act, observer="histogram", range_method="mse"),
                   weight=TensorSpec(weight, symmetric=True, granularity=granularity), requant_mode=mode)


def check_level2(model, inputs, cfg, bound=1.0):
    model = model.eval()
    qdq, integer = qdq_and_integer(model, [inputs], cfg)
    test_x = inputs[0] if isinstance(inputs, tuple) else inputs
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    with torch.no_grad():
        a, b = qdq(*args), integer(*args)
    scale = output_qparams(integer).scale_float()
    assert steps_apart(a, b, scale) <= bound, f"INTEGER and QDQ differ by more than {bound} step(s)"
    return qdq, integer


class ConvAct(nn.Module):
    def __init__(self, cin, cout, k, stride, padding, dilation, groups, bias, act):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=bias)
        self.act = act

    def forward(self, x):
        y = self.conv(x)
        return {"none": y, "relu": F.relu(y), "relu6": F.relu6(y), "clamp": torch.clamp(y, -0.5, 0.5)}[self.act]


@given(groups=st.integers(1, 3), cpg=st.integers(1, 4), opg=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2), bias=st.booleans(),
       act=st.sampled_from(["none", "relu", "relu6", "clamp"]), mode=modes, act_dtype=act_dtypes,
       granularity=st.sampled_from(["per_channel", "per_tensor"]), seed=st.integers(0, 2**16))
def test_conv2d_integer_matches_qdq(groups, cpg, opg, k, stride, padding, dilation, bias, act, mode,
                                    act_dtype, granularity, seed):
    torch.manual_seed(seed)
    size = max(dilation * (k - 1) + 1, 5)
    model = ConvAct(groups * cpg, groups * opg, k, stride, padding, dilation, groups, bias, act)
    check_level2(model, torch.randn(2, groups * cpg, size, size + 1), config(mode, act_dtype, granularity))


@given(depth_multiplier=st.integers(1, 2), stride=st.integers(1, 2), mode=modes, seed=st.integers(0, 2**16))
def test_depthwise_conv_matches_qdq(depth_multiplier, stride, mode, seed):
    torch.manual_seed(seed)
    model = ConvAct(6, 6 * depth_multiplier, 3, stride, 1, 1, 6, True, "relu6")
    check_level2(model, torch.randn(1, 6, 9, 9), config(mode))


class LinearAct(nn.Module):
    def __init__(self, k, n, relu):
        super().__init__()
        self.fc, self.relu = nn.Linear(k, n), relu

    def forward(self, x):
        y = self.fc(x)
        return torch.relu(y) if self.relu else y


@given(k=st.integers(1, 64), n=st.integers(1, 16), lead=st.sampled_from([(3,), (2, 5)]), relu=st.booleans(),
       mode=modes, act_dtype=act_dtypes, weight=st.sampled_from(["int8_narrow", "int4"]), seed=st.integers(0, 2**16))
def test_linear_integer_matches_qdq(k, n, lead, relu, mode, act_dtype, weight, seed):
    torch.manual_seed(seed)
    check_level2(LinearAct(k, n, relu), torch.randn(*lead, k), config(mode, act_dtype, weight=weight))


# Elementwise ops, pools and cat are tested directly on graph inputs so both graphs see the
# same quantized operands (an upstream op would add its own 1-step difference).

class Binary(nn.Module):
    def __init__(self, op, relu):
        super().__init__()
        self.op, self.relu = op, relu

    def forward(self, x, y):
        z = x + y if self.op == "add" else x * y
        return F.relu(z) if self.relu else z


@given(op=st.sampled_from(["add", "mul"]), relu=st.booleans(), mode=modes, act_dtype=act_dtypes,
       broadcast=st.booleans(), seed=st.integers(0, 2**16))
def test_add_mul_match_qdq(op, relu, mode, act_dtype, broadcast, seed):
    torch.manual_seed(seed)
    inputs = (torch.randn(2, 4, 5, 5), 3 * torch.rand(2, 4, 1, 1 if broadcast else 5) - 1)
    _, integer = check_level2(Binary(op, relu), inputs, config(mode, act_dtype))
    names = [type(m).__name__ for m in integer.modules()]
    assert ("QAdd" if op == "add" else "QMul") in names


class Pools(nn.Module):
    def __init__(self, kind, arg):
        super().__init__()
        self.kind, self.arg = kind, arg

    def forward(self, x):
        if self.kind == "avg":
            k, s, p, ceil, include = self.arg
            return F.avg_pool2d(x, k, s, p, ceil, include)
        if self.kind == "adaptive":
            return F.adaptive_avg_pool2d(x, self.arg)
        return torch.flatten(F.max_pool2d(x, *self.arg), 1)


@given(k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 1), ceil=st.booleans(), include=st.booleans(),
       mode=modes, seed=st.integers(0, 2**16))
def test_avg_pool_matches_qdq(k, s, p, ceil, include, mode, seed):
    if p > k // 2:
        p = 0
    torch.manual_seed(seed)
    check_level2(Pools("avg", (k, s, p, ceil, include)), torch.randn(1, 3, 9, 10), config(mode))


@given(out=st.sampled_from([1, 2, 3, (2, 4), (5, 3)]), mode=modes, seed=st.integers(0, 2**16))
def test_adaptive_avg_pool_matches_qdq_with_uneven_windows(out, mode, seed):
    torch.manual_seed(seed)
    check_level2(Pools("adaptive", out), torch.randn(2, 3, 9, 8), config(mode))


def test_max_pool_and_flatten_stay_int8_and_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Pools("max", (3, 2, 1)))
    qdq, integer = check_level2(model, torch.randn(2, 3, 10, 10), config())
    # max-pool and flatten run on the int8 tensor the conv produced: no dequantize between
    pool = next(n for n in integer.graph.nodes if n.target is F.max_pool2d)
    assert type(integer.get_submodule(pool.args[0].target)).__name__ == "QConv"
    flat = next(n for n in integer.graph.nodes if n.target is torch.flatten)
    assert flat.args[0] is pool


class Cat(nn.Module):
    def forward(self, x, y):
        return torch.cat([x, y], 1)


@given(mode=modes, seed=st.integers(0, 2**16))
def test_cat_requantizes_inputs_to_shared_output(mode, seed):
    torch.manual_seed(seed)
    check_level2(Cat(), (torch.randn(2, 3, 4, 4), 5 * torch.rand(2, 2, 4, 4)), config(mode))


# -- the reference's accumulators are exact --------------------------------------------

def exact_conv_int64(x, w, stride, padding, groups):
    """Σ x·w in int64 arithmetic via unfold (no floating point anywhere)."""
    n, c, h, wd = x.shape
    o, i, kh, kw = w.shape
    cols = F.unfold(x.to(torch.float64), (kh, kw), padding=padding, stride=stride).round().to(torch.int64)
    cols = cols.reshape(n, groups, i * kh * kw, -1)
    wg = w.reshape(groups, o // groups, i * kh * kw).to(torch.int64)
    out = torch.stack([wg[g] @ cols[:, g] for g in range(groups)], 1)
    ho = (h + 2 * padding - kh) // stride + 1
    return out.reshape(n, o, ho, -1)


@given(k_channels=st.sampled_from([64, 256, 1024]), groups=st.sampled_from([1, 4]), seed=st.integers(0, 2**16))
def test_reference_accumulator_is_exact_for_extreme_operands(k_channels, groups, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, k_channels, 6, 6), 255, dtype=torch.uint8)        # all-255 activations
    x[0, :, ::2] = torch.randint(0, 256, (k_channels, 3, 6), generator=g, dtype=torch.uint8)
    w = torch.full((8, k_channels // groups, 3, 3), -127, dtype=torch.int8)  # against −127 weights
    w[::3] = torch.randint(-127, 128, w[::3].shape, generator=g, dtype=torch.int8)
    in_qp = QParams(torch.tensor(0.1), torch.tensor(0), UINT8)
    w_qp = QParams(torch.full((8,), 0.01), torch.zeros(8, dtype=torch.int64), INT8_NARROW, axis=0)
    conv = QConv(2, w, w_qp, None, in_qp, in_qp, None, 1, 1, 1, groups)
    expected = exact_conv_int64(x.to(torch.int64), w.to(torch.int64), 1, 1, groups)
    assert torch.equal(conv.accumulate(x), expected)
    if k_channels // groups >= 256:
        assert int(conv.accumulate(x).abs().max()) > 2**24      # beyond float32's exact range


def test_accumulator_overflow_is_caught_when_lowering():
    w_qp = QParams(torch.tensor(0.01), torch.tensor(0), INT8_NARROW)
    in_qp = QParams(torch.tensor(0.1), torch.tensor(0), UINT8)
    w = torch.full((1, 70000), 127, dtype=torch.int8)
    with pytest.raises(AccumulatorOverflowError, match="K=70000"):
        check_accumulator("big", 70000, in_qp, w, w_qp, None)
    check_accumulator("ok", 60000, in_qp, w[:, :60000], w_qp, None)


def test_overflowing_layer_stays_in_float_and_is_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(70000, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(0.01)
    qm = qcompiler.quantize(model, [torch.rand(2, 70000)], progress=False)
    notes = "\n".join(qm.report().notes)
    assert "left in float" in notes and "overflow" in notes
    x = torch.rand(2, 70000)
    assert torch.allclose(qm(x), model(x), rtol=0.05, atol=0.5)
