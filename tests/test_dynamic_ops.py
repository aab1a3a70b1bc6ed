"""Dynamic int8 (core/dynamic_ops.py, issue 12): quantize_rows and QDynamicLinear against their
docstring, written out again here independently (loops over Python floats, each IEEE float32
operation as a float64 operation rounded to float32, which is exact for one +, −, ×, ÷), and
QConfig's validation of every method (check_method)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.core.dynamic_ops import QDynamicLinear, quantize_rows
from qcompiler.core.integer_ops import INT32_MAX, AccumulatorOverflowError
from qcompiler.core.qconfig import QConfig, TensorSpec
from qcompiler.core.qtypes import QParams, qtype

# Values a row may hold: 0, any float32 in ±1e6 (subnormals too), and magnitudes near the
# spec's tiny-range threshold 2^-120, below which a row quantizes as a row of zeros.
TINY = 2.0**-120
VALUES = st.one_of(st.just(0.0), st.just(-0.0), st.floats(-1e6, 1e6, width=32),
                   st.sampled_from([TINY, -TINY, TINY * 0.75, TINY * 1.5, 1e-37, -1e-38]))


@st.composite
def matrices(draw, max_rows: int = 4, max_k: int = 12, zero_row: bool = False):
    m, k = draw(st.integers(1, max_rows)), draw(st.integers(1, max_k))
    rows = [draw(st.lists(VALUES, min_size=k, max_size=k)) for _ in range(m)]
    if zero_row:
        rows[draw(st.integers(0, m - 1))] = [0.0] * k
    return torch.tensor(rows, dtype=torch.float32)


def f32(v: float) -> float:
    """One IEEE float32 rounding (ties to even) of a Python float."""
    return float(np.float32(v))


def row_qparams(row: list, symmetric: bool) -> tuple:
    """(codes, scale, zero point) of one row, the docstring's formula in loop form."""
    if symmetric:
        a = max((abs(v) for v in row), default=0.0)
        if a < TINY:
            return [0] * len(row), 0.0, 0
        inv, s = f32(127.0 / a), f32(a / 127.0)
        return [min(127, max(-127, round(f32(v * inv)))) for v in row], s, 0
    lo, hi = min(min(row, default=0.0), 0.0), max(max(row, default=0.0), 0.0)
    r = f32(hi - lo)
    if r < TINY:
        return [0] * len(row), 0.0, 0
    inv, s = f32(255.0 / r), f32(r / 255.0)
    zp = min(255, max(0, round(f32(-lo * inv))))
    return [min(255, max(0, round(f32(v * inv)) + zp)) for v in row], s, zp


def loop_linear(x: torch.Tensor, w: torch.Tensor, sw: torch.Tensor, bias, per_token: bool,
                symmetric: bool) -> torch.Tensor:
    """y[r, c] = f32(f32(acc) · f32(s[r] · s_w[c])) + bias[c], acc an exact Python int."""
    rows = x.tolist()
    if per_token:
        qs = [row_qparams(r, symmetric) for r in rows]
    else:
        codes, s, zp = row_qparams([v for r in rows for v in r], symmetric)
        k = len(rows[0])
        qs = [(codes[i * k:(i + 1) * k], s, zp) for i in range(len(rows))]
    wl, swl = w.tolist(), sw.tolist()
    out = []
    for codes, s, zp in qs:
        line = []
        for c, wc in enumerate(wl):
            acc = sum((q - zp) * wk for q, wk in zip(codes, wc))
            y = f32(f32(float(acc)) * f32(s * swl[c]))
            line.append(y if bias is None else f32(y + float(bias[c])))
        out.append(line)
    return torch.tensor(out, dtype=torch.float32)


def make_layer(w: torch.Tensor, sw: torch.Tensor, bias, per_token: bool, symmetric: bool,
               name: str = "blocks.0.fc") -> QDynamicLinear:
    qp = QParams(sw, torch.zeros(sw.shape[0], dtype=torch.int64), qtype("int8_narrow"), axis=0)
    return QDynamicLinear(w, qp, bias, per_token=per_token, symmetric=symmetric, source_layer=name)


def float_layer(weight: torch.Tensor, bias, per_token: bool, symmetric: bool) -> QDynamicLinear:
    """A float Linear's weight quantized as quantize_weights does (symmetric int8 per channel)."""
    amax = weight.abs().amax(dim=1)
    sw = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    w = torch.clamp(torch.round(weight / sw[:, None]), -127, 127).to(torch.int8)
    return make_layer(w, sw, bias, per_token, symmetric)


# -- quantize_rows ------------------------------------------------------------------------------

@given(matrices(), st.booleans())
def test_codes_and_zero_points_in_range(x, symmetric):
    q, s, zp = quantize_rows(x, symmetric)
    lo, hi = (-127, 127) if symmetric else (0, 255)
    assert q.dtype == torch.int64 and int(q.min()) >= lo and int(q.max()) <= hi
    assert s.dtype == torch.float32 and bool((s >= 0).all())
    assert int(zp.min()) >= 0 and int(zp.max()) <= (0 if symmetric else 255)


@given(matrices())
def test_symmetric_row_reaches_127_at_its_largest_magnitude(x):
    q, s, _ = quantize_rows(x, True)
    for r in range(x.shape[0]):
        a = x[r].abs().max()
        if a < TINY:
            assert q[r].tolist() == [0] * x.shape[1] and float(s[r]) == 0.0
            continue
        i = int(x[r].abs().argmax())
        assert int(q[r, i]) == (127 if x[r, i] > 0 else -127)
        assert float(s[r]) == f32(float(a) / 127.0)


@given(matrices(), st.booleans())
def test_dequantized_rows_within_a_step(x, symmetric):
    """|x − (q − zp)·s| ≤ s/2 symmetric; ≤ s asymmetric (the zero point's own rounding can push an
    end of the range half a step out, where it clamps), plus the rounding of inv and s (2^-21·|x|);
    ≤ 2^-120 on a row below the tiny range (all zeros)."""
    q, s, zp = quantize_rows(x, symmetric)
    x64, s64 = x.double(), s.double()[:, None]
    err = (x64 - (q - zp[:, None]).double() * s64).abs()
    bound = (0.5 if symmetric else 1.0) * s64 + 2.0**-21 * x64.abs()
    bound = torch.where(s64 == 0, torch.full_like(bound, TINY), bound)    # rows below the tiny range: zeros
    assert bool((err <= bound).all()), float((err - bound).max())


@given(matrices())
def test_asymmetric_zero_is_exact(x):
    """0 quantizes to the zero point, so it dequantizes to exactly 0 (padding, ReLU zeros)."""
    x = torch.cat([x, torch.zeros(x.shape[0], 1)], dim=1)
    q, s, zp = quantize_rows(x, False)
    assert torch.equal(q[:, -1], zp)
    assert torch.equal((q[:, -1] - zp).float() * s, torch.zeros(x.shape[0]))


@given(matrices(), st.booleans())
def test_rows_match_the_loop_form(x, symmetric):
    q, s, zp = quantize_rows(x, symmetric)
    for r, row in enumerate(x.tolist()):
        codes, scale, z = row_qparams(row, symmetric)
        assert q[r].tolist() == codes and float(s[r]) == scale and int(zp[r]) == z


def test_a_row_below_the_tiny_range_is_a_zero_row():
    # 127 / max|x| would overflow float32 below ~3.7e-37 (inv = inf, x·inv = ±inf or NaN, whose
    # conversion to an integer is undefined in C): the spec makes such rows zero rows
    from qcompiler.core.dynamic_ops import TINY_RANGE
    for symmetric in (True, False):
        q, s, zp = quantize_rows(torch.tensor([[1e-37, -5e-38, 0.0], [TINY_RANGE, 0.0, 0.0]]), symmetric)
        assert q[0].tolist() == [0, 0, 0] and float(s[0]) == 0.0 and int(zp[0]) == 0
        assert float(s[1]) > 0 and bool(torch.isfinite(s).all())       # at the threshold: a real scale


def test_an_asymmetric_row_spanning_more_than_float32_is_refused():
    with pytest.raises(ValueError, match="spans more than float32's range"):
        quantize_rows(torch.tensor([[3e38, -3e38]]), False)
    q, s, _ = quantize_rows(torch.tensor([[3e38, -3e38]]), True)     # symmetric: max|x| is finite
    assert q.tolist() == [[127, -127]] and bool(torch.isfinite(s).all())


# -- QDynamicLinear -----------------------------------------------------------------------------

@st.composite
def layers(draw, x_strategy=None):
    x = draw(x_strategy if x_strategy is not None else matrices())
    n, k = draw(st.integers(1, 5)), x.shape[1]
    w = torch.tensor(draw(st.lists(st.integers(-127, 127), min_size=n * k, max_size=n * k)),
                     dtype=torch.int8).reshape(n, k)
    sw = torch.tensor(draw(st.lists(st.floats(2.0**-13, 1.0, width=32), min_size=n, max_size=n)))
    bias = draw(st.none() | st.lists(st.floats(-10, 10, width=32), min_size=n, max_size=n).map(torch.tensor))
    return x, w, sw, bias, draw(st.booleans()), draw(st.booleans())


@given(layers())
def test_output_equals_the_loop_form_bit_for_bit(case):
    x, w, sw, bias, per_token, symmetric = case
    layer = make_layer(w, sw, bias, per_token, symmetric)
    assert torch.equal(layer(x), loop_linear(x, w, sw, bias, per_token, symmetric))


@given(layers(matrices(zero_row=True)))
def test_zero_row_gives_the_bias(case):
    x, w, sw, bias, _, symmetric = case
    y = make_layer(w, sw, bias, True, symmetric)(x)
    expect = torch.zeros(w.shape[0]) if bias is None else bias
    zero_rows = (x == 0).all(dim=1)
    assert bool(zero_rows.any())
    for r in torch.nonzero(zero_rows).flatten().tolist():
        assert torch.equal(y[r], expect)


@given(layers())
def test_per_token_is_per_tensor_row_by_row(case):
    """A per-token layer is a per-tensor layer run on each row alone; per tensor, one scale."""
    x, w, sw, bias, _, symmetric = case
    per_token = make_layer(w, sw, bias, True, symmetric)
    per_tensor = make_layer(w, sw, bias, False, symmetric)
    y = per_token(x)
    for r in range(x.shape[0]):
        assert torch.equal(y[r:r + 1], per_tensor(x[r:r + 1]))
    _, s, zp = per_tensor.quantize_input(x)
    assert bool((s == s[0]).all()) and bool((zp == zp[0]).all())
    _, s_whole, _ = quantize_rows(x.reshape(1, -1), symmetric)
    assert float(s[0]) == float(s_whole[0])


def test_leading_dims_are_tokens():
    torch.manual_seed(0)
    w, sw = torch.randint(-127, 128, (6, 8), dtype=torch.int8), torch.rand(6) / 100
    layer = make_layer(w, sw, torch.randn(6), True, True)
    x = torch.randn(2, 3, 8)
    assert torch.equal(layer(x), layer(x.reshape(6, 8)).reshape(2, 3, 6))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("per_token", [True, False])
def test_non_finite_input_refused_naming_the_layer(bad, per_token):
    layer = make_layer(torch.ones(2, 3, dtype=torch.int8), torch.ones(2), None, per_token, True,
                       name="encoder.layer.3.output.dense")
    x = torch.ones(2, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"encoder\.layer\.3\.output\.dense.*NaN or an infinity"):
        layer(x)


@pytest.mark.parametrize("symmetric, levels", [(True, 127), (False, 255)])
def test_accumulator_overflow_refused_for_huge_k(symmetric, levels):
    """K · max|q − zp| · 127 must fit int32: the deepest K is accepted (and its worst case is exact),
    one more is refused."""
    deepest = INT32_MAX // (levels * 127)
    with pytest.raises(AccumulatorOverflowError, match=r"fc.*K=%d" % (deepest + 1)):
        make_layer(torch.ones(1, deepest + 1, dtype=torch.int8), torch.ones(1), None, True, symmetric, name="fc")
    layer = make_layer(torch.full((1, deepest), 127, dtype=torch.int8), torch.ones(1), None, True, symmetric)
    # symmetric: every code 127; asymmetric: a row of 1s with one −1 puts 0 at code 127, 1 at 255
    x = torch.ones(1, deepest)
    if not symmetric:
        x[0, 0] = -1.0
    q, s, zp = layer.quantize_input(x)
    acc = int(((q - zp[:, None]) * 127).sum())
    assert acc <= INT32_MAX
    assert float(layer(x)[0, 0]) == f32(f32(float(acc)) * f32(float(s[0]) * 1.0))


def test_weights_must_be_narrow_int8():
    with pytest.raises(ValueError, match="int8 in \\[-127, 127\\]"):
        make_layer(torch.full((2, 2), -128, dtype=torch.int8), torch.ones(2), None, True, True)
    with pytest.raises(ValueError, match="int8"):
        make_layer(torch.ones(2, 2, dtype=torch.int32), torch.ones(2), None, True, True)


@settings(max_examples=30)
@given(st.integers(1, 6), st.integers(1, 64), st.integers(1, 8), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_error_bound_against_float_linear(m, k, n, per_token, symmetric, seed):
    """Against F.linear(x, W, b) in float64, per output element:

        |y − y_float| ≤ e_x · Σ_k |W_ck| + (s_w[c] / 2) · Σ_k (|x_k| + e_x) + (K + 4) · 2^-23 · (Σ_k |x_k W_ck| + |b_c|)

    with e_x the input's largest rounding error (s/2 symmetric, s asymmetric: test above) and
    s_w[c]/2 the weight's; the exact int32 accumulator adds nothing, the last term covers float32
    rounding (of x̂·ŵ's scale product, of the bias add, and of x's and W's own float32 values)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 10
    weight, bias = torch.randn(n, k, generator=g) * 0.1, torch.randn(n, generator=g)
    layer = float_layer(weight, bias, per_token, symmetric)
    y = layer(x).double()
    ref = F.linear(x.double(), weight.double(), bias.double())
    _, s, _ = layer.quantize_input(x)
    e_x = s.double()[:, None] * (0.5 if symmetric else 1.0) * (1 + 2.0**-20)
    x_abs = x.double().abs().sum(1, keepdim=True)
    w_abs = weight.double().abs().sum(1)[None, :]
    sw = layer.weight_scales.double()[None, :]
    bound = (e_x * w_abs + sw / 2 * (x_abs + k * e_x)
             + (k + 4) * 2.0**-23 * (x.double().abs() @ weight.double().abs().t() + bias.double().abs()))
    assert bool(((y - ref).abs() <= bound).all()), float(((y - ref).abs() - bound).max())


# -- QConfig: what each method accepts ------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: QConfig(method="int8"), "unknown method 'int8'"),
    # static
    (lambda: QConfig(activation=TensorSpec("uint8", False, granularity="per_token")), "per_token is for method='dynamic'"),
    (lambda: QConfig(weight=TensorSpec("int4", True, granularity="per_group", group_size=32)),
     "method='weight_only'"),
    (lambda: QConfig(weight=TensorSpec("nf4", True, granularity="per_channel")), "method='weight_only'"),
    # dynamic
    (lambda: QConfig(method="dynamic", activation=TensorSpec("uint8", True)), "int8 symmetric or uint8 asymmetric"),
    (lambda: QConfig(method="dynamic", activation=TensorSpec("int8", False)), "int8 symmetric or uint8 asymmetric"),
    (lambda: QConfig(method="dynamic", activation=TensorSpec("int8", True, granularity="per_channel")),
     "per_tensor or per_token"),
    (lambda: QConfig.dynamic().with_(weight=TensorSpec("int8", False, granularity="per_channel")),
     "symmetric int8 weights"),
    (lambda: QConfig.dynamic().with_(weight=TensorSpec("int4", True, granularity="per_channel")),
     "symmetric int8 weights"),
    (lambda: QConfig.dynamic().with_(weight=TensorSpec("int8", True, granularity="per_group", group_size=64)),
     "symmetric int8 weights"),
    # weight-only
    (lambda: QConfig(method="weight_only"), "weight-only weights are one of"),
    (lambda: QConfig.weight_only("int8").with_(weight=TensorSpec("int8", True)), "per_channel or per_group"),
    (lambda: QConfig.weight_only("nf4", 64, symmetric=False), "int4 only, not nf4"),
    (lambda: QConfig.weight_only("int8", 32, symmetric=False), "int4 only, not int8"),
    (lambda: QConfig.weight_only("int4", 32, compute="float16"), "compute must be one of"),
    (lambda: QConfig.weight_only("int4", 48), "group_size must be one of"),
    (lambda: TensorSpec("int4", True, granularity="per_group"), "goes with a group_size"),
    (lambda: TensorSpec("int4", True, granularity="per_channel", group_size=32), "goes with a group_size"),
    # half
    (lambda: QConfig.half("int8"), "half precision stores weights as one of"),
    (lambda: QConfig(method="half"), "half precision stores weights as one of"),
])
def test_qconfig_refuses_what_a_method_cannot_do(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_presets_are_valid_and_say_what_they_are():
    d = QConfig.dynamic(per_token=False, symmetric=False)
    assert (d.method, d.activation.dtype, d.activation.symmetric, d.activation.granularity) == \
        ("dynamic", "uint8", False, "per_tensor")
    assert QConfig.dynamic().activation.granularity == "per_token"
    assert QConfig.dynamic(smoothing=0.5).smoothing == 0.5
    w = QConfig.weight_only("nf4", 64)
    assert (w.method, w.weight.dtype, w.weight.group_size, w.weight.granularity) == ("weight_only", "nf4", 64, "per_group")
    assert QConfig.weight_only("int8", None).weight.granularity == "per_channel"
    assert QConfig.weight_only("int4", 32, compute="bfloat16").compute == "bfloat16"
    assert QConfig.half("float16").weight.dtype == "float16" and QConfig.half().weight.dtype == "bfloat16"
    for cfg in (d, w, QConfig.half()):
        assert not cfg.bias_correction
