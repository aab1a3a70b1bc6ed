"""Model zoo for tests, demos and benchmarks: faithful re-implementations of
torchvision's ResNet-18 and MobileNetV2, a small Transformer and an MLP, plus
synthetic image data and BN re-estimation for randomly initialised models."""

from typing import Callable, Dict

from torch import nn

from .images import (
    BN_SEED,
    CALIB_SEED,
    EVAL_SEED,
    calibration_batches,
    prepare_random_model,
    reestimate_batchnorm,
    sample_inputs,
    smooth_random_images,
)
from .mlp import mlp
from .mobilenet import MobileNetV2, mobilenet_v2
from .resnet import ResNet, resnet18
from .transformer import TinyTransformerClassifier, TransformerEncoderLayer

#: name -> builder; every builder works with no arguments. Use ``sample_inputs(name, n)``
#: for inputs of the matching shape.
MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "mlp": mlp,
    "transformer": TinyTransformerClassifier,
}

__all__ = [
    "BN_SEED",
    "CALIB_SEED",
    "EVAL_SEED",
    "MODELS",
    "MobileNetV2",
    "ResNet",
    "TinyTransformerClassifier",
    "TransformerEncoderLayer",
    "calibration_batches",
    "mlp",
    "mobilenet_v2",
    "prepare_random_model",
    "reestimate_batchnorm",
    "resnet18",
    "sample_inputs",
    "smooth_random_images",
]
