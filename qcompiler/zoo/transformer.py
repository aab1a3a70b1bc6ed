"""A small post-norm Transformer encoder written with plain modules, traceable by fx.

Every projection is an ``nn.Linear`` (so a quantizer sees ordinary linear layers), the
attention is spelled out with ``torch.matmul`` and ``torch.softmax``, and the heads are
split and merged with ``unflatten``/``flatten`` on the static feature dimension, so
``torch.fx.symbolic_trace`` records no shape query and no data-dependent control flow.
Inputs are batch-first: ``[batch, seq, features]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TransformerEncoderLayer", "TinyTransformerClassifier"]


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer, like ``nn.TransformerEncoderLayer(norm_first=False)``
    with ``activation="gelu"`` and ``batch_first=True``:

        x = norm1(x + dropout1(self_attention(x)))
        x = norm2(x + dropout2(ff2(dropout(gelu(ff1(x))))))
    """

    def __init__(
        self, d_model: int = 64, nhead: int = 4, dim_ff: int = 128, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        self.d_model = d_model
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.scale = 1.0 / math.sqrt(self.head_dim)

        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.attn_dropout = nn.Dropout(dropout)

        self.ff1 = nn.Linear(d_model, dim_ff)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.ff2 = nn.Linear(dim_ff, d_model)

        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        # [B, S, D] -> [B, H, S, Dh]
        return x.unflatten(-1, (self.nhead, self.head_dim)).transpose(1, 2)

    def self_attention(self, x: Tensor) -> Tensor:
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = torch.softmax(scores, dim=-1)
        attn = self.attn_dropout(attn)
        out = torch.matmul(attn, v)  # [B, H, S, Dh]
        out = out.transpose(1, 2).flatten(-2)  # [B, S, D]
        return self.out_proj(out)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.ff2(self.dropout(self.activation(self.ff1(x))))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout1(self.self_attention(x)))
        x = self.norm2(x + self.dropout2(self.feed_forward(x)))
        return x


class TinyTransformerClassifier(nn.Module):
    """Linear embedding of per-token features, ``num_layers`` encoder layers, mean pooling
    over the sequence, and a linear head. Input ``[B, S, in_features]`` -> ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_features: int = 32,
        d_model: int = 64,
        nhead: int = 4,
        dim_ff: int = 128,
        num_layers: int = 2,
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.embed = nn.Linear(in_features, d_model)
        self.layers = nn.Sequential(
            *[TransformerEncoderLayer(d_model, nhead, dim_ff, dropout) for _ in range(num_layers)]
        )
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        x = self.layers(x)
        x = x.mean(dim=1)
        return self.head(x)
