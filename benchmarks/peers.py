"""PyTorch's own int8 post-training quantization flows, used as peers in benchmarks.

Each flow takes a float model (eval mode), a list of calibration batches and an example
input, and returns a callable (an ``nn.Module``) mapping a float tensor to the float
output of the int8 model. The input model is never modified (a deep copy is quantized).

* ``pytorch_fx_int8``: ``torch.ao.quantization.quantize_fx`` (prepare_fx / convert_fx)
  with ``get_default_qconfig_mapping("x86")`` and the "x86" quantized engine; the result
  runs real int8 kernels (FBGEMM/oneDNN). Note that this default mapping observes
  activations with ``reduce_range=True`` (7-bit activations), which costs SQNR.
* ``pytorch_pt2e_int8``: ``torch.export`` + ``prepare_pt2e``/``convert_pt2e`` with
  ``X86InductorQuantizer`` and its default config. The PT2E entry points were removed
  from ``torch.ao`` and now ship in the ``torchao`` package (``pip install --no-deps
  torchao``; its wheels do not pin torch). The converted graph is the Q/DQ reference
  graph, evaluated in float (fake-quant simulation, not inductor-lowered kernels).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from qcompiler.core.report import sqnr_db  # noqa: F401 - re-exported for the benchmark scripts

__all__ = ["pytorch_fx_int8", "pytorch_pt2e_int8", "sqnr_db"]


def _set_x86_engine() -> None:
    engines = torch.backends.quantized.supported_engines
    if "x86" not in engines:
        raise RuntimeError(f"quantized engine 'x86' not supported here (have {engines})")
    torch.backends.quantized.engine = "x86"


def pytorch_fx_int8(
    model: nn.Module, calib_batches: Sequence[Tensor], example_input: Tensor
) -> nn.Module:
    """FX graph mode PTQ with PyTorch's x86 defaults; returns the converted int8 model."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    _set_x86_engine()
    m = copy.deepcopy(model).eval()
    qconfig_mapping = get_default_qconfig_mapping("x86")
    prepared = prepare_fx(m, qconfig_mapping, example_inputs=(example_input,))
    with torch.no_grad():
        for batch in calib_batches:
            prepared(batch)
    quantized = convert_fx(prepared)
    quantized.eval()
    return quantized


@contextlib.contextmanager
def _quiet():
    """Silence torchao's import-time chatter (optional CUDA extensions it cannot load)."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _import_pt2e():
    errors = []
    # torch.ao.quantization.quantize_pt2e was removed from torch; torchao hosts PT2E now.
    try:
        with _quiet():
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
        return prepare_pt2e, convert_pt2e, xiq
    except ImportError as e:
        errors.append(f"torchao: {e}")
    try:
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torch.ao.quantization.quantizer import x86_inductor_quantizer as xiq

        return prepare_pt2e, convert_pt2e, xiq
    except ImportError as e:
        errors.append(f"torch.ao: {e}")
    raise RuntimeError(
        "PT2E quantization is unavailable: torch "
        f"{torch.__version__} has no torch.ao.quantization.quantize_pt2e and the "
        "'torchao' package is not importable (install it with "
        "`pip install --no-deps torchao` so torch is left as it is). Errors: "
        + "; ".join(errors)
    )


def _export(model: nn.Module, example_input: Tensor):
    """torch.export the model; returns ``(graph_module, batch_is_dynamic)``.

    Strict (dynamo) export is tried first: it names every call of a module apart
    ("relu", "relu_1"), whereas non-strict export in this torch groups the calls of a
    module used twice (torchvision's BasicBlock reuses ``self.relu``) into one source
    partition, which X86InductorQuantizer rejects ("Input partition has more than one
    output node"). A dynamic batch dimension is tried before static shapes.
    """
    x2 = example_input
    if x2.shape[0] == 1:
        # A size-1 dimension is specialised by export; trace with two rows instead.
        x2 = torch.cat([x2, x2], dim=0)
    errors = []
    for strict in (True, False):
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            ep = torch.export.export(model, (x2,), dynamic_shapes=({0: batch},), strict=strict)
            return ep.module(), True
        except Exception as e:  # noqa: BLE001 - try the next, less demanding, export
            errors.append(f"strict={strict}, dynamic batch: {type(e).__name__}: {e}")
        try:
            ep = torch.export.export(model, (example_input,), strict=strict)
            return ep.module(), False
        except Exception as e:  # noqa: BLE001
            errors.append(f"strict={strict}, static: {type(e).__name__}: {e}")
    raise RuntimeError("torch.export failed:\n  " + "\n  ".join(errors))


class _StaticBatch(nn.Module):
    """Runs a statically shaped exported graph over inputs of any batch size."""

    def __init__(self, gm: nn.Module, batch: int) -> None:
        super().__init__()
        self.gm = gm
        self.batch = batch

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for chunk in x.split(self.batch):
            n = chunk.shape[0]
            if n < self.batch:
                pad = chunk[-1:].expand(self.batch - n, *chunk.shape[1:])
                outs.append(self.gm(torch.cat([chunk, pad]))[:n])
            else:
                outs.append(self.gm(chunk))
        return torch.cat(outs)


def pytorch_pt2e_int8(
    model: nn.Module, calib_batches: Sequence[Tensor], example_input: Tensor
) -> Callable[[Tensor], Tensor]:
    """PT2E PTQ with ``X86InductorQuantizer`` defaults; returns the converted Q/DQ graph
    (float simulation of the int8 model). Raises RuntimeError if PT2E is unavailable."""
    prepare_pt2e, convert_pt2e, xiq = _import_pt2e()

    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        exported, dynamic = _export(m, example_input)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calib_batches:
            if dynamic or batch.shape == example_input.shape:
                prepared(batch)
            else:
                _StaticBatch(prepared, example_input.shape[0])(batch)
    converted = convert_pt2e(prepared)
    with _quiet():
        from torchao.quantization.pt2e import move_exported_model_to_eval
    move_exported_model_to_eval(converted)
    return converted if dynamic else _StaticBatch(converted, example_input.shape[0])
