"""Observers: exact mergeability, exact histograms, and clear calibration errors."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.fx
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from qcompiler.core import observers as obs_mod
from qcompiler.core.observers import (
    CalibrationError, Histogram, HistogramObserver, MinMaxObserver,
    MovingAverageMinMaxObserver, make_observer,
)
from qcompiler.core.qconfig import OBSERVERS

FINITE32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# a mix of everyday magnitudes and the full float32 range (huge values, subnormals, -0.0)
VALUES = st.one_of(st.floats(-8, 8, width=32), FINITE32)


@st.composite
def chunked(draw, channels=None):
    """(data, chunks, order, split): data cut into chunks (some may be empty) along the last
    axis, a permutation of the chunks, and how many chunks go to the first observer."""
    n = draw(st.integers(1, 120))
    shape = (n,) if channels is None else (draw(st.integers(1, channels)), n)
    data = draw(arrays(np.float32, shape, elements=VALUES))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    chunks = [torch.from_numpy(c.copy()) for c in np.split(data, cuts, axis=-1)]
    order = draw(st.permutations(range(len(chunks))))
    split = draw(st.integers(0, len(chunks)))
    return torch.from_numpy(data), chunks, order, split


def observed(factory, chunks):
    o = factory()
    for c in chunks:
        o.update(c)
    return o


def snapshot(o):
    """Everything an exact merge must reproduce."""
    lo, hi = o.min_max()
    snap = [lo.tolist(), hi.tolist(), o.num_elements]
    if isinstance(o, HistogramObserver):
        h = o.histogram()
        snap += [h.counts.tolist(), h.bin_width, h.first_bin, h.lo, h.hi, h.zeros]
    return snap


def check_exact_merge(factory, case):
    data, chunks, order, split = case
    reference = snapshot(observed(factory, [data]))
    a = observed(factory, chunks[:split])
    b = observed(factory, chunks[split:])
    assert snapshot(copy.deepcopy(a).merge(b)) == reference
    assert snapshot(b.merge(a)) == reference
    assert snapshot(observed(factory, [chunks[i] for i in order])) == reference


FACTORIES = {
    "minmax": MinMaxObserver,
    "histogram": HistogramObserver,
    "histogram_8": lambda: HistogramObserver(max_bins=8),      # coarsens on almost every batch
    "histogram_37": lambda: HistogramObserver(max_bins=37),    # a max_bins that is no power of 2
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@settings(deadline=None)
@given(case=chunked())
def test_merge_is_exact_and_order_independent(kind, case):
    check_exact_merge(FACTORIES[kind], case)


@settings(deadline=None)
@given(case=chunked(channels=4))
def test_per_channel_minmax_merge_is_exact(case):
    check_exact_merge(lambda: MinMaxObserver(axis=0), case)


@pytest.mark.parametrize("max_bins", [2, 8, 2048])
@settings(deadline=None)
@given(data=arrays(np.float32, st.integers(1, 300), elements=VALUES))
def test_histogram_matches_brute_force(max_bins, data):
    o = HistogramObserver(max_bins=max_bins)
    o.update(torch.from_numpy(data))
    h = o.histogram()
    w = h.bin_width
    assert h.lo == float(data.min()) and h.hi == float(data.max())
    assert h.total == data.size and h.zeros == int((data == 0).sum())
    idx = np.floor(data.astype(np.float64) / w).astype(np.int64)     # exact: w is 2^e
    assert h.first_bin == idx.min()
    assert h.counts.tolist() == np.bincount(idx - idx.min()).tolist()
    assert len(h.counts) <= max_bins
    # w is a normal float32 power of two, and the finest allowed
    assert w == 2.0 ** h.exponent and w >= 2.0 ** -60 and w >= torch.finfo(torch.float32).tiny
    half = h.exponent - 1
    amax = max(abs(h.lo), abs(h.hi))
    at_floor = half < -60 or (amax > 0 and half < math.frexp(amax)[1] - 1 - 40)
    fits_finer = (math.floor(math.ldexp(h.hi, -half)) - math.floor(math.ldexp(h.lo, -half))
                  + 1 <= max_bins)
    assert at_floor or not fits_finer


def test_histogram_edges_centers_and_bounds():
    o = HistogramObserver(max_bins=16)
    o.update(torch.tensor([-1.0, 0.0, 0.0, 0.3, 2.5]))
    h = o.histogram()
    assert h.bin_width == 0.25 and h.first_bin == -4 and h.total == 5 and h.zeros == 2
    assert h.counts.tolist() == [1, 0, 0, 0, 2, 1] + [0] * 8 + [1]     # bins -4 .. 10
    np.testing.assert_array_equal(h.edges(), np.arange(-4, 12) * 0.25)
    np.testing.assert_array_equal(h.centers(), (np.arange(-4, 11) + 0.5) * 0.25)
    a, b = h.bounds()
    assert a[0] == -1.0 and b[-1] == 2.5 and (a <= b).all()
    with pytest.raises(ValueError):           # read-only: snapshots cannot be altered
        h.counts[0] = 7
    assert h == o.histogram() and h != Histogram(h.counts, 0.5, -2, h.lo, h.hi, h.zeros)


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -3.5, 1e-30, 3e38, 1e-45])
def test_histogram_of_a_constant(value):
    o = HistogramObserver()
    o.update(torch.full((10,), value))
    h = o.histogram()
    assert h.counts.tolist() == [10] and h.lo == h.hi == np.float32(value)
    assert 2.0 ** -60 <= h.bin_width < math.inf
    assert h.first_bin == math.floor(float(np.float32(value)) / h.bin_width)


def test_histogram_constant_then_wide():
    o = HistogramObserver(max_bins=64)
    o.update(torch.zeros(100))
    o.update(torch.tensor([1000.0]))
    h = o.histogram()
    assert h.first_bin == 0 and h.counts[0] == 100 and h.counts[-1] == 1 and h.total == 101


def test_bin_counting_paths_agree():
    x = torch.cat([torch.randn(5000) * 100, torch.tensor([-1e-45, 1e-45, -0.0, 0.0, -4.0, 4.0])])
    for e in (-10, 0, 3):
        first = math.floor(math.ldexp(float(x.min()), -e))
        n = math.floor(math.ldexp(float(x.max()), -e)) - first + 1
        np.testing.assert_array_equal(obs_mod._bin_counts_numpy(x, e, first, n),
                                      obs_mod._bin_counts_torch(x, e, first, n))
    # a tiny negative value belongs to bin -1 however wide the bins are
    o = HistogramObserver(max_bins=4)
    o.update(torch.tensor([-1e-45, 100.0]))
    assert o.histogram().first_bin == -1


# ---------------------------------------------------------------------------------------
# Errors a user will meet
# ---------------------------------------------------------------------------------------

ALL_OBSERVERS = [MinMaxObserver, lambda: MinMaxObserver(axis=0), MovingAverageMinMaxObserver,
                 HistogramObserver]


@pytest.mark.parametrize("factory", ALL_OBSERVERS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_data_names_the_layer(factory, bad):
    o = factory()
    o.label = "layer3.conv2"
    o.update(torch.ones(2, 3))
    before = o.min_max()
    x = torch.ones(2, 3)
    x[1, 2] = bad
    with pytest.raises(CalibrationError, match=r"layer3\.conv2") as info:
        o.update(x)
    assert "NaN or Inf" in str(info.value) and "check" in str(info.value)
    assert isinstance(info.value, ValueError)
    after = o.min_max()                        # the bad batch left no trace
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert o.num_batches == 1


def test_float64_beyond_float32_range_is_rejected():
    o = make_observer("histogram", label="fc")
    with pytest.raises(CalibrationError, match="fc"):
        o.update(torch.tensor([1e39], dtype=torch.float64))


@pytest.mark.parametrize("factory", ALL_OBSERVERS)
def test_no_data_names_the_layer(factory):
    o = factory()
    o.label = "head.fc"
    o.update(torch.empty(0))
    o.update(torch.empty(3, 0))
    assert not o.has_data and o.num_batches == 0 and o.num_elements == 0
    with pytest.raises(CalibrationError, match=r"head\.fc.*no calibration data reached this layer"):
        o.min_max()
    if isinstance(o, HistogramObserver):
        with pytest.raises(CalibrationError, match=r"head\.fc"):
            o.histogram()


def test_empty_updates_do_not_disturb_data():
    o = HistogramObserver()
    o.update(torch.tensor([1.0, 2.0]))
    ref = snapshot(o)
    o.update(torch.empty(0))
    assert snapshot(o) == ref and o.num_batches == 1


def test_merge_mismatches():
    with pytest.raises(TypeError):
        MinMaxObserver().merge(HistogramObserver())
    with pytest.raises(ValueError, match="axis"):
        MinMaxObserver(axis=0).merge(MinMaxObserver())
    a, b = MinMaxObserver(axis=0), MinMaxObserver(axis=0)
    a.update(torch.ones(3, 2))
    b.update(torch.ones(4, 2))
    with pytest.raises(ValueError, match="channels"):
        a.merge(b)
    with pytest.raises(ValueError, match="channels"):
        a.update(torch.ones(4, 2))
    h1, h2 = HistogramObserver(max_bins=16), HistogramObserver(max_bins=32)
    h1.update(torch.ones(2))
    h2.update(torch.ones(2))
    with pytest.raises(ValueError, match="max_bins"):
        h1.merge(h2)


def test_merge_with_empty_observers():
    a, b = HistogramObserver(), HistogramObserver()
    b.update(torch.arange(10.0))
    ref = snapshot(b)
    assert snapshot(a.merge(b)) == ref                   # empty <- data
    assert snapshot(b.merge(HistogramObserver())) == ref  # data <- empty
    assert not HistogramObserver().merge(HistogramObserver()).has_data


# ---------------------------------------------------------------------------------------
# Min/max details
# ---------------------------------------------------------------------------------------

def test_minmax_per_tensor_and_per_channel():
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -0.125]])
    o = MinMaxObserver()
    o.update(x)
    lo, hi = o.min_max()
    assert lo.dim() == 0 and lo.dtype == torch.float32 and (float(lo), float(hi)) == (-2.0, 3.0)
    for axis, exp_lo, exp_hi in [(0, [-2.0, -0.125], [3.0, 0.5]),
                                 (1, [0.5, -2.0, -0.125], [1.0, 0.25, 3.0]),
                                 (-1, [0.5, -2.0, -0.125], [1.0, 0.25, 3.0])]:
        o = MinMaxObserver(axis=axis)
        o.update(x)
        lo, hi = o.min_max()
        assert lo.tolist() == exp_lo and hi.tolist() == exp_hi


def test_min_max_returns_copies():
    o = MinMaxObserver()
    o.update(torch.tensor([1.0, 2.0]))
    lo, _ = o.min_max()
    lo.fill_(-100)
    assert float(o.min_max()[0]) == 1.0


def test_moving_average_semantics_and_approximate_merge():
    o = MovingAverageMinMaxObserver(averaging_constant=0.5)
    o.update(torch.tensor([-2.0, 2.0]))
    o.update(torch.tensor([0.0, 4.0]))
    lo, hi = o.min_max()
    assert (float(lo), float(hi)) == (-1.0, 3.0)
    other = MovingAverageMinMaxObserver(averaging_constant=0.5)
    other.update(torch.tensor([-4.0, 6.0]))
    o.merge(other)                       # weighted by batches: (2·(-1) + 1·(-4)) / 3
    lo, hi = o.min_max()
    assert (float(lo), float(hi)) == (-2.0, 4.0) and o.num_batches == 3
    with pytest.raises(ValueError):
        o.merge(MovingAverageMinMaxObserver(averaging_constant=0.1))
    assert "APPROXIMATE" in MovingAverageMinMaxObserver.__doc__


def test_reset():
    o = HistogramObserver()
    o.update(torch.arange(5.0))
    o.reset()
    assert not o.has_data and o.num_batches == 0
    o.update(torch.tensor([3.0]))
    assert o.histogram().counts.tolist() == [1]


# ---------------------------------------------------------------------------------------
# Factory and graph use
# ---------------------------------------------------------------------------------------

def test_make_observer():
    assert OBSERVERS == ("minmax", "moving_average", "histogram")
    types = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
             "histogram": HistogramObserver}
    for kind in OBSERVERS:
        o = make_observer(kind, label="x")
        assert type(o) is types[kind] and o.label == "x" and o.axis is None
    assert make_observer("minmax", axis=0).axis == 0
    assert make_observer("moving_average", axis=1).axis == 1
    with pytest.raises(ValueError, match="per tensor"):
        make_observer("histogram", axis=0)
    with pytest.raises(ValueError, match="unknown observer"):
        make_observer("kl")


def test_observer_as_fx_call_module_node():
    o = make_observer("histogram", label="relu1")
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_module("obs", (x,)))
    gm = torch.fx.GraphModule({"obs": o}, graph)
    inp = torch.randn(4, 3, requires_grad=True)
    out = gm(inp)
    assert out is inp
    assert gm.obs.num_elements == 12 and gm.obs.histogram().total == 12
    clone = copy.deepcopy(gm)
    assert clone.obs.histogram() == gm.obs.histogram() and clone.obs.label == "relu1"
    assert "relu1" in repr(gm.obs)
