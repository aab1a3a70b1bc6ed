"""The default pass order, on one screen."""
from __future__ import annotations

from typing import Optional

from qcompiler.core.pass_manager import PassManager
from qcompiler.core.qconfig import QConfig
from qcompiler.passes import (Calibrate, ClipRanges, CorrectBias, FoldBatchNorm, FusePatterns,
                              FuseQDQ, InsertObservers, LowerToInteger, QuantizeWeights,
                              SmoothActivations)


def default_pipeline(config: Optional[QConfig] = None) -> PassManager:
    """float graph → INTEGER graph. Edit the returned manager to insert/replace/drop passes.

    ``config`` adds the optional passes it asks for: ``smoothing`` puts smooth_activations
    (float-preserving, → same state) right after fold_batchnorm, so that quantize_weights and
    the static passes see the smoothed weights."""
    pm = PassManager([
        FoldBatchNorm(),      # FLOAT → BN_FOLDED          conv/linear + BN folded (float-preserving)
        QuantizeWeights(),    #   (dynamic/weight-only/half layers: their float-in float-out ops)
        FusePatterns(),       # → FUSED                    conv/linear/add + relu/relu6/clamp marked
        InsertObservers(),    # → OBSERVED                 QConfig ∩ target capabilities decide what is int8
        Calibrate(),          # → CALIBRATED               batches streamed through observers
        ClipRanges(),         # → RANGES_CHOSEN            minmax / percentile / MSE / entropy
        CorrectBias(),        #   (float bias edit)        bias −= (W_q − W)·E[x], weight-rounding shift
        FuseQDQ(),            # → QDQ                      quantize/dequantize pairs, fake-quant weights
        LowerToInteger(),     # → INTEGER                  integer ops with explicit requantization
    ])
    if config is not None and config.smoothing is not None:
        pm.insert_after("fold_batchnorm", SmoothActivations(config.smoothing))
    return pm
