"""calibrate: stream calibration batches through the observed graph.

Each batch is a tensor or a tuple/list of tensors; a batch with more entries than the
model has inputs (a DataLoader's ``(x, y)``) uses the leading ones. Observer statistics
are mergeable, so calibration may be sharded and merged later.
"""
from __future__ import annotations

import warnings
from collections import Counter

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from qcompiler.core.meta import GraphState, graph_info, has_node_info, node_info
from qcompiler.core.observers import CalibrationError, Observer
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


def feed_layer_inputs(gm: fx.GraphModule, ctx: PassContext, readers: list, why: str) -> None:
    """Run the graph over the calibration batches once; for each ``(path, fn)`` of ``readers``,
    ``fn(x)`` gets the first input of the module at ``path`` at every call (forward pre-hooks).
    How a pass that runs before the observers (smooth_activations, GPTQ in quantize_weights)
    measures layer inputs. A one-shot iterator is kept as a list, so ``calibrate`` still sees
    every batch."""
    data = ctx.calibration_data
    if data is None:
        raise CalibrationError(f"{why} needs calibration data")
    if iter(data) is data:
        data = ctx.calibration_data = list(data)
    hooks = [gm.get_submodule(path).register_forward_pre_hook(lambda m, args, f=fn: f(args[0].detach()))
             for path, fn in readers]
    n_inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    try:
        with torch.no_grad():
            for batch in data:
                gm(*batch_inputs(batch, n_inputs))
    finally:
        for h in hooks:
            h.remove()


class Calibrate(Pass):
    name = "calibrate"
    requires = frozenset({GraphState.OBSERVED})
    establishes = frozenset({GraphState.CALIBRATED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        if ctx.calibration_data is None:
            raise CalibrationError("no calibration data: pass an iterable of input batches "
                                   "(a list of tensors or a DataLoader) to quantize()")
        if not any(isinstance(m, Observer) for m in gm.modules()):
            # all dynamic / weight-only / half: nothing measures, so the data need not run
            return PassResult(gm, Counter(skipped_no_observers=1))
        n_inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
        batches = elements = 0
        total = len(ctx.calibration_data) if hasattr(ctx.calibration_data, "__len__") else None
        hooks = self._record_input_means(gm)
        try:
            with torch.no_grad():
                for index, batch in enumerate(tqdm(ctx.calibration_data, total=total, desc="calibrate",
                                                   unit="batch", disable=not ctx.progress, leave=False)):
                    inputs = _run_batch(gm, batch, index, n_inputs, ctx.example_inputs)
                    batches += 1
                    elements += sum(t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim())
        finally:
            for hook in hooks:
                hook.remove()
        if batches == 0:
            raise CalibrationError("the calibration data yielded no batches; give at least one "
                                   "batch of representative inputs")
        _warn_all_zero(gm)
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


def _shapes(inputs) -> str:
    return ", ".join(f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                     for t in inputs)


def _run_batch(gm: fx.GraphModule, batch, index: int, n_inputs: int, example_inputs) -> tuple:
    """One batch through the observed graph; a failure names the batch and its shapes."""
    try:
        inputs = batch_inputs(batch, n_inputs)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"calibration batch {index}: {exc}") from None
    try:
        gm(*inputs)
    except CalibrationError as exc:
        raise CalibrationError(f"calibration batch {index}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the model's own error, with the batch that caused it
        expected = f"; the example inputs are {_shapes(example_inputs)}" if example_inputs else ""
        raise CalibrationError(
            f"calibration batch {index} ({_shapes(inputs)}) fails in the model: {type(exc).__name__}: {exc}"
            f"{expected}. Every calibration batch must be a valid input of the float model") from exc
    return inputs


def _warn_all_zero(gm: fx.GraphModule) -> None:
    """A tensor that was exactly zero in every batch gets an empty range: at run time anything
    else saturates. Legitimate (a zero-padded branch) but usually bad calibration data."""
    zero = []
    for node in gm.graph.nodes:
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(mod, Observer) and mod.has_data:
            lo, hi = mod.min_max()
            if bool((lo == 0).all() and (hi == 0).all()):
                zero.append(mod.label or node.name)
    if zero:
        shown = ", ".join(zero[:6]) + (", ..." if len(zero) > 6 else "")
        graph_info(gm).note(f"calibration: exactly zero in every batch: {shown}")
        warnings.warn(f"quantize(): {len(zero)} tensor(s) were exactly zero in every calibration batch ({shown}); "
                      "their quantization range is empty, so any other value saturates at run time. "
                      "Calibrate on representative inputs", stacklevel=2)
