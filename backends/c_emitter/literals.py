"""C literals the emitter prints."""
from __future__ import annotations

import re

import torch


def c_float(x) -> str:
    """A float32 as an exact C hex literal."""
    v = float(torch.tensor(float(x), dtype=torch.float32))
    if v == 0:
        return "0.0f"
    return f"{v.hex()}f"


def c_ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)
