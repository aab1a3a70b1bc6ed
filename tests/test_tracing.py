import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import TraceError


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:                        # data-dependent control flow
            return x * 2
        return x


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Branchy()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.inner(x))


class Flagged(nn.Module):
    def forward(self, x, double: bool):
        if double:
            return x * 2
        return x


def test_untraceable_model_shows_source_line_and_way_out():
    with pytest.raises(TraceError) as exc:
        qcompiler.trace(Outer().eval())
    msg = str(exc.value)
    assert "if x.sum() > 0" in msg and "test_tracing.py" in msg
    assert "leaf_modules" in msg and "concrete_args" in msg


def test_leaf_modules_get_around_control_flow():
    gm = qcompiler.trace(Outer().eval(), (torch.randn(2, 4),), leaf_modules=[Branchy])
    assert any(n.op == "call_module" and n.target == "inner" for n in gm.graph.nodes)
    model = Outer().eval()
    gm2 = qcompiler.trace(model, leaf_names=["inner"])
    for x in (torch.randn(2, 4).abs(), -torch.randn(2, 4).abs()):   # both branches still taken
        assert torch.allclose(gm2(x), model(x))


def test_concrete_args_fix_flags():
    gm = qcompiler.trace(Flagged().eval(), concrete_args={"double": True})
    assert not any(n.op == "call_function" and n.target is bool for n in gm.graph.nodes)
    assert torch.equal(gm(torch.ones(2), True), torch.full((2,), 2.0))


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        qcompiler.trace(nn.Linear(2, 2))
