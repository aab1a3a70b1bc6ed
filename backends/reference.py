"""The reference target: the INTEGER graph run by the reference interpreter, no codegen."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompiler.core.integer_ops import INTEGER_OPS
from qcompiler.core.qconfig import Capabilities
from qcompiler.core.reference import run_reference

from .base import Backend


class ReferenceModule(torch.nn.Module):
    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.graph_module = gm

    def forward(self, *inputs):
        return run_reference(self.graph_module, *inputs)


class ReferenceBackend(Backend):
    name = "reference"
    capabilities = Capabilities(ops=INTEGER_OPS)

    def load(self, gm, artifact):
        return ReferenceModule(gm)
