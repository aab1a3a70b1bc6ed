"""Observers: streaming, mergeable statistics of the tensors met during calibration.

An observer is a ``torch.nn.Module`` placed in an fx graph as a ``call_module`` node: its
``forward(x)`` records statistics of ``x`` and returns ``x`` unchanged. Statistics are
float32 values of the observed data (min/max) or exact integer counts (histogram), kept on
the CPU, so that observers from several calibration workers can be merged.

Which observers are exactly mergeable (merged statistics == statistics of the concatenated
stream, whatever the split or order):

- ``MinMaxObserver``: exact.
- ``HistogramObserver``: exact (power-of-two bins anchored at 0, see its docstring).
- ``MovingAverageMinMaxObserver``: approximate (an exponential average depends on order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .qconfig import OBSERVERS

__all__ = [
    "CalibrationError", "Observer", "MinMaxObserver", "MovingAverageMinMaxObserver",
    "HistogramObserver", "Histogram", "make_observer",
]


def _aminmax(x: torch.Tensor, dim: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) on the CPU; NaN propagates. numpy's reductions are much faster on CPU."""
    if x.device.type == "cpu":
        xn = x.numpy()
        lo, hi = np.asarray(xn.min(axis=dim)), np.asarray(xn.max(axis=dim))
        return torch.from_numpy(lo), torch.from_numpy(hi)
    lo, hi = torch.aminmax(x) if dim is None else torch.aminmax(x, dim=dim)
    return lo.cpu(), hi.cpu()


class CalibrationError(ValueError):
    """Calibration data cannot give this observer a valid range (NaN/Inf, or no data)."""


class Observer(torch.nn.Module):
    """Base class: bookkeeping, input checks and the merge protocol.

    ``label`` is the name of the layer whose tensor is observed (set by whoever inserts the
    observer) and appears in every error. ``axis`` is the channel axis for per-channel
    statistics, or None for per-tensor statistics.
    """

    def __init__(self, axis: Optional[int] = None):
        super().__init__()
        self.label: str = ""
        self.axis = axis
        self.num_batches = 0
        self.num_elements = 0

    # -- the fx-facing side ---------------------------------------------------------------
    def forward(self, x):
        if isinstance(x, torch.Tensor):
            self.update(x)
        return x

    # -- public API -----------------------------------------------------------------------
    def update(self, x: torch.Tensor) -> None:
        """Add one batch. Empty tensors are ignored; NaN/Inf raise CalibrationError
        before any statistic changes."""
        x = x.detach()
        if x.numel() == 0:
            return
        self._update(x.to(torch.float32))
        self.num_batches += 1
        self.num_elements += x.numel()

    def merge(self, other: "Observer") -> "Observer":
        """Fold ``other``'s statistics into ``self`` (in place); returns ``self``."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__} "
                            f"(observer {self._name()})")
        if other.axis != self.axis:
            raise ValueError(f"cannot merge observers with axis={other.axis} and axis={self.axis} "
                             f"(observer {self._name()})")
        self._check_compatible(other)
        if other.has_data:
            if self.has_data:
                self._merge(other)
            else:
                self._copy_stats(other)
            self.num_batches += other.num_batches
            self.num_elements += other.num_elements
        return self

    @property
    def has_data(self) -> bool:
        return self.num_elements > 0

    def min_max(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) as float32 tensors: 0-d per tensor, 1-d along ``axis`` per channel."""
        self._require_data()
        lo, hi = self._min_max()
        return lo.clone(), hi.clone()

    def reset(self) -> None:
        self.num_batches = 0
        self.num_elements = 0
        self._reset_stats()

    # -- subclass hooks -------------------------------------------------------------------
    def _check_compatible(self, other: "Observer") -> None:
        """Raise ValueError if ``other`` was configured differently (data or not)."""

    def _update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _merge(self, other: "Observer") -> None:
        raise NotImplementedError

    def _copy_stats(self, other: "Observer") -> None:
        raise NotImplementedError

    def _min_max(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _reset_stats(self) -> None:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------
    def _name(self) -> str:
        return repr(self.label) if self.label else "(unlabelled)"

    def _require_data(self) -> None:
        if not self.has_data:
            raise CalibrationError(
                f"observer {self._name()}: no calibration data reached this layer; run the "
                f"calibration loop on at least one batch that exercises it (is the layer on "
                f"a branch the calibration data never takes?)")

    def _batch_min_max(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor or per-channel (min, max) of a float32 batch, on the CPU.

        NaN propagates through aminmax, so one reduction both finds the range and checks it.
        """
        if self.axis is not None and x.dim() == 0:
            raise ValueError(f"observer {self._name()}: per-channel axis={self.axis} "
                             f"given a 0-d tensor")
        if self.axis is not None:
            x = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        lo, hi = _aminmax(x, None if self.axis is None else 1)
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise CalibrationError(
                f"observer {self._name()}: calibration batch contains NaN or Inf (or values "
                f"beyond the float32 range); check the input data and the layer producing "
                f"this tensor ({self._name()}) for overflow or invalid operations")
        return lo, hi

    def extra_repr(self) -> str:
        parts = [f"label={self.label!r}"] if self.label else []
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        parts.append(f"batches={self.num_batches}")
        return ", ".join(parts)


# ---------------------------------------------------------------------------------------
# Min/max observers
# ---------------------------------------------------------------------------------------

class _RangeObserver(Observer):
    """Holds float32 ``min_val``/``max_val`` (None until data arrives)."""

    def __init__(self, axis: Optional[int] = None):
        super().__init__(axis)
        self.min_val: Optional[torch.Tensor] = None
        self.max_val: Optional[torch.Tensor] = None

    def _check_channels(self, lo: torch.Tensor) -> None:
        if self.min_val is not None and self.min_val.shape != lo.shape:
            raise ValueError(f"observer {self._name()}: per-channel statistics along axis "
                             f"{self.axis} have {self.min_val.numel()} channels, the new data "
                             f"has {lo.numel()}")

    def _copy_stats(self, other: "_RangeObserver") -> None:
        self.min_val, self.max_val = other.min_val.clone(), other.max_val.clone()

    def _min_max(self):
        return self.min_val, self.max_val

    def _reset_stats(self) -> None:
        self.min_val = self.max_val = None


class MinMaxObserver(_RangeObserver):
    """Running minimum and maximum (exact, mergeable, order-independent)."""

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = self._batch_min_max(x)
        self._check_channels(lo)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def _merge(self, other: "MinMaxObserver") -> None:
        self._check_channels(other.min_val)
        self.min_val = torch.minimum(self.min_val, other.min_val)
        self.max_val = torch.maximum(self.max_val, other.max_val)


class MovingAverageMinMaxObserver(_RangeObserver):
    """Exponential moving average of per-batch min/max (PyTorch semantics).

    The first batch sets min/max; each later batch moves them by ``averaging_constant``:
    ``min ← min + c · (batch_min − min)`` in float32.

    ``merge`` is APPROXIMATE: it takes the average of the two observers' values weighted by
    their numbers of batches. An exponential average depends on batch order, so no merge can
    reproduce the statistics of the concatenated stream.
    """

    def __init__(self, averaging_constant: float = 0.01, axis: Optional[int] = None):
        super().__init__(axis)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = self._batch_min_max(x)
        self._check_channels(lo)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            c = torch.tensor(self.averaging_constant, dtype=torch.float32)
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)

    def _check_compatible(self, other: "MovingAverageMinMaxObserver") -> None:
        if other.averaging_constant != self.averaging_constant:
            raise ValueError(f"observer {self._name()}: cannot merge moving averages with "
                             f"constants {self.averaging_constant} and {other.averaging_constant}")

    def _merge(self, other: "MovingAverageMinMaxObserver") -> None:
        self._check_channels(other.min_val)
        n1, n2 = self.num_batches, other.num_batches

        def avg(a, b):
            return ((a.double() * n1 + b.double() * n2) / (n1 + n2)).to(torch.float32)

        self.min_val = avg(self.min_val, other.min_val)
        self.max_val = avg(self.max_val, other.max_val)


# ---------------------------------------------------------------------------------------
# Histogram observer
# ---------------------------------------------------------------------------------------

_MIN_EXPONENT = -60     # narrowest bin 2^-60: a normal float32, far above subnormals
_INDEX_BITS = 40        # bins never finer than max|x|·2^-40, so bin indices stay < 2^41


@dataclass(frozen=True, eq=False)
class Histogram:
    """A snapshot of a HistogramObserver.

    Bin ``i`` (0-based in ``counts``) covers ``[(first_bin + i)·w, (first_bin + i + 1)·w)``
    with ``w = bin_width`` a power of two; ``lo``/``hi`` are the exact data min/max
    (``lo`` lies in the first bin, ``hi`` in the last). ``counts`` is read-only int64.
    ``zeros`` is how many values are exactly 0 (counted in their bin too): a quantizer
    always represents them exactly, and ReLU outputs have many.
    """

    counts: np.ndarray
    bin_width: float
    first_bin: int
    lo: float
    hi: float
    zeros: int = 0

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def exponent(self) -> int:
        return math.frexp(self.bin_width)[1] - 1

    def edges(self) -> np.ndarray:
        """The len(counts)+1 bin edges, float64 (exact: small integers times 2^e)."""
        k = self.first_bin + np.arange(len(self.counts) + 1, dtype=np.float64)
        return k * self.bin_width

    def centers(self) -> np.ndarray:
        return self.edges()[:-1] + 0.5 * self.bin_width

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-bin [a, b] intervals clipped to the data range [lo, hi] (float64).

        The last bin's interval is a single point when ``hi`` lies exactly on its left edge.
        """
        e = self.edges()
        return np.maximum(e[:-1], self.lo), np.minimum(e[1:], self.hi)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.bin_width == other.bin_width and self.first_bin == other.first_bin
                and self.lo == other.lo and self.hi == other.hi and self.zeros == other.zeros
                and np.array_equal(self.counts, other.counts))

    __hash__ = None


def _ilog2(v: float) -> int:
    """floor(log2(v)) for v > 0, exactly (frexp gives v = m·2^k with m in [0.5, 1))."""
    return math.frexp(v)[1] - 1


def _bin_index(v: float, e: int) -> int:
    """floor(v / 2^e), exact: scaling a float by a power of two is exact in float64."""
    return math.floor(math.ldexp(v, -e))


def _num_bins(lo: float, hi: float, e: int) -> int:
    return _bin_index(hi, e) - _bin_index(lo, e) + 1


def _exponent_for(lo: float, hi: float, max_bins: int) -> int:
    """The bin exponent the data range [lo, hi] calls for.

    It is the smallest e ≥ the floors (min exponent; max|x|·2^-40) such that the bins
    holding lo..hi number at most ``max_bins``. Widening [lo, hi] never lowers it (a span
    that fits at width 2^e also fits at 2^(e+1), and a wider range has a wider span), so
    the exponent of the whole stream is reached whatever order the batches come in.
    """
    amax = max(abs(lo), abs(hi))
    e = _MIN_EXPONENT if amax == 0 else max(_MIN_EXPONENT, _ilog2(amax) - _INDEX_BITS)
    if hi > lo:
        # the span count exceeds (hi-lo)/w, so narrower widths cannot fit; -1 covers rounding
        e = max(e, _ilog2((hi - lo) / max_bins) - 1)
    while _num_bins(lo, hi, e) > max_bins:
        e += 1
    return e


def _bin_counts(x: torch.Tensor, e: int, first: int, n: int) -> np.ndarray:
    """Counts of floor(x / 2^e) - first over 0..n-1, exactly.

    float64 makes the division by 2^e exact (float32 could underflow a tiny negative value
    to -0 and misplace it), and floor(...) - first is then an exact small integer.
    numpy is much faster than torch for this on the CPU; other devices count in place.
    """
    if x.device.type == "cpu":
        return _bin_counts_numpy(x, e, first, n)
    return _bin_counts_torch(x, e, first, n)


def _bin_counts_numpy(x: torch.Tensor, e: int, first: int, n: int) -> np.ndarray:
    y = x.reshape(-1).numpy().astype(np.float64) * math.ldexp(1.0, -e)
    np.floor(y, out=y)
    y -= first
    return np.bincount(y.astype(np.intp), minlength=n).astype(np.int64)


def _bin_counts_torch(x: torch.Tensor, e: int, first: int, n: int) -> np.ndarray:
    idx = torch.floor(x.reshape(-1).double() * math.ldexp(1.0, -e)).long() - first
    return torch.bincount(idx, minlength=n).cpu().numpy().astype(np.int64)


def _count_zeros(x: torch.Tensor) -> int:
    if x.device.type == "cpu":
        return int(np.count_nonzero(x.numpy() == 0))
    return int((x == 0).sum())


def _rebin(counts: np.ndarray, first: int, e_old: int, e_new: int,
           first_new: int, n_new: int) -> np.ndarray:
    """Exact coarsening: bin k at width 2^e_old lies inside bin k >> d at width 2^e_new."""
    idx = ((np.arange(len(counts), dtype=np.int64) + first) >> (e_new - e_old)) - first_new
    out = np.zeros(n_new, dtype=np.int64)
    np.add.at(out, idx, counts)
    return out


class HistogramObserver(Observer):
    """Exact, mergeable, order-independent histogram of a tensor (per tensor only).

    Bins lie on a power-of-two grid anchored at 0: bin k covers ``[k·w, (k+1)·w)`` with
    ``w = 2^e``, and ``e`` is the smallest exponent whose bins holding ``[min, max]`` number
    at most ``max_bins`` (never below 2^-60, nor below max|x|·2^-40). ``e`` depends only on
    the overall min and max, and bins at width 2^(e+1) are unions of bins at width 2^e, so
    coarsening is exact and the counts after any sequence of updates and merges equal those
    of a single pass over the concatenated data. Bin indices are ``floor(x / w)``, exact in
    float64 for float32 data.
    """

    def __init__(self, max_bins: int = 2048):
        super().__init__(axis=None)
        if max_bins < 2:
            raise ValueError(f"max_bins must be at least 2, got {max_bins}")
        self.max_bins = int(max_bins)
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._counts = np.zeros(0, dtype=np.int64)
        self._exponent = _MIN_EXPONENT
        self._first_bin = 0
        self._lo = math.inf
        self._hi = -math.inf
        self._zeros = 0

    def _update(self, x: torch.Tensor) -> None:
        blo, bhi = self._batch_min_max(x)
        lo, hi = min(self._lo, float(blo)), max(self._hi, float(bhi))
        e, first, n = self._grid_for(lo, hi)
        counts = self._rebinned(e, first, n)
        counts += _bin_counts(x, e, first, n)
        self._counts, self._exponent, self._first_bin = counts, e, first
        self._lo, self._hi = lo, hi
        self._zeros += _count_zeros(x)

    def _check_compatible(self, other: "HistogramObserver") -> None:
        if other.max_bins != self.max_bins:
            raise ValueError(f"observer {self._name()}: cannot merge histograms with "
                             f"max_bins={self.max_bins} and {other.max_bins}")

    def _merge(self, other: "HistogramObserver") -> None:
        lo, hi = min(self._lo, other._lo), max(self._hi, other._hi)
        e, first, n = self._grid_for(lo, hi)
        counts = self._rebinned(e, first, n)
        counts += _rebin(other._counts, other._first_bin, other._exponent, e, first, n)
        self._counts, self._exponent, self._first_bin = counts, e, first
        self._lo, self._hi = lo, hi
        self._zeros += other._zeros

    def _copy_stats(self, other: "HistogramObserver") -> None:
        self._counts = other._counts.copy()
        self._exponent, self._first_bin = other._exponent, other._first_bin
        self._lo, self._hi = other._lo, other._hi
        self._zeros = other._zeros

    def _grid_for(self, lo: float, hi: float) -> tuple[int, int, int]:
        e = _exponent_for(lo, hi, self.max_bins)
        assert not self.has_data or e >= self._exponent, "bin exponent must never shrink"
        return e, _bin_index(lo, e), _num_bins(lo, hi, e)

    def _rebinned(self, e: int, first: int, n: int) -> np.ndarray:
        if not self.has_data:
            return np.zeros(n, dtype=np.int64)
        return _rebin(self._counts, self._first_bin, self._exponent, e, first, n)

    def _min_max(self):
        return (torch.tensor(self._lo, dtype=torch.float32),
                torch.tensor(self._hi, dtype=torch.float32))

    def histogram(self) -> Histogram:
        """The current statistics; raises CalibrationError if no data was observed."""
        self._require_data()
        counts = self._counts.copy()
        counts.setflags(write=False)
        return Histogram(counts, math.ldexp(1.0, self._exponent), self._first_bin,
                         self._lo, self._hi, self._zeros)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_bins={self.max_bins}"


# ---------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------

def make_observer(kind: str, axis: Optional[int] = None, *, label: str = "") -> Observer:
    """An observer by its QConfig name (``qconfig.OBSERVERS``)."""
    if kind not in OBSERVERS:
        raise ValueError(f"unknown observer {kind!r}; choose one of {OBSERVERS}")
    if kind == "minmax":
        obs = MinMaxObserver(axis=axis)
    elif kind == "moving_average":
        obs = MovingAverageMinMaxObserver(axis=axis)
    else:
        if axis is not None:
            raise ValueError(f"the histogram observer is per tensor only (got axis={axis}); "
                             f"use observer='minmax' for per-channel statistics")
        obs = HistogramObserver()
    obs.label = label
    return obs
