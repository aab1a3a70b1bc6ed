"""Synthetic data and randomly initialised models with realistic activation statistics.

No pretrained weights or data sets can be downloaded here, so the zoo models are
randomly initialised, and their BatchNorm statistics are re-estimated on synthetic
"smooth" images. Those images have a roughly 1/f spectrum (sums of bilinearly
upsampled low-resolution noise at several octaves plus blurred fine noise), strongly
correlated colour channels, bounded pixel values in [0, 1], and are then normalised
with the ImageNet mean/std, so each channel is roughly N(0, 1) like a real
torchvision input. Every image depends only on ``(seed, index)``: the first k images
of ``smooth_random_images(n, seed=s)`` are the same for every n >= k.

Seeds used by the benchmarks (kept apart so no image is both calibrated and scored):
``EVAL_SEED`` for evaluation images, ``CALIB_SEED`` for calibration batches and
``BN_SEED`` for BatchNorm re-estimation.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BN_SEED",
    "CALIB_SEED",
    "EVAL_SEED",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "calibration_batches",
    "prepare_random_model",
    "reestimate_batchnorm",
    "sample_inputs",
    "smooth_random_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EVAL_SEED = 0
CALIB_SEED = 1
BN_SEED = 2

# Sequence length / feature count of the default token inputs for the "transformer"
# zoo entry, and the feature count of the default "mlp".
TOKEN_SEQ_LEN = 16
TOKEN_FEATURES = 32
MLP_FEATURES = 256
# "bert_encoder": sequence length of the benchmarks; ids are drawn from the ordinary word
# pieces of the uncased BERT vocabulary (ids below 1996 are special, unused or single characters)
BERT_SEQ_LEN = 128
BERT_WORD_IDS = (1996, 30522)
BERT_CLS_ID, BERT_SEP_ID = 101, 102
# "lstm_classifier": steps and features per step
LSTM_SEQ_LEN = 24
LSTM_FEATURES = 32
IMAGE_MODELS = ("resnet18", "mobilenet_v2", "vit_tiny")


def _generator(seed: int, index: int) -> torch.Generator:
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    # The CPU generator (mt19937) keeps only 32 bits of its seed, so (seed, index) is
    # mixed into 32 bits by numpy's SeedSequence (a portable hash) rather than packed.
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)
    return torch.Generator().manual_seed(int(state[0]))


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(2.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = k1 / k1.sum()
    return (k1[:, None] * k1[None, :])[None, None]  # [1, 1, k, k]


def _standardize(x: Tensor) -> Tensor:
    return (x - x.mean()) / (x.std() + 1e-6)


def _one_image(g: torch.Generator, size: int, channels: int) -> Tensor:
    planes = 1 + channels  # one shared luminance plane + one chroma plane per channel
    field = torch.zeros(1, planes, size, size)
    # Octaves from size/4 down to size/64 (at least 2x2): equal amplitude per octave
    # gives an approximately 1/f^2 power spectrum, as in natural images.
    for k in range(2, 7):
        r = max(2, int(round(size / 2**k)))
        noise = torch.randn(1, planes, r, r, generator=g)
        field += F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    # Fine texture: full-resolution noise blurred by a small Gaussian.
    kernel = _gaussian_kernel(1.0)
    fine = torch.randn(planes, 1, size, size, generator=g)
    fine = F.conv2d(fine, kernel, padding=kernel.shape[-1] // 2)
    field += 0.3 * _standardize(fine).reshape(1, planes, size, size)

    lum = _standardize(field[0, 0])
    chroma = field[0, 1:]
    chroma = (chroma - chroma.mean()) / (chroma.std() + 1e-6)
    z = _standardize(lum[None] + 0.3 * chroma)  # [channels, size, size]

    contrast = math.exp(0.3 * float(torch.randn((), generator=g)))
    brightness = 0.4 * float(torch.randn((), generator=g))
    if channels == 3:
        mean = torch.tensor(IMAGENET_MEAN)
        std = torch.tensor(IMAGENET_STD)
    else:
        mean = torch.full((channels,), 0.45)
        std = torch.full((channels,), 0.226)
    logit_mean = torch.log(mean / (1 - mean))[:, None, None]
    pixels = torch.sigmoid(1.4 * contrast * z + brightness + logit_mean)  # in (0, 1)
    return (pixels - mean[:, None, None]) / std[:, None, None]


def smooth_random_images(n: int, size: int = 224, channels: int = 3, seed: int = 0) -> Tensor:
    """``n`` synthetic natural-looking images, ``float32[n, channels, size, size]``,
    ImageNet-normalised (each channel roughly N(0, 1)); deterministic in ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = torch.empty(n, channels, size, size)
    for i in range(n):
        out[i] = _one_image(_generator(seed, i), size, channels)
    return out


def calibration_batches(
    n_batches: int, batch_size: int, size: int = 224, seed: int = CALIB_SEED
) -> List[Tensor]:
    """``n_batches`` tensors of ``batch_size`` smooth images each (default seed differs
    from the evaluation seed, so calibration and evaluation images never coincide)."""
    images = smooth_random_images(n_batches * batch_size, size=size, seed=seed)
    return [b.contiguous() for b in images.split(batch_size)]


def sample_inputs(name: str, n: int, size: int = 224, seed: int = EVAL_SEED,
                  seq_len: Optional[int] = None) -> Tensor:
    """Inputs of the right shape for the zoo model ``name``: images of ``size`` for the
    convnets and "vit_tiny"; ``[n, TOKEN_SEQ_LEN, TOKEN_FEATURES]`` tokens for "transformer";
    ``[n, 256]`` for "mlp"; ``int64[n, seq_len]`` token ids ([CLS], word pieces, [SEP];
    default length 128) for "bert_encoder"; ``[n, seq_len or 24, 32]`` for "lstm_classifier".
    """
    if name in IMAGE_MODELS:
        return smooth_random_images(n, size=size, seed=seed)
    g = _generator(seed, 0)
    if name == "transformer":
        return torch.randn(n, TOKEN_SEQ_LEN, TOKEN_FEATURES, generator=g)
    if name == "mlp":
        return torch.randn(n, MLP_FEATURES, generator=g)
    if name == "bert_encoder":
        length = BERT_SEQ_LEN if seq_len is None else seq_len
        if length < 2:
            raise ValueError(f"bert_encoder inputs need seq_len >= 2 ([CLS] and [SEP]), got {length}")
        ids = torch.randint(*BERT_WORD_IDS, (n, length), generator=g)
        ids[:, 0], ids[:, -1] = BERT_CLS_ID, BERT_SEP_ID
        return ids
    if name == "lstm_classifier":
        return torch.randn(n, LSTM_SEQ_LEN if seq_len is None else seq_len, LSTM_FEATURES, generator=g)
    raise KeyError(f"unknown zoo model {name!r}")


def reestimate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Recompute every BatchNorm's running mean/var as the plain average over ``batches``.

    BN layers are reset and put in train mode with ``momentum=None`` (cumulative
    average); every other module runs in eval mode (Dropout off). Afterwards each
    module's ``training`` flag and each BN's momentum are restored. Returns ``model``.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    training = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for bn in bns:
            bn.momentum = momenta[bn]
        for m, flag in training.items():
            m.train(flag)
    return model


def _builders() -> dict:
    from . import MODELS  # late import: __init__ imports this module

    return MODELS


def prepare_random_model(
    name: str,
    seed: int = 0,
    calib_images: int = 64,
    batch_size: int = 16,
    size: int = 224,
    bn_seed: int = BN_SEED,
    builder: Optional[Callable[..., nn.Module]] = None,
    **kwargs,
) -> nn.Module:
    """Build zoo model ``name`` with ``torch.manual_seed(seed)`` random init; for models
    with BatchNorm, re-estimate its statistics on ``calib_images`` smooth images of
    ``size`` (seed ``bn_seed``, in batches of ``batch_size``). Returns the model in eval mode.
    ``kwargs`` go to the builder (e.g. ``num_classes``).
    """
    if builder is None:
        models = _builders()
        if name not in models:
            raise KeyError(f"unknown zoo model {name!r}; known: {sorted(models)}")
        builder = models[name]
    torch.manual_seed(seed)
    model = builder(**kwargs)
    model.eval()
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and calib_images > 0:
        n_batches = max(1, math.ceil(calib_images / batch_size))
        images = smooth_random_images(calib_images, size=size, seed=bn_seed)
        reestimate_batchnorm(model, images.split(batch_size)[:n_batches])
    return model.eval()
