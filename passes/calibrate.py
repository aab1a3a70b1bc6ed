"""calibrate: stream calibration batches through the observed graph.

Each batch is a tensor or a tuple/list of tensors; a batch with more entries than the
model has inputs (a DataLoader's ``(x, y)``) uses the leading ones. Observer statistics
are mergeable, so calibration may be sharded and merged later.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from qcompiler.core.meta import GraphState, has_node_info, node_info
from qcompiler.core.observers import CalibrationError
from qcompiler.core.pass_manager import Pass, PassContext, PassResult


def batch_inputs(batch, n_inputs: int) -> tuple:
    """The model inputs in one calibration batch."""
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    if isinstance(batch, dict):
        raise TypeError("calibration batches must be tensors or tuples of tensors, not dicts")
    batch = tuple(batch)
    if len(batch) < n_inputs:
        raise ValueError(f"a calibration batch has {len(batch)} entries but the model takes {n_inputs} inputs")
    return batch[:n_inputs]


class Calibrate(Pass):
    name = "calibrate"
    requires = frozenset({GraphState.OBSERVED})
    establishes = frozenset({GraphState.CALIBRATED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        if ctx.calibration_data is None:
            raise CalibrationError("no calibration data: pass an iterable of input batches "
                                   "(a list of tensors or a DataLoader) to quantize()")
        n_inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
        batches = elements = 0
        total = len(ctx.calibration_data) if hasattr(ctx.calibration_data, "__len__") else None
        hooks = self._record_input_means(gm)
        try:
            with torch.no_grad():
                for batch in tqdm(ctx.calibration_data, total=total, desc="calibrate", unit="batch",
                                  disable=not ctx.progress, leave=False):
                    inputs = batch_inputs(batch, n_inputs)
                    gm(*inputs)
                    batches += 1
                    elements += sum(t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim())
        finally:
            for hook in hooks:
                hook.remove()
        if batches == 0:
            raise CalibrationError("the calibration data yielded no batches; give at least one "
                                   "batch of representative inputs")
        return PassResult(gm, Counter(batches=batches, samples=elements))

    @staticmethod
    def _record_input_means(gm: fx.GraphModule) -> list:
        """Forward pre-hooks feeding each quantized layer's input to its ChannelMean."""
        hooks = []
        for node in gm.graph.nodes:
            stats = node_info(node).input_mean if has_node_info(node) else None
            if stats is not None and node.op == "call_module":
                def hook(module, args, stats=stats):
                    stats.update(args[0])
                hooks.append(gm.get_submodule(node.target).register_forward_pre_hook(hook))
        return hooks
