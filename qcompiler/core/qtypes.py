"""Quantized types and quantization parameters: the vocabulary every layer shares."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class QType:
    """An integer value range and the torch dtype that stores it.

    int4 is stored in int8 tensors; weights use the narrow (restricted) symmetric range
    [-127, 127] so that negation never overflows.
    """

    name: str
    qmin: int
    qmax: int
    storage: torch.dtype

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    def __str__(self) -> str:
        return self.name


UINT8 = QType("uint8", 0, 255, torch.uint8)
INT8 = QType("int8", -128, 127, torch.int8)
INT8_NARROW = QType("int8_narrow", -127, 127, torch.int8)
INT4 = QType("int4", -7, 7, torch.int8)
INT32 = QType("int32", -(2**31), 2**31 - 1, torch.int32)

QTYPES = {t.name: t for t in (UINT8, INT8, INT8_NARROW, INT4, INT32)}


def qtype(name: str) -> QType:
    try:
        return QTYPES[name]
    except KeyError:
        raise ValueError(f"unknown quantized type {name!r}; choose one of {sorted(QTYPES)}") from None


@dataclass(frozen=True, eq=False)
class QParams:
    """Affine quantization parameters of one tensor.

    ``scale`` is float32 and ``zero_point`` int64, each a 0-d tensor (per tensor) or a 1-d
    tensor along ``axis`` (per channel).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qtype: QType
    axis: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "scale", torch.as_tensor(self.scale, dtype=torch.float32))
        object.__setattr__(self, "zero_point", torch.as_tensor(self.zero_point, dtype=torch.int64))
        if self.axis is None and self.scale.numel() != 1:
            raise ValueError("per-tensor QParams need a single scale")
        if not bool((self.scale > 0).all()) or not bool(torch.isfinite(self.scale).all()):
            raise ValueError(f"scales must be positive and finite, got {self.scale}")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def scale_float(self) -> float:
        """The per-tensor scale as a Python float (exactly the float32 value)."""
        return float(self.scale.reshape(()))

    def zero_point_int(self) -> int:
        return int(self.zero_point.reshape(()))

    def same_as(self, other: "QParams") -> bool:
        return (
            self.qtype == other.qtype
            and self.axis == other.axis
            and torch.equal(self.scale.reshape(-1), other.scale.reshape(-1))
            and torch.equal(self.zero_point.reshape(-1), other.zero_point.reshape(-1))
        )

    def __repr__(self) -> str:
        if self.per_channel:
            return (f"QParams({self.qtype}, axis={self.axis}, "
                    f"scale=[{self.scale.min():.3g}..{self.scale.max():.3g}]×{self.scale.numel()})")
        return f"QParams({self.qtype}, scale={self.scale_float():.6g}, zp={self.zero_point_int()})"
