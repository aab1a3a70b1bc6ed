"""A plain multi-layer perceptron: (Linear + ReLU) * len(hidden), then a Linear head."""

from __future__ import annotations

from typing import List, Sequence

from torch import nn

__all__ = ["mlp"]


def mlp(
    in_features: int = 256, hidden: Sequence[int] = (512, 512), num_classes: int = 10
) -> nn.Sequential:
    """``nn.Sequential`` of Linear/ReLU pairs and a final Linear; input ``[B, in_features]``.

    Module names are the Sequential indices: ``0`` Linear, ``1`` ReLU, ``2`` Linear, ...
    """
    layers: List[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        layers.append(nn.ReLU())
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
