"""nn.Module → torch.fx.GraphModule, with errors that point at the user's source line."""
from __future__ import annotations

import linecache
import traceback
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx

from .meta import GraphState, graph_info


class TraceError(RuntimeError):
    """The model could not be traced; the message shows the line and how to get around it."""


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: Sequence[type] = (), leaf_names: Sequence[str] = ()):
        super().__init__()
        self._leaf_types = tuple(leaf_modules)
        self._leaf_names = set(leaf_names)

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        from .observers import Observer          # observers stay calls when re-tracing
        if isinstance(m, Observer):
            return True
        if qualname in self._leaf_names or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


def _user_frame(exc: BaseException) -> Optional[traceback.FrameSummary]:
    """The innermost frame of the traceback that is not torch or qcompiler code."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        f = frame.filename.replace("\\", "/")
        if "/torch/" not in f and "/qcompiler/core/" not in f:
            return frame
    return None


def trace(model: torch.nn.Module, example_inputs: Optional[Iterable[Any]] = None, *,
          leaf_modules: Sequence[type] = (), leaf_names: Sequence[str] = (),
          concrete_args: Optional[dict] = None) -> fx.GraphModule:
    """Symbolically trace ``model`` into a float GraphModule.

    ``leaf_modules`` (types) and ``leaf_names`` (module paths) are kept as opaque calls
    instead of being traced through — the way around data-dependent control flow inside a
    submodule. ``concrete_args`` fixes arguments (e.g. flags) to constants. When
    ``example_inputs`` are given the traced graph is run once on them and compared with
    the eager model, so a silently wrong trace is caught here rather than later.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"qcompiler.trace expects an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() before quantizing "
                         "(BatchNorm folding and dropout removal assume eval semantics)")
    tracer = _Tracer(leaf_modules, leaf_names)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # noqa: BLE001 - re-raised with the user's source line
        frame = _user_frame(exc)
        where = ""
        if frame is not None:
            line = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
            where = f"\n  at {frame.filename}:{frame.lineno} in {frame.name}\n      {line}"
        raise TraceError(
            f"cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}{where}\n"
            "torch.fx traces symbolically, so Python control flow on tensor values cannot be "
            "recorded. Ways around it: mark the submodule that contains this line as a leaf "
            "(trace(..., leaf_modules=[ThatModule]) or leaf_names=['path.to.module']), or fix "
            "the argument that drives the branch with concrete_args={'name': value}."
        ) from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    graph_info(gm).states.add(GraphState.FLOAT)
    if example_inputs is not None:
        _check_trace(model, gm, tuple(example_inputs))
    return gm


def _check_trace(model, gm, example_inputs) -> None:
    with torch.no_grad():
        try:
            expected = model(*example_inputs)
        except Exception as exc:  # noqa: BLE001 - the data, not the trace, is at fault
            shapes = ", ".join(f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                               for t in example_inputs)
            raise TraceError(f"the float {type(model).__name__} fails on the example inputs ({shapes}), the "
                             f"first calibration batch unless example_inputs= is given: {type(exc).__name__}: "
                             f"{exc}. Give inputs the float model accepts (dtype, shape)") from exc
        got = gm(*example_inputs)
    flat_e, flat_g = _flatten(expected), _flatten(got)
    if len(flat_e) != len(flat_g) or not all(
            torch.allclose(e, g, rtol=1e-4, atol=1e-5, equal_nan=True) for e, g in zip(flat_e, flat_g)):
        raise TraceError(f"the traced {type(model).__name__} does not reproduce the eager model on "
                         "example_inputs; a branch was probably fixed during tracing — pass "
                         "concrete_args or leaf_modules for the part that depends on input values")


def _flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return []
