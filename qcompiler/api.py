"""The public entry points: quantize() and compile()."""
from __future__ import annotations

import copy
import itertools
import warnings
from typing import Any, Iterable, Optional

import torch
import torch.fx as fx

from qcompiler.backends import available_targets, get_backend
from qcompiler.core.integer_ops import IntegerOp
from qcompiler.core.observers import CalibrationError
from qcompiler.core.pass_manager import PassContext, PassError, PassManager, PipelineResult
from qcompiler.core.qconfig import QConfig
from qcompiler.core.report import QuantReport, build_report, float_layers
from qcompiler.core.tracing import trace
from qcompiler.passes.calibrate import batch_inputs
from qcompiler.passes.insert_observers import NothingToQuantizeError
from qcompiler.pipeline import default_pipeline


class QuantizedModel(torch.nn.Module):
    """A model whose INTEGER graph runs on the reference interpreter.

    Takes and returns float tensors, like the model it came from. The batch dimension may
    change; other dimensions must match the example inputs it was quantized with.
    """

    def __init__(self, graph_module: fx.GraphModule, example_inputs: tuple,
                 pipeline_result: Optional[PipelineResult] = None, target: str = "reference"):
        super().__init__()
        self.graph_module = graph_module
        self.target = target              # whose capabilities the passes quantized for
        self._example_inputs = example_inputs
        self._input_shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in example_inputs]
        self._input_dtypes = [t.dtype if isinstance(t, torch.Tensor) else None for t in example_inputs]
        self.pipeline_result = pipeline_result
        self._report: Optional[QuantReport] = None

    def check_inputs(self, inputs: tuple) -> None:
        if len(inputs) != len(self._input_shapes):
            raise ValueError(f"expected {len(self._input_shapes)} inputs, got {len(inputs)}")
        for i, (x, shape, dtype) in enumerate(zip(inputs, self._input_shapes, self._input_dtypes)):
            if shape is None:
                continue
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            if not dtype.is_floating_point:         # token ids and other integer inputs: as quantized
                if not isinstance(x, torch.Tensor) or x.dtype != dtype:
                    raise TypeError(f"input {i} must be a {dtype} tensor like the example input, got {got}")
            elif not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise TypeError(f"input {i} must be a float tensor, got {got}")
            if x.dim() != len(shape) or tuple(x.shape[1:]) != shape[1:]:
                raise ValueError(f"input {i} has shape {tuple(x.shape)}, but the model was quantized for "
                                 f"(N, {', '.join(map(str, shape[1:]))}); quantize again with "
                                 "example_inputs of the new shape")

    def forward(self, *inputs):
        self.check_inputs(inputs)
        with torch.no_grad():
            return self.graph_module(*inputs)

    def report(self) -> QuantReport:
        """Per layer: op, qparams and isolated SQNR vs float; and what was left in float."""
        if self._report is None:
            self._report = build_report(self.graph_module, self._example_inputs)
        return self._report

    def model_size_bytes(self) -> int:
        """Bytes of the weights, biases and buffers the integer model needs."""
        tensors = {id(t): t for t in itertools.chain(self.graph_module.parameters(),
                                                       self.graph_module.buffers())}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def integer_ops(self) -> list:
        return [m for m in self.graph_module.modules() if isinstance(m, IntegerOp)]


def _split_first(data: Iterable[Any]) -> tuple[Any, Iterable[Any]]:
    """The first batch, and an iterable that still yields every batch."""
    if isinstance(data, torch.Tensor):
        raise TypeError("calibration_data must be an iterable of batches (e.g. [x] or a DataLoader), "
                        "not a single tensor")
    it = iter(data)
    try:
        first = next(it)
    except StopIteration:
        from qcompiler.core.observers import CalibrationError
        raise CalibrationError("the calibration data is empty; give at least one batch") from None
    if it is data:                    # a one-shot iterator: put the first batch back
        return first, itertools.chain([first], it)
    return first, data


def quantize(model: torch.nn.Module, calibration_data: Iterable[Any], *,
             example_inputs: Optional[tuple] = None, config: Optional[QConfig] = None,
             target: str = "reference", pipeline: Optional[PassManager] = None,
             progress: bool = True, dump_dir: Optional[str] = None,
             leaf_modules=(), concrete_args: Optional[dict] = None, warn_float: bool = True) -> QuantizedModel:
    """Static post-training quantization: trace, run the pipeline, return the integer model.

    ``calibration_data`` is an iterable of input batches — a tensor or a tuple of tensors
    per batch; a DataLoader yielding ``(x, y)`` works (the leading entries are used).
    ``target`` selects the capabilities the passes quantize for (and is what ``compile`` builds
    for by default); ``pipeline`` replaces the default pass order; ``dump_dir`` writes the graph
    after every pass. ``warn_float``: warn, naming each module, when a layer stays in float.
    """
    first, calibration_data = _split_first(calibration_data)
    model = copy.deepcopy(model)
    if model.training:
        warnings.warn("quantize(): the model was in training mode; quantizing its eval() copy",
                      stacklevel=2)
        model.eval()
    if example_inputs is None:
        n_inputs = len([p for p in _forward_params(model)])
        example_inputs = batch_inputs(first, n_inputs)
    example_inputs = tuple(example_inputs)
    gm = trace(model, example_inputs, leaf_modules=leaf_modules, concrete_args=concrete_args)
    backend = get_backend(target)
    ctx = PassContext(config=config or QConfig(), capabilities=backend.capabilities, target=target,
                      calibration_data=calibration_data, example_inputs=example_inputs, progress=progress)
    try:
        result = (pipeline or default_pipeline(ctx.config)).run(gm, ctx, dump_dir=dump_dir)
    except PassError as exc:
        # the user's data or model, not a pass, is at fault: their sentence, without pass internals
        if isinstance(exc.__cause__, (CalibrationError, NothingToQuantizeError)):
            raise exc.__cause__ from None
        raise
    qm = QuantizedModel(result.graph_module, example_inputs, result, target)
    floats = float_layers(result.graph_module)
    if warn_float and floats:
        shown = "; ".join(floats[:8]) + ("; ..." if len(floats) > 8 else "")
        warnings.warn(f"quantize(): {len(floats)} op(s) stay in float: {shown}. They run in PyTorch "
                      "(qm.report() says why); quantize(..., warn_float=False) silences this.", stacklevel=2)
    return qm


def _forward_params(model: torch.nn.Module) -> list:
    import inspect
    params = inspect.signature(model.forward).parameters.values()
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.default is p.empty]


def compile(quantized_model: QuantizedModel, target: Optional[str] = None, *,  # noqa: A001
            pytorch_fallback: bool = True) -> torch.nn.Module:
    """Build ``quantized_model`` for ``target`` (default: the target it was quantized for);
    returns an nn.Module, float in, float out, equal to ``quantized_model(x)``.

    What the target does not cover runs in PyTorch between native segments (``describe()`` on
    the result lists them); ``pytorch_fallback=False`` makes that an error instead."""
    if not isinstance(quantized_model, QuantizedModel):
        raise TypeError("compile() takes the QuantizedModel returned by qcompiler.quantize()")
    target = target or quantized_model.target
    if quantized_model.target not in ("reference", target):
        warnings.warn(f"compile(): the model was quantized for {quantized_model.target!r}, not {target!r}; "
                      f"ops {target!r} lacks run in PyTorch (quantize(..., target={target!r}) picks from its "
                      "capabilities)", stacklevel=2)
    return get_backend(target).compile(quantized_model.graph_module, quantized_model._example_inputs,
                                       pytorch_fallback=pytorch_fallback)


__all__ = ["quantize", "compile", "QuantizedModel", "available_targets"]
