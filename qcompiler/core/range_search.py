"""Choosing the clipping range [lo, hi] of a tensor from its observer.

``choose_range`` is the entry point; ``qparams_from_range`` (quantize.py) turns its answer
into a scale and zero point (and widens it to include 0, so no method here needs to).

Every method returns a range inside [data min, data max], and never moves the zero side of
a one-sided distribution: after a ReLU, lo stays the data minimum (0). All computations are
deterministic float64 numpy on the histogram; ties go to the first (smallest) candidate.

Histogram model: the density is taken as uniform inside each bin, with the bins clipped to
the exact data range (the first bin starts at the data min, the last ends at the data max;
a last bin that is a single point, when the max lies on a bin edge, is a point mass).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from .observers import Histogram, HistogramObserver, Observer
from .qconfig import RANGE_METHODS
from .qtypes import QType
from .quantize import qparams_from_range, quantize

__all__ = ["choose_range", "percentile_range", "mse_range", "entropy_range",
           "expected_sq_error"]

_COARSE_STEPS = 128     # MSE search: fractions k/128 of the full range ...
_FINE_STEPS = 64        # ... then 64 steps between the best one's neighbours
_KL_EPS = 1e-12         # probability given to Q where P has mass and Q has none
_KL_MAX_BINS = 2048     # |x| bins from 0 for the KL search (data far from 0 is coarsened)


def choose_range(observer: Observer, method: str, qtype: QType, *, symmetric: bool,
                 percentile: float = 99.99, clip_penalty: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping range (lo, hi) as float32 tensors (per channel if the observer is).

    method: ``"minmax"`` (any observer), or ``"percentile"``, ``"mse"``, ``"entropy"``
    (which need a HistogramObserver). ``symmetric`` says how the range will be quantized
    (as qparams_from_range will be called), so the searches optimize that quantizer.
    ``clip_penalty`` weighs clipping error against rounding error in the MSE search.
    """
    if method not in RANGE_METHODS:
        raise ValueError(f"unknown range method {method!r}; choose one of {RANGE_METHODS}")
    if method == "minmax":
        return observer.min_max()
    if not isinstance(observer, HistogramObserver):
        name = repr(observer.label) if observer.label else "(unlabelled)"
        raise ValueError(f"range method {method!r} for layer {name} needs a histogram; "
                         f"got a {type(observer).__name__}: use observer='histogram'")
    hist = observer.histogram()
    if method == "percentile":
        lo, hi = percentile_range(hist, percentile, symmetric=symmetric)
    elif method == "mse":
        lo, hi = mse_range(hist, qtype, symmetric=symmetric, clip_penalty=clip_penalty)
    else:
        lo, hi = entropy_range(hist, qtype, symmetric=symmetric)
    # float32 rounding of a value inside [lo, hi] stays inside: lo and hi are float32
    lo, hi = min(max(lo, hist.lo), hist.hi), max(min(hi, hist.hi), hist.lo)
    return torch.tensor(lo, dtype=torch.float32), torch.tensor(max(lo, hi), dtype=torch.float32)


# ---------------------------------------------------------------------------------------
# Histogram views
# ---------------------------------------------------------------------------------------

def _bounds(edges: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    return np.clip(edges[:-1], lo, hi), np.clip(edges[1:], lo, hi)


def _magnitude(hist: Histogram) -> Histogram:
    """The histogram of |x| on the same grid.

    A negative bin k, [k·w, (k+1)·w), holds |x| in ((-k-1)·w, -k·w], i.e. bin -k-1: exact
    except for values on a bin edge, which move one bin. Its lo/hi are min|x| (0 when the
    data straddles 0) and max|x|.
    """
    k = hist.first_bin + np.arange(len(hist.counts), dtype=np.int64)
    j = np.where(k >= 0, k, -k - 1)
    first = int(j.min())
    counts = np.zeros(int(j.max()) - first + 1, dtype=np.int64)
    np.add.at(counts, j - first, hist.counts)
    amax = max(-hist.lo, hist.hi)
    amin = 0.0 if hist.lo <= 0 <= hist.hi else min(abs(hist.lo), abs(hist.hi))
    return Histogram(counts, hist.bin_width, first, amin, amax, hist.zeros)


def _from_zero(hist: Histogram, max_bins: int) -> tuple[np.ndarray, float]:
    """(counts, w): a histogram of non-negative data re-expressed on bins 0, 1, … (width w),
    coarsened by exact pair merges until it has at most ``max_bins`` bins."""
    shift = 0
    last = hist.first_bin + len(hist.counts) - 1
    while (last >> shift) + 1 > max_bins:
        shift += 1
    idx = (hist.first_bin + np.arange(len(hist.counts), dtype=np.int64)) >> shift
    counts = np.zeros(int(idx[-1]) + 1, dtype=np.int64)
    np.add.at(counts, idx, hist.counts)
    return counts, hist.bin_width * 2.0 ** shift


# ---------------------------------------------------------------------------------------
# Percentile
# ---------------------------------------------------------------------------------------

def _quantile(counts: np.ndarray, a: np.ndarray, b: np.ndarray, q: float) -> float:
    """The value below which a fraction q of the mass lies (linear inside a bin)."""
    cum = np.cumsum(counts)
    r = q * float(cum[-1])
    k = min(int(np.searchsorted(cum, r, side="left")), len(counts) - 1)
    before = float(cum[k - 1]) if k > 0 else 0.0
    frac = (r - before) / counts[k] if counts[k] > 0 else 0.0
    return float(a[k] + min(max(frac, 0.0), 1.0) * (b[k] - a[k]))


def percentile_range(hist: Histogram, percentile: float, *, symmetric: bool) -> tuple[float, float]:
    """lo/hi at the (100-p)-th and p-th percentiles of x (symmetric: ±the p-th of |x|).

    The zero side of a one-sided distribution keeps the data min (or max).
    """
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    if hist.lo == hist.hi:
        return hist.lo, hist.hi
    q = percentile / 100.0
    if symmetric:
        mag = _magnitude(hist)
        t = _quantile(mag.counts, *_bounds(mag.edges(), mag.lo, mag.hi), q)
        return max(-t, hist.lo), min(t, hist.hi)
    a, b = _bounds(hist.edges(), hist.lo, hist.hi)
    lo = _quantile(hist.counts, a, b, 1.0 - q) if hist.lo < 0 else hist.lo
    hi = _quantile(hist.counts, a, b, q) if hist.hi > 0 else hist.hi
    return lo, hi


# ---------------------------------------------------------------------------------------
# MSE
# ---------------------------------------------------------------------------------------

def _cube(x: np.ndarray) -> np.ndarray:
    return x * x * x                        # much faster than x ** 3 in numpy


def _sawtooth_integral(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """∫ from 0 to x of r(t)² dt, where r(t) = t - s·round(t/s) is the rounding error.

    With x = n·s + f, |f| ≤ s/2: n whole periods give s³/12 each, the rest f³/3.
    Anchored at 0 so that it is small (and exact) for data near 0, whatever s.
    """
    n = np.rint(x / s)
    f = x - n * s
    return n * (_cube(s) / 12.0) + _cube(f) / 3.0


def _error_antiderivative(x: np.ndarray, s: np.ndarray, low: np.ndarray,
                          high: np.ndarray, clip_penalty: float = 1.0) -> np.ndarray:
    """F(x) with F' = (x - fq(x))², one row per candidate quantizer.

    fq rounds to the grid s·ℤ (a zero point is an integer, so the levels stay multiples of
    s) and clamps to [low, high], its lowest and highest levels: the error is the sawtooth
    inside, (x - low)² below and (x - high)² above.
    """
    below = _cube(low - np.minimum(x, low))
    above = _cube(np.maximum(x, high) - high)
    return _sawtooth_integral(np.clip(x, low, high), s) + clip_penalty * (above - below) / 3.0


class _ErrorModel(NamedTuple):
    """The histogram as a piecewise-constant density d plus point masses.

    Σ_k d_k·(F(e_{k+1}) − F(e_k)) = Σ_j F(e_j)·(d_{j−1} − d_j), so each candidate needs F
    only at the knots e_j where the density changes, with weights ``coef`` = d_{j−1} − d_j.
    """

    knots: np.ndarray
    coef: np.ndarray
    points: np.ndarray
    point_counts: np.ndarray
    total: float


def _error_model(hist: Histogram) -> _ErrorModel:
    """Uniform density inside each bin, the bins clipped to [lo, hi].

    A bin clipped to a single point (the max on a bin edge) is a point mass. Exact zeros
    are taken out of their bin: a quantizer represents 0 exactly, so they add no error
    (but still count in the mean).
    """
    counts = hist.counts.astype(np.float64)
    if hist.zeros:
        counts[-hist.first_bin] -= hist.zeros
    edges = np.clip(hist.edges(), hist.lo, hist.hi)
    width = np.diff(edges)
    is_point = (width <= 0) & (counts > 0)
    density = np.where(width > 0, counts / np.where(width > 0, width, 1.0), 0.0)
    padded = np.concatenate([[0.0], density, [0.0]])
    coef = padded[:-1] - padded[1:]                         # d_{j-1} - d_j at edge j
    keep = coef != 0
    return _ErrorModel(edges[keep], coef[keep], edges[:-1][is_point], counts[is_point],
                       float(hist.total))


def _errors(model: _ErrorModel, lo, hi, qtype: QType, symmetric: bool,
            clip_penalty: float = 1.0) -> np.ndarray:
    """Mean squared quantization error under the error model for each candidate range,
    the part from values outside the range weighted by ``clip_penalty``."""
    lo, hi = np.atleast_1d(lo).astype(np.float64), np.atleast_1d(hi).astype(np.float64)
    qp = qparams_from_range(torch.from_numpy(lo), torch.from_numpy(hi), qtype,
                            symmetric=symmetric, axis=0)
    # dequantized values in float64: dequantize's float32 product overflows at the far
    # ends of the float32 range, and elsewhere differs from it by at most an ulp
    s = qp.scale.double().numpy()[:, None]
    zp = qp.zero_point.numpy()[:, None]
    low, high = (qtype.qmin - zp) * s, (qtype.qmax - zp) * s
    total = _error_antiderivative(model.knots[None, :], s, low, high, clip_penalty) @ model.coef
    if len(model.points):               # point masses: quantize them as quantize.quantize does
        x = torch.from_numpy(model.points).float().expand(len(lo), len(model.points))
        q = quantize(x, qp).numpy().astype(np.int64)
        clipped = (model.points < low) | (model.points > high)
        weight = np.where(clipped, clip_penalty, 1.0)
        total += (weight * (model.points - (q - zp) * s) ** 2) @ model.point_counts
    return total / model.total


def expected_sq_error(hist: Histogram, lo, hi, qtype: QType, *, symmetric: bool) -> np.ndarray:
    """Estimated mean (x - fake_quantize(x))² over the data, for each candidate (lo[i], hi[i]).

    The quantizer is qparams_from_range(lo, hi, qtype, symmetric) with the data spread
    uniformly inside each histogram bin: rounding error inside the range plus clipping
    error outside, integrated exactly per bin (no bias when the step is as small as a bin).
    """
    return _errors(_error_model(hist), lo, hi, qtype, symmetric)


def _search_fraction(objective: Callable[[np.ndarray], np.ndarray],
                     incumbent: float = 1.0) -> float:
    """argmin over fractions f in (0, 1] of objective(f): a coarse grid, then a finer grid
    between the best coarse point's neighbours. f = 1 (no clipping) and ``incumbent`` are
    candidates, so the result is never worse than either."""
    coarse = np.arange(1, _COARSE_STEPS + 1, dtype=np.float64) / _COARSE_STEPS
    coarse = np.concatenate([coarse, [incumbent]])
    best = coarse[int(np.argmin(objective(coarse)))]
    step = 1.0 / _COARSE_STEPS
    fine = np.linspace(max(best - step, step / _FINE_STEPS), min(best + step, 1.0), _FINE_STEPS)
    fine = np.concatenate([[best], fine])
    return float(fine[int(np.argmin(objective(fine)))])


def mse_range(hist: Histogram, qtype: QType, *, symmetric: bool,
              clip_penalty: float = 1.0) -> tuple[float, float]:
    """The range minimizing the expected squared error (see ``expected_sq_error``).

    Symmetric: a threshold t = f·max|x| for the range [-t, t] ∩ [min, max]. Asymmetric: the
    movable ends (a negative min, a positive max) shrink toward 0 by a common fraction,
    then hi alone, then lo alone. Each stage keeps the previous optimum as a candidate, so
    the estimated error never exceeds that of minmax.
    """
    if hist.lo == hist.hi:
        return hist.lo, hist.hi
    model = _error_model(hist)

    def err(lo, hi):
        return _errors(model, lo, hi, qtype, symmetric, clip_penalty)

    if symmetric:
        amax = max(-hist.lo, hist.hi)
        f = _search_fraction(lambda f: err(np.maximum(-f * amax, hist.lo),
                                           np.minimum(f * amax, hist.hi)))
        return max(-f * amax, hist.lo), min(f * amax, hist.hi)

    move_lo, move_hi = hist.lo < 0, hist.hi > 0

    def candidates(f_lo, f_hi):
        lo = hist.lo * f_lo if move_lo else np.full_like(f_hi * f_lo, hist.lo)
        hi = hist.hi * f_hi if move_hi else np.full_like(f_hi * f_lo, hist.hi)
        return lo, hi

    f_lo = f_hi = _search_fraction(lambda f: err(*candidates(f, f)))
    if move_lo and move_hi:
        f_hi = _search_fraction(lambda f: err(*candidates(np.full_like(f, f_lo), f)), f_hi)
        f_lo = _search_fraction(lambda f: err(*candidates(f, np.full_like(f, f_hi))), f_lo)
    lo, hi = candidates(np.float64(f_lo), np.float64(f_hi))
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------
# Entropy (KL divergence)
# ---------------------------------------------------------------------------------------

def _kl_divergence(counts: np.ndarray, i: int, tail: int, levels: int) -> float:
    """KL(P‖Q) for the threshold at bin edge i.

    P: counts[:i] with the ``tail`` (values beyond the threshold) folded into bin i-1.
    Q: counts[:i] merged into ``levels`` near-equal chunks, each chunk's total spread evenly
    over the chunk's bins where P is non-zero — what a quantizer with ``levels`` steps keeps.
    """
    p = counts[:i].astype(np.float64)
    p[-1] += tail
    starts = (np.arange(levels, dtype=np.int64) * i) // levels
    totals = np.add.reduceat(counts[:i], starts).astype(np.float64)
    support = p > 0
    nonzero = np.add.reduceat(support.astype(np.int64), starts)
    sizes = np.diff(np.append(starts, i))
    q = np.repeat(totals / np.maximum(nonzero, 1), sizes) * support
    if q.sum() == 0:                        # everything is beyond the threshold
        return math.inf
    p, q = p[support] / p.sum(), q[support] / q.sum()
    q = np.where(q > 0, q, _KL_EPS)
    return float(np.sum(p * np.log(p / q)))


def _kl_threshold(counts: np.ndarray, levels: int) -> int:
    """The bin edge i (threshold i·w) in [levels, len(counts)] minimizing KL(P‖Q)."""
    n = len(counts)
    if n <= levels:
        return n
    tails = np.concatenate([np.cumsum(counts[::-1])[::-1][1:], [0]])   # tails[i-1] = Σ counts[i:]
    best_i, best_kl = n, np.inf
    for i in range(levels, n + 1):
        kl = _kl_divergence(counts, i, int(tails[i - 1]), levels)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def entropy_range(hist: Histogram, qtype: QType, *, symmetric: bool) -> tuple[float, float]:
    """TensorRT-style threshold: minimize KL(P‖Q) between the histogram of |x| clipped at a
    candidate threshold t (P) and its quantization to the qtype's levels (Q).

    The search runs on a histogram of |x| from 0 (at most 2048 bins: data far from 0 is
    coarsened, since the range reaches 0 anyway), with a candidate at every bin edge.
    Levels: the whole qtype range (256 for uint8) for asymmetric one-sided data, whose
    range is [min, t] (or [-t, max]); half of it (128 for int8) when the range is symmetric
    or the data two-sided. Two-sided asymmetric data gets [-t, t] ∩ [min, max]: one
    threshold on |x|, a robust choice (one histogram, one search) that ignores skew.

    Exact zeros are left out of P and Q: 0 is always a level, and otherwise the spike of a
    ReLU output at 0, smeared by Q over its chunk, dominates the divergence and drives the
    threshold far too low. Like TensorRT's, this criterion weighs clipped values by their
    probability, not their distance: a 0.1% population of large outliers gets clipped
    (use "mse" when such outliers matter).
    """
    if hist.lo == hist.hi:
        return hist.lo, hist.hi
    span = qtype.qmax - qtype.qmin + 1
    one_sided = hist.lo >= 0 or hist.hi <= 0
    levels = span if (one_sided and not symmetric) else span // 2
    mag = _magnitude(hist)
    counts, w = _from_zero(mag, _KL_MAX_BINS)
    counts[0] -= hist.zeros                 # exact zeros cost nothing: leave them out of P, Q
    t = min(_kl_threshold(counts, levels) * w, mag.hi)     # the last kept bin's upper edge
    return max(-t, hist.lo), min(t, hist.hi)
