"""Range selection: better SQNR with outliers, no harm without, and the range contract."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from qcompiler.core.observers import (
    CalibrationError, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
)
from qcompiler.core.qconfig import RANGE_METHODS
from qcompiler.core.qtypes import INT4, INT8, INT8_NARROW, UINT8
from qcompiler.core.quantize import fake_quantize, qparams_from_range
from qcompiler.core.range_search import (
    choose_range, entropy_range, expected_sq_error, mse_range, percentile_range,
)

SEARCHED = ("percentile", "mse", "entropy")
# (qtype, symmetric): the activation default, the weight default, int8 activations
QUANTIZERS = [(UINT8, False), (INT8_NARROW, True), (INT8, False)]


def sqnr(x, lo, hi, qtype, symmetric):
    """10·log10(Σx² / Σ(x − fq(x))²) for the quantizer of the range [lo, hi]."""
    qp = qparams_from_range(lo, hi, qtype, symmetric=symmetric)
    err = (x - fake_quantize(x, qp)).double()
    return 10 * math.log10(float((x.double() ** 2).sum() / (err ** 2).sum()))


def histogram_of(x, chunks=1):
    o = HistogramObserver()
    o.label = "act"
    for c in torch.chunk(x, chunks):
        o.update(c)
    return o


def normal(n, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(n).astype(np.float32))


@pytest.fixture(scope="module")
def outlier_data():
    """2^20 standard normal values and one outlier at each of ±50σ.

    Outliers must be rare for clipping to pay off in whole-tensor SQNR: clipping k outliers
    at 50σ costs ≈ k·46² while minmax's step costs N·(100/255)²/12, so clipping wins only
    while k/N ≲ 6·10⁻⁶ (at 0.1% outliers the MSE-optimal range is minmax itself).
    """
    x = normal(1 << 20)
    x[1000], x[2000] = 50.0, -50.0
    return x, histogram_of(x, chunks=4)


@pytest.mark.parametrize("qtype,symmetric", QUANTIZERS)
@pytest.mark.parametrize("method", SEARCHED)
def test_outliers_are_clipped_for_a_clear_gain(outlier_data, method, qtype, symmetric):
    x, o = outlier_data
    base = sqnr(x, *choose_range(o, "minmax", qtype, symmetric=symmetric), qtype, symmetric)
    lo, hi = choose_range(o, method, qtype, symmetric=symmetric)
    assert float(hi) < 50.0 and float(lo) > -50.0
    assert sqnr(x, lo, hi, qtype, symmetric) >= base + 3.0


@pytest.mark.parametrize("qtype,symmetric", QUANTIZERS)
def test_uniform_data_keeps_minmax_quality(qtype, symmetric):
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1.0, 3.0, 1 << 16).astype(np.float32))
    o = histogram_of(x)
    base = sqnr(x, *choose_range(o, "minmax", qtype, symmetric=symmetric), qtype, symmetric)
    for method in SEARCHED:
        got = sqnr(x, *choose_range(o, method, qtype, symmetric=symmetric), qtype, symmetric)
        assert got >= base - 0.5, method
    got = sqnr(x, *choose_range(o, "mse", qtype, symmetric=symmetric), qtype, symmetric)
    assert abs(got - base) <= 0.5


@pytest.mark.parametrize("outlier_fraction", [0.0, 1e-3, 1e-2])
def test_mse_is_never_worse_than_minmax(outlier_fraction):
    x = normal(1 << 16, seed=2)
    k = int(outlier_fraction * len(x))
    x[:k] = 50.0
    o = histogram_of(x)
    for qtype, symmetric in QUANTIZERS + [(INT4, True)]:
        base = sqnr(x, *choose_range(o, "minmax", qtype, symmetric=symmetric), qtype, symmetric)
        got = sqnr(x, *choose_range(o, "mse", qtype, symmetric=symmetric), qtype, symmetric)
        assert got >= base - 0.05


@pytest.mark.parametrize("qtype,symmetric", QUANTIZERS)
@pytest.mark.parametrize("method", RANGE_METHODS)
def test_relu_outputs_keep_lo_at_zero(method, qtype, symmetric):
    x = torch.relu(normal(1 << 16, seed=3))
    x[7] = 40.0                                   # an outlier, so searches do clip hi
    lo, hi = choose_range(histogram_of(x), method, qtype, symmetric=symmetric)
    assert float(lo) == 0.0 and 0.0 < float(hi) <= 40.0
    lo, hi = choose_range(histogram_of(-x), method, qtype, symmetric=symmetric)
    assert float(hi) == 0.0 and -40.0 <= float(lo) < 0.0


@pytest.mark.parametrize("offset", [1.0, 1e6])
def test_positive_data_keeps_its_minimum(offset):
    """Data far from 0 (a fine grid, 2^20 |x| bins from 0 at offset 1e6) stays cheap."""
    x = offset + offset * torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 1e-3
    o = histogram_of(x)
    for method in RANGE_METHODS:
        for qtype, symmetric in QUANTIZERS:
            lo, hi = choose_range(o, method, qtype, symmetric=symmetric)
            assert float(lo) == float(x.min()) and float(hi) <= float(x.max())


@settings(deadline=None)
@given(data=arrays(np.float32, st.integers(1, 400),
                   elements=st.floats(-1e4, 1e4, width=32)),
       qi=st.integers(0, len(QUANTIZERS)), method=st.sampled_from(RANGE_METHODS),
       p=st.floats(90.0, 100.0))
def test_range_lies_inside_the_data(data, qi, method, p):
    qtype, symmetric = (QUANTIZERS + [(INT4, True)])[qi]
    o = histogram_of(torch.from_numpy(data))
    lo, hi = choose_range(o, method, qtype, symmetric=symmetric, percentile=p)
    assert lo.dtype == hi.dtype == torch.float32 and lo.dim() == hi.dim() == 0
    assert float(data.min()) <= float(lo) <= float(hi) <= float(data.max())
    if data.min() >= 0:
        assert float(lo) == float(data.min())
    if data.max() <= 0:
        assert float(hi) == float(data.max())


@settings(deadline=None)
@given(data=arrays(np.float32, st.integers(2, 400), elements=st.floats(-100, 100, width=32)),
       qi=st.integers(0, len(QUANTIZERS)))
def test_mse_estimate_never_exceeds_minmax_estimate(data, qi):
    qtype, symmetric = (QUANTIZERS + [(INT4, True)])[qi]
    h = histogram_of(torch.from_numpy(data)).histogram()
    lo, hi = mse_range(h, qtype, symmetric=symmetric)
    est = expected_sq_error(h, [lo, h.lo], [hi, h.hi], qtype, symmetric=symmetric)
    assert est[1] >= 0 and est[0] <= est[1] * (1 + 1e-6)


@pytest.mark.parametrize("kind", ["normal", "relu", "uniform", "relu6"])
@pytest.mark.parametrize("qtype,symmetric", QUANTIZERS + [(INT4, True)])
def test_error_model_matches_fake_quantize(kind, qtype, symmetric):
    """The histogram estimate agrees with the actual error, even for steps below a bin."""
    x = normal(1 << 14, seed=4)
    if kind == "relu":
        x = torch.relu(x)
    elif kind == "uniform":
        x = torch.rand(1 << 14, generator=torch.Generator().manual_seed(5)) * 3 - 1
    elif kind == "relu6":                          # point masses at 0 and at the max (a bin edge)
        x = torch.clamp(3 * x, 0, 6)
    h = histogram_of(x).histogram()
    fractions = np.array([1.0, 0.5, 0.1, 0.02, 0.005])
    est = expected_sq_error(h, h.lo * fractions, h.hi * fractions, qtype, symmetric=symmetric)
    for f, e in zip(fractions, est):
        qp = qparams_from_range(h.lo * f, h.hi * f, qtype, symmetric=symmetric)
        actual = float(((x - fake_quantize(x, qp)).double() ** 2).mean())
        assert abs(e - actual) <= 0.02 * actual, (f, e, actual)


def test_percentile_values():
    x = torch.arange(10_000, dtype=torch.float32) - 5000.0     # uniform on [-5000, 4999]
    h = histogram_of(x).histogram()
    lo, hi = percentile_range(h, 99.0, symmetric=False)
    assert abs(hi - 4899.0) <= 2 * h.bin_width and abs(lo + 4900.0) <= 2 * h.bin_width
    lo, hi = percentile_range(h, 99.0, symmetric=True)
    assert hi == -lo and abs(hi - 4950.0) <= 2 * h.bin_width
    assert percentile_range(h, 100.0, symmetric=False) == (h.lo, h.hi)
    with pytest.raises(ValueError, match="percentile"):
        percentile_range(h, 30.0, symmetric=False)


def test_entropy_threshold_on_a_gaussian():
    h = histogram_of(normal(1 << 18, seed=6)).histogram()
    lo, hi = entropy_range(h, INT8, symmetric=True)
    assert hi == -lo and 2.5 < hi < h.hi


@pytest.mark.parametrize("value", [0.0, 2.5, -1.0])
@pytest.mark.parametrize("method", RANGE_METHODS)
def test_constant_data(method, value):
    o = histogram_of(torch.full((100,), value))
    for qtype, symmetric in QUANTIZERS:
        lo, hi = choose_range(o, method, qtype, symmetric=symmetric)
        assert float(lo) == float(hi) == value


def test_result_does_not_depend_on_batching():
    x = torch.cat([normal(50_000, seed=7), torch.tensor([30.0, -12.0])])
    a = histogram_of(x, chunks=1)
    b = histogram_of(x.flip(0), chunks=7)
    for method in RANGE_METHODS:
        for qtype, symmetric in QUANTIZERS:
            ra = choose_range(a, method, qtype, symmetric=symmetric)
            rb = choose_range(b, method, qtype, symmetric=symmetric)
            assert torch.equal(ra[0], rb[0]) and torch.equal(ra[1], rb[1])


def test_minmax_works_on_every_observer():
    w = torch.randn(4, 3, 3)
    per_channel = MinMaxObserver(axis=0)
    per_channel.update(w)
    lo, hi = choose_range(per_channel, "minmax", INT8_NARROW, symmetric=True)
    assert lo.shape == (4,) and torch.equal(lo, w.amin(dim=(1, 2)))
    assert torch.equal(hi, w.amax(dim=(1, 2)))
    moving = MovingAverageMinMaxObserver()
    moving.update(w)
    assert torch.equal(choose_range(moving, "minmax", UINT8, symmetric=False)[0], w.min())


@pytest.mark.parametrize("method", SEARCHED)
def test_searches_need_a_histogram(method):
    o = MinMaxObserver()
    o.label = "block2.relu"
    o.update(torch.randn(10))
    with pytest.raises(ValueError, match=r"block2\.relu.*observer='histogram'"):
        choose_range(o, method, UINT8, symmetric=False)


def test_bad_method_and_missing_data():
    o = HistogramObserver()
    o.label = "stem"
    with pytest.raises(ValueError, match="unknown range method"):
        choose_range(o, "kl", UINT8, symmetric=False)
    for method in RANGE_METHODS:
        with pytest.raises(CalibrationError, match="stem"):
            choose_range(o, method, UINT8, symmetric=False)


def test_clip_penalty_widens_the_mse_range_monotonically():
    from qcompiler.core.observers import HistogramObserver
    from qcompiler.core.qtypes import UINT8
    from qcompiler.core.range_search import choose_range

    g = torch.Generator().manual_seed(3)
    obs = HistogramObserver()
    obs(torch.relu(torch.randn(200_000, generator=g)) ** 1.5)      # a long right tail
    his = [float(choose_range(obs, "mse", UINT8, symmetric=False, clip_penalty=p)[1])
           for p in (1.0, 4.0, 64.0)]
    assert his[0] < his[1] <= his[2] <= float(obs.min_max()[1])
    plain = choose_range(obs, "mse", UINT8, symmetric=False)
    assert float(plain[1]) == his[0]                                # default is plain MSE
