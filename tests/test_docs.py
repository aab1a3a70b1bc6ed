"""The code in docs/writing-a-pass.md runs as written."""
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
