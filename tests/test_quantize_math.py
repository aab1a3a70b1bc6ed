"""The numeric contract of DESIGN.md §3, checked against numpy and exact rational arithmetic."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcompiler.core.qtypes import INT4, INT8, INT8_NARROW, UINT8, QParams
from qcompiler.core.quantize import (dequantize, fixed_point_multiplier, qparams_from_range, quantize,
                                     requantize_fixed_point, requantize_fp32)

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
scales = st.floats(2.0**-20, 1024.0, allow_nan=False, width=32)


def numpy_quantize(x: np.ndarray, s: np.float32, zp: int, qmin: int, qmax: int) -> np.ndarray:
    q = np.rint(x.astype(np.float32) / np.float32(s)).astype(np.int64) + zp
    return np.clip(q, qmin, qmax)


@given(st.lists(finite, min_size=1, max_size=64), scales, st.integers(0, 255))
def test_quantize_matches_numpy_ieee_division(xs, s, zp):
    x = torch.tensor(xs, dtype=torch.float32)
    qp = QParams(torch.tensor(s), torch.tensor(zp), UINT8)
    expected = numpy_quantize(x.numpy(), np.float32(s), zp, 0, 255)
    assert np.array_equal(quantize(x, qp).numpy().astype(np.int64), expected)


def test_quantize_rounds_half_to_even():
    qp = QParams(torch.tensor(1.0), torch.tensor(0), INT8)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert quantize(x, qp).tolist() == [0, 2, 2, 0, -2, -2]


@given(st.floats(-100, 0, width=32), st.floats(0.5, 100, width=32),
       st.sampled_from([UINT8, INT8]), st.booleans(), st.lists(st.floats(0, 1), min_size=1, max_size=50))
def test_round_trip_error_at_most_half_a_step_inside_range(lo, hi, qtype, symmetric, fractions):
    qp = qparams_from_range(lo, hi, qtype, symmetric=symmetric)
    x = torch.tensor([lo + f * (hi - lo) for f in fractions], dtype=torch.float32)
    # the representable range [dq(qmin), dq(qmax)] covers [lo, hi] up to rounding of the scale
    x = x.clamp(float(dequantize(torch.tensor(qtype.qmin), qp)), float(dequantize(torch.tensor(qtype.qmax), qp)))
    err = (dequantize(quantize(x, qp), qp) - x).abs()
    step = float(qp.scale)
    assert float(err.max()) <= step / 2 * (1 + 1e-5) + 1e-7 * float(x.abs().max())


def test_zero_is_exactly_representable():
    for lo, hi in [(-1.3, 2.7), (0.1, 5.0), (-3.0, -0.5)]:
        qp = qparams_from_range(lo, hi, UINT8, symmetric=False)
        assert float(dequantize(quantize(torch.zeros(1), qp), qp)) == 0.0


def test_per_channel_symmetric_weights_use_narrow_range():
    w = torch.randn(8, 16)
    qp = qparams_from_range(w.amin(1), w.amax(1), INT8_NARROW, symmetric=True, axis=0)
    q = quantize(w, qp)
    assert q.dtype == torch.int8 and int(q.min()) >= -127 and int(q.max()) <= 127
    assert torch.all(qp.zero_point == 0) and qp.scale.shape == (8,)
    assert (q.abs().amax(1) == 127).all()        # every channel uses its full range
    q4 = quantize(w, qparams_from_range(w.amin(1), w.amax(1), INT4, symmetric=True, axis=0))
    assert int(q4.abs().max()) == 7


def exact_fp32_requant(acc: int, m: np.float32, zp: int, qmin: int, qmax: int) -> int:
    """float32(acc) × float32(m) rounded once to float32, then half-even: in exact rationals."""
    prod = Fraction(float(np.float32(acc))) * Fraction(float(m))
    y = Fraction(float(np.float32(float(prod))))           # IEEE: the exact product rounded to f32
    # np.float32(float(prod)) double-rounds via float64; check it equals the direct f32 rounding
    assert np.float32(float(prod)) == np.float32(acc) * np.float32(m)
    fl = y.numerator // y.denominator
    rem = y - fl
    r = fl + (1 if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2) else 0)
    return min(max(r + zp, qmin), qmax)


@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=32),
       st.floats(2.0**-20, 4.0, width=32), st.integers(-128, 255))
def test_fp32_requant_matches_exact_rational_arithmetic(accs, m, zp):
    acc = torch.tensor(accs, dtype=torch.int64)
    got = requantize_fp32(acc, torch.tensor(m, dtype=torch.float32), zp, -128, 255)
    assert got.tolist() == [exact_fp32_requant(a, np.float32(m), zp, -128, 255) for a in accs]


@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=32),
       st.floats(1e-9, 1000.0), st.integers(-128, 255))
def test_fixed_point_requant_is_a_single_rounding(accs, real, zp):
    m0, t = fixed_point_multiplier(torch.tensor([real], dtype=torch.float64))
    got = requantize_fixed_point(torch.tensor(accs), m0, t, zp, -(2**62), 2**62)
    for a, g in zip(accs, got.tolist()):
        # exact: floor(a·M0 / 2^t + 1/2) — round half up of the exact rational product
        exact = Fraction(a * int(m0[0]), 2 ** int(t[0])) + Fraction(1, 2)
        assert g == exact.numerator // exact.denominator + zp
    # and M0·2^-t approximates the real multiplier to 2^-31 relative
    assert abs(float(m0[0]) * 2.0 ** -float(t[0]) / real - 1) <= 2.0 ** -30


def test_fixed_point_multiplier_normalized():
    m0, t = fixed_point_multiplier(torch.tensor([0.5, 0.25, 0.999999, 1e-4, 3.0]))
    assert ((m0 >= 2**30) & (m0 < 2**31)).all()
    with pytest.raises(ValueError):
        fixed_point_multiplier(torch.tensor([0.0]))
