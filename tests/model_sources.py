"""The models of the model-coverage suite, each with its calibration batches and evaluation
input, small enough for the default test run.

torchvision's architectures are imported beside CPU torch: PyPI's torchvision 0.28.0 is a
CUDA build whose meta registrations fail to import there, and nothing these models use
needs them, so that module is stubbed. CI installs it with
``pip install --no-deps torchvision==0.28.0 pillow``.
"""
from __future__ import annotations

import sys
import types
from typing import Callable, List, NamedTuple, Optional

import torch
from torch import Tensor, nn

from qcompiler.zoo import (CALIB_SEED, EVAL_SEED, TinyTransformerClassifier, bert_encoder,
                           lstm_classifier, prepare_random_model, sample_inputs, smooth_random_images,
                           vit_tiny)

#: image side for the convnets and the ViT: every architecture here works at 64x64
IMAGE_SIZE = 64
#: token sequence length for the BERT encoder in the default run
BERT_SEQ_LEN = 32
NUM_CLASSES = 10


def import_torchvision():
    """torchvision, or None when it is not installed."""
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision


class Sample(NamedTuple):
    model: nn.Module
    calibration: List[Tensor]
    x: Tensor


def _images(model: nn.Module) -> Sample:
    calib = smooth_random_images(8, size=IMAGE_SIZE, seed=CALIB_SEED).split(4)
    return Sample(model, list(calib), smooth_random_images(4, size=IMAGE_SIZE, seed=EVAL_SEED))


def torchvision_model(name: str, **kwargs) -> Sample:
    """torchvision's architecture ``name``, randomly initialised (no weight downloads), its
    BatchNorm statistics re-estimated on 16 synthetic images."""
    tv = import_torchvision()
    model = prepare_random_model(name, calib_images=16, batch_size=8, size=IMAGE_SIZE,
                                 builder=lambda: getattr(tv.models, name)(num_classes=NUM_CLASSES, **kwargs))
    return _images(model)


def zoo_resnet18() -> Sample:
    return _images(prepare_random_model("resnet18", calib_images=16, batch_size=8, size=IMAGE_SIZE,
                                        num_classes=NUM_CLASSES))


def zoo_vit_tiny(depth: int = 2) -> Sample:
    torch.manual_seed(0)
    return _images(vit_tiny(img_size=IMAGE_SIZE, depth=depth, num_classes=NUM_CLASSES).eval())


def zoo_bert_encoder(num_layers: int = 2) -> Sample:
    torch.manual_seed(0)
    model = bert_encoder(num_layers=num_layers).eval()
    calib = [sample_inputs("bert_encoder", 4, seed=s, seq_len=BERT_SEQ_LEN) for s in (CALIB_SEED, 3)]
    return Sample(model, calib, sample_inputs("bert_encoder", 4, seed=EVAL_SEED, seq_len=BERT_SEQ_LEN))


def zoo_lstm_classifier() -> Sample:
    torch.manual_seed(0)
    model = lstm_classifier(num_classes=NUM_CLASSES).eval()
    calib = [sample_inputs("lstm_classifier", 8, seed=s) for s in (CALIB_SEED, 3)]
    return Sample(model, calib, sample_inputs("lstm_classifier", 4, seed=EVAL_SEED))


def zoo_tiny_transformer() -> Sample:
    torch.manual_seed(0)
    model = TinyTransformerClassifier().eval()
    calib = [sample_inputs("transformer", 8, seed=s) for s in (CALIB_SEED, 3)]
    return Sample(model, calib, sample_inputs("transformer", 4, seed=EVAL_SEED))


def bare_linear() -> Sample:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(CALIB_SEED)
    return Sample(nn.Linear(64, 32).eval(), [torch.randn(8, 64, generator=g) for _ in range(2)],
                  torch.randn(4, 64, generator=torch.Generator().manual_seed(EVAL_SEED)))


#: name -> the model, its calibration batches and its evaluation input
SOURCES: dict[str, Callable[[], Sample]] = {
    "mobilenet_v3_small": lambda: torchvision_model("mobilenet_v3_small"),
    "efficientnet_b0": lambda: torchvision_model("efficientnet_b0"),
    "shufflenet_v2_x0_5": lambda: torchvision_model("shufflenet_v2_x0_5"),
    "regnet_x_400mf": lambda: torchvision_model("regnet_x_400mf"),
    "convnext_tiny": lambda: torchvision_model("convnext_tiny"),
    "vit_tiny": zoo_vit_tiny,
    "bert_encoder": zoo_bert_encoder,
    "lstm_classifier": zoo_lstm_classifier,
    "tiny_transformer": zoo_tiny_transformer,
    "linear": bare_linear,
    "readme_example": zoo_resnet18,
}

TORCHVISION = ("mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5", "regnet_x_400mf",
               "convnext_tiny")


def build(name: str) -> Optional[Sample]:
    """The sample for ``name``; None for a torchvision model when torchvision is missing."""
    if name in TORCHVISION and import_torchvision() is None:
        return None
    return SOURCES[name]()
