"""Model zoo for tests, demos and benchmarks: faithful re-implementations of
torchvision's ResNet-18 and MobileNetV2, a ViT (DeiT-Tiny), a BERT encoder (with
all-MiniLM-L6-v2's real weights when its package is installed), an LSTM classifier, a
small Transformer and an MLP, plus synthetic image data and BN re-estimation for
randomly initialised models."""

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
from .bert import BertEncoder, bert_encoder
from .lstm import LSTMClassifier, lstm_classifier
from .mlp import mlp
from .mobilenet import MobileNetV2, mobilenet_v2
from .resnet import ResNet, resnet18
from .transformer import TinyTransformerClassifier, TransformerEncoderLayer
from .vit import VisionTransformer, vit_tiny

#: name -> builder; every builder works with no arguments. Use ``sample_inputs(name, n)``
#: for inputs of the matching shape.
MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "mlp": mlp,
    "transformer": TinyTransformerClassifier,
    "vit_tiny": vit_tiny,
    "bert_encoder": bert_encoder,
    "lstm_classifier": lstm_classifier,
}

__all__ = [
    "BN_SEED",
    "BertEncoder",
    "CALIB_SEED",
    "EVAL_SEED",
    "LSTMClassifier",
    "MODELS",
    "MobileNetV2",
    "ResNet",
    "TinyTransformerClassifier",
    "TransformerEncoderLayer",
    "VisionTransformer",
    "bert_encoder",
    "calibration_batches",
    "lstm_classifier",
    "mlp",
    "mobilenet_v2",
    "prepare_random_model",
    "reestimate_batchnorm",
    "resnet18",
    "sample_inputs",
    "smooth_random_images",
    "vit_tiny",
]
