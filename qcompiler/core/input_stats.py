"""Per-channel input means of weighted layers, gathered during calibration for bias correction."""
from __future__ import annotations

import torch


class ChannelMean:
    """Running mean of a tensor along all dims but ``axis``; exactly mergeable (float64 sums)."""

    def __init__(self, axis: int):
        self.axis = axis
        self.sum: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        axis = self.axis % x.dim()
        dims = [d for d in range(x.dim()) if d != axis]
        s = x.detach().sum(dims, dtype=torch.float64)      # no float64 copy of the batch
        self.sum = s if self.sum is None else self.sum + s
        self.count += x.numel() // x.shape[axis]

    def merge(self, other: "ChannelMean") -> "ChannelMean":
        if other.sum is not None:
            self.sum = other.sum.clone() if self.sum is None else self.sum + other.sum
            self.count += other.count
        return self

    def mean(self) -> torch.Tensor:
        if self.sum is None:
            raise ValueError("no data reached this layer during calibration")
        return self.sum / self.count
