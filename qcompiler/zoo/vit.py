"""Vision Transformer (Dosovitskiy et al., 2021), at the DeiT-Tiny size (Touvron et al., 2021).

Written from the papers' equations, not from any implementation:

    z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos      patch embedding (a stride-p conv), class token
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                     pre-LN residual blocks
    z_l  = MLP(LN(z'_l)) + z'_l                           MLP: Linear, GELU, Linear
    y    = head(LN(z_L^0))                                the class token's final state

MSA computes ``[q, k, v] = z U_qkv`` in one projection (ViT eq. 5), splits the heads,
``softmax(q k^T / sqrt(D_h)) v`` per head, and projects the concatenated heads back. It is
spelled with plain modules and tensor methods (``reshape``/``permute``/``transpose``, ``@``,
``softmax``) so ``torch.fx.symbolic_trace`` records every op. Batch and token counts are read
from the input's shape, as model code usually does.

DeiT-Tiny: patch 16, width 192, depth 12, 3 heads, MLP 768, 224x224 input, LayerNorm eps 1e-6;
weights ~ truncated N(0, 0.02), biases 0, LayerNorm 1/0, as in DeiT's training recipe.
``img_size`` and ``depth`` can be reduced for fast tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["VisionTransformer", "vit_tiny"]


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # [B, N, 3D] -> [3, B, H, N, Dh]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Input ``[B, 3, img_size, img_size]`` -> logits ``[B, num_classes]``."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_dim: int = 768,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size ({img_size}) must be a multiple of patch_size ({patch_size})")
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        # A patch_size-strided conv is the linear patch projection E applied to each patch.
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_dim, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def vit_tiny(img_size: int = 224, depth: int = 12, num_classes: int = 1000) -> VisionTransformer:
    """DeiT-Tiny (ViT-Ti/16): 5.7 M parameters at 224x224 with 1000 classes."""
    return VisionTransformer(img_size=img_size, patch_size=16, num_classes=num_classes,
                             dim=192, depth=depth, num_heads=3, mlp_dim=768)
