"""The code in docs/writing-a-pass.md and README.md runs as written."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-pass.md"


def test_writing_a_pass_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["fold_constant_mul"].name == "fold_constant_mul"


README = DOC.parents[1] / "README.md"


def test_readme_use_example_runs_as_written(tmp_path, monkeypatch):
    """README's "Use" block, with ``model``, ``calibration_batches`` and ``x`` a reader would
    bring (a small CNN whose head is named ``fc``, as the block's override assumes)."""
    import torch
    import torch.nn as nn

    import qcompiler

    block = re.search(r"## Use\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)

    class SmallNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))

    torch.manual_seed(0)
    namespace = {"model": SmallNet(), "calibration_batches": [torch.randn(2, 3, 16, 16) for _ in range(3)],
                 "x": torch.randn(2, 3, 16, 16)}
    if not qcompiler.available_targets()["arm+dotprod"][0]:
        block = block[:block.index("qa = ")]            # the ARM part needs the cross compiler (and qemu)
    if not qcompiler.available_targets()["x86"][0]:
        block = block.replace('target="x86"', 'target="reference"')
        block = block[:block.index("fast = ")]          # the native part needs the x86 target
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), namespace)
    if "fast" in namespace:
        assert torch.equal(namespace["fast"](namespace["x"]), namespace["qm"](namespace["x"]))
    if "arm" in namespace:
        assert torch.equal(namespace["arm"](namespace["x"]), namespace["qa"](namespace["x"]))
        assert (tmp_path / "arm_bundle" / "Makefile").exists()
