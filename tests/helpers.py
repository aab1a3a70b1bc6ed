"""Shared test utilities: the QDQ and INTEGER graphs of one model side by side; the op suites'
targets, strategies, min/max quantization and their bit-exactness check."""
from __future__ import annotations

import copy

import pytest
import torch

from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler.core.meta import graph_info
from qcompiler.core.pass_manager import PassContext, PassManager
from qcompiler.passes import LowerToInteger

#: every available target, and those that generate code
TARGETS = [name for name, (ok, _) in qcompiler.available_targets().items() if ok]
COMPILED_TARGETS = [name for name in TARGETS if name != "reference"]
#: ARM levels above the baseline differ from it only in their GEMM kernels, which
#: test_conformance.py (every level), test_arm_kernels.py and test_arm_gemm_call.py check: the op
#: suites run them with -m slow only (each call of an emulated program starts qemu)
EXTRA_ARM_LEVELS = ("arm+dotprod", "arm+i8mm")


def _op_suite(targets: list) -> list:
    return [pytest.param(t, marks=pytest.mark.slow) if t in EXTRA_ARM_LEVELS else t for t in targets]


#: what the op suites parametrize over
OP_TARGETS = _op_suite(TARGETS)
OP_COMPILED_TARGETS = _op_suite(COMPILED_TARGETS)
modes = st.sampled_from(["fp32", "fixed_point"])
act_dtypes = st.sampled_from(["uint8", "int8"])


class SmallNet(torch.nn.Module):
    """Every kind of step in a few layers: 3x3 / 1x1 / grouped / depthwise convs, pools, add, cat, linear."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.grouped = nn.Conv2d(16, 8, 3, 1, 1, groups=4)
        self.fc = nn.Linear(24 * 2 * 2, 10)

    def forward(self, x):
        F = torch.nn.functional
        y = F.relu(self.stem(x))
        y = F.max_pool2d(y, 3, 2, 1)
        z = F.relu6(self.dw(y))
        y = F.relu(self.pw(z) + y)
        y = torch.cat([y, self.grouped(y)], 1)
        y = F.avg_pool2d(y, 2)
        return self.fc(torch.flatten(y, 1))


class Fn(torch.nn.Module):
    """A function of one tensor as a module (fx traces no *args)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def quantize_minmax(model, args: tuple, mode: str = "fp32", act: str = "uint8"):
    """Quantized on the one batch ``args`` with min/max ranges (every value exactly in range)."""
    cfg = QConfig(requant_mode=mode, activation=TensorSpec(act, symmetric=False, observer="minmax"))
    return qcompiler.quantize(model.eval(), [args], config=cfg, progress=False, warn_float=False)


def assert_bit_exact(model, inputs, target, mode="fp32", act="uint8"):
    """Quantized with nothing left in float, compiled with nothing in PyTorch, equal to the reference."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    qm = quantize_minmax(model, args, mode, act)
    assert graph_info(qm.graph_module).float_ops == [], graph_info(qm.graph_module).float_ops
    compiled = qcompiler.compile(qm, target=target, pytorch_fallback=False)
    got, want = compiled(*args), qm(*args)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert g.shape == w.shape and torch.equal(g, w), f"{target} differs from the reference"
    return qm


def qdq_and_integer(model, batches, config=None, example=None):
    """(QDQ GraphModule, INTEGER GraphModule) from one calibration of ``model``."""
    pm = qcompiler.default_pipeline().remove("lower_to_integer")
    qdq = qcompiler.quantize(model, batches, config=config, pipeline=pm, progress=False,
                             example_inputs=example).graph_module
    ctx = PassContext(config=config or qcompiler.QConfig())
    integer = PassManager([LowerToInteger()]).run(copy.deepcopy(qdq), ctx).graph_module
    return qdq, integer


def output_qparams(integer_gm):
    """The qparams of the graph output's final dequantize."""
    from qcompiler.core.integer_ops import Dequantize
    out = next(n for n in integer_gm.graph.nodes if n.op == "output")
    dq = integer_gm.get_submodule(out.args[0].target)
    assert isinstance(dq, Dequantize)
    return dq.qparams


def steps_apart(a: torch.Tensor, b: torch.Tensor, scale: float) -> int:
    """How many output quantization steps apart two dequantized outputs are (an integer:
    both are multiples of ``scale``, so the ratio is rounded to drop float noise)."""
    return int(torch.round((a - b).abs() / scale).max()) if a.numel() else 0
