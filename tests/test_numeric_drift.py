"""Numeric drift guard: golden outputs of small seeded models, per target, committed in
tests/golden/drift.json. A change in any output byte fails, with a diff of the generated C
against the source committed beside the goldens (tests/golden/<model>.<isa>.c), so the
change that moved the numbers is in front of whoever broke them.

The models use only ops whose float arithmetic is exact on their data (weights and inputs
on a grid of 1/8, small sums: conv, depthwise, linear, add, relu, pools, matmul), so
calibration, and hence every quantization parameter, is the same on any CPU, whatever
order its float kernels sum in. Transcendental ops (lookup tables, softmax) are left to the
conformance suite: a libm that differs in the last bit could move their tables.

Regenerate after an intended change:  QC_UPDATE_GOLDEN=1 python -m pytest tests/test_numeric_drift.py
"""
import difflib
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import qcompiler

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = GOLDEN_DIR / "drift.json"
UPDATE = os.environ.get("QC_UPDATE_GOLDEN") == "1"
TARGETS = [name for name, (ok, _) in qcompiler.available_targets().items() if ok]


def _on_grid(model: nn.Module) -> nn.Module:
    """Parameters rounded to multiples of 1/8 in [-1, 1]: products and sums stay exact."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.clamp(torch.round(p * 8) / 8, -1, 1))
    return model.eval()


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = self.dw(y)
        z = torch.relu(self.pw(z) + z)
        return self.fc(torch.flatten(self.pool(torch.nn.functional.max_pool2d(z, 2)), 1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(12, 24), nn.Linear(24, 6)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Attention(nn.Module):
    """Projections, scores and context (no softmax: see the module doc)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2)
        return self.o(scores @ self.v(x)) + x


def _grid_input(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, shape, generator=g).float() / 8


MODELS = {
    "small_cnn": (SmallCNN, (2, 3, 12, 12)),
    "mlp": (MLP, (4, 12)),
    "attention": (Attention, (2, 5, 8)),
}


def _build(name: str):
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = _on_grid(cls())
    calib = [_grid_input(shape, seed) for seed in (1, 2, 3)]
    return model, calib, _grid_input(shape, 4)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def _source_diff(name: str, compiled) -> str:
    source = getattr(compiled, "source", None)
    isa = getattr(compiled, "isa", None)
    if source is None:
        return ""
    committed = GOLDEN_DIR / f"{name}.{isa}.c"
    if not committed.exists():
        return f"\n(no committed source for ISA {isa} to diff against)"
    diff = list(difflib.unified_diff(committed.read_text().splitlines(), source.splitlines(),
                                     f"committed {committed.name}", "generated now", lineterm="", n=1))
    return "\ngenerated C, committed vs now:\n" + ("\n".join(diff[:200]) or "(identical: the runtime kernels moved)")


def _golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_match_the_committed_goldens(name, target):
    model, calib, x = _build(name)
    qm = qcompiler.quantize(model, calib, target=target, progress=False, warn_float=False)
    compiled = qcompiler.compile(qm, target=target)
    out = compiled(x)
    assert torch.equal(out, qm(x))
    digest = _digest(out)
    golden = _golden()
    if UPDATE:
        golden.setdefault(name, {})["outputs_sha256"] = _digest(qm(x))
        GOLDEN_DIR.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
        if getattr(compiled, "source", None) is not None:
            (GOLDEN_DIR / f"{name}.{compiled.isa}.c").write_text(compiled.source)
        return
    expected = golden.get(name, {}).get("outputs_sha256")
    assert expected is not None, f"no golden for {name}: run with QC_UPDATE_GOLDEN=1 and commit tests/golden/"
    assert digest == expected, (f"{name} on {target}: the outputs changed (sha256 {digest[:16]}..., golden "
                                f"{expected[:16]}...). If intended, regenerate with QC_UPDATE_GOLDEN=1 and say why "
                                f"in the commit.{_source_diff(name, compiled)}")
