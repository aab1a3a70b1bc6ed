"""Tests for the model zoo (qcompiler.zoo): architecture fidelity, fx traceability,
synthetic data determinism and BatchNorm re-estimation."""

import math

import pytest
import torch
import torch.fx as fx
from torch import nn

from qcompiler.zoo import (
    MODELS,
    TinyTransformerClassifier,
    TransformerEncoderLayer,
    calibration_batches,
    mlp,
    mobilenet_v2,
    prepare_random_model,
    reestimate_batchnorm,
    resnet18,
    sample_inputs,
    smooth_random_images,
)

SMALL = 64  # image size for fast tests; adaptive pooling makes the convnets size-agnostic


#: builder arguments for a fast copy of the models whose shapes are fixed at construction
SMALL_KWARGS = {"vit_tiny": dict(img_size=SMALL, depth=2), "bert_encoder": dict(num_layers=2)}


def _small_model(name):
    return prepare_random_model(name, seed=0, calib_images=8, batch_size=4, size=SMALL,
                                **SMALL_KWARGS.get(name, {}))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_symbolic_trace_matches_eager(name):
    model = _small_model(name)
    gm = fx.symbolic_trace(model)
    x = sample_inputs(name, 2, size=SMALL, seed=5)
    with torch.no_grad():
        ref = model(x)
        out = gm(x)
    assert torch.isfinite(ref).all()
    assert torch.equal(ref, out)


def test_transformer_layer_traces_without_shape_queries():
    gm = fx.symbolic_trace(TransformerEncoderLayer())
    targets = {str(n.target) for n in gm.graph.nodes}
    assert "size" not in targets and "shape" not in targets
    # batch and sequence length stay free after tracing
    assert gm(torch.randn(3, 7, 64)).shape == (3, 7, 64)
    assert gm(torch.randn(1, 2, 64)).shape == (1, 2, 64)


@pytest.mark.parametrize("builder", [resnet18, mobilenet_v2])
def test_convnet_output_shape(builder):
    torch.manual_seed(0)
    model = builder().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
        assert model(torch.randn(2, 3, SMALL, SMALL)).shape == (2, 1000)
    assert builder(num_classes=10).eval()(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 10)


def test_resnet18_matches_torchvision_layout():
    model = resnet18()
    # torchvision.models.resnet18().parameters() count
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    sd = model.state_dict()
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in sd, key
    assert "layer1.0.downsample.0.weight" not in sd
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert model.maxpool.kernel_size == 3 and model.maxpool.stride == 2
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)


def test_resnet18_init():
    torch.manual_seed(0)
    model = resnet18()
    w = model.layer3[0].conv1.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(w.std().item() - math.sqrt(2.0 / fan_out)) < 0.05 * math.sqrt(2.0 / fan_out)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_mobilenet_v2_matches_torchvision_layout():
    model = mobilenet_v2()
    # torchvision.models.mobilenet_v2().parameters() count
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    sd = model.state_dict()
    for key in [
        "features.0.0.weight",
        "features.0.1.running_mean",
        "features.1.conv.0.0.weight",  # expand_ratio 1: depthwise first
        "features.1.conv.1.weight",
        "features.1.conv.2.weight",
        "features.2.conv.0.0.weight",  # expand
        "features.2.conv.1.0.weight",  # depthwise
        "features.2.conv.2.weight",  # project
        "features.2.conv.3.running_var",
        "features.18.0.weight",
        "classifier.1.weight",
    ]:
        assert key in sd, key
    assert len(model.features) == 19
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[0].p == 0.2
    assert sum(1 for m in model.modules() if getattr(m, "use_res_connect", False)) == 10
    dw = model.features[2].conv[1][0]
    assert dw.groups == dw.in_channels == dw.out_channels == 96
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 35
    assert abs(model.classifier[1].weight.std().item() - 0.01) < 0.001
    assert torch.all(model.classifier[1].bias == 0)


def test_mobilenet_v2_width_mult():
    model = mobilenet_v2(width_mult=0.5)
    assert model.features[0][0].out_channels == 16
    assert model.last_channel == 1280
    assert model.eval()(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 1000)


def test_transformer_layer_equals_torch_encoder_layer():
    torch.manual_seed(0)
    ours = TransformerEncoderLayer(d_model=64, nhead=4, dim_ff=128, dropout=0.0).eval()
    ref = nn.TransformerEncoderLayer(
        64, 4, 128, dropout=0.0, activation="gelu", batch_first=True, norm_first=False
    ).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(
            torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        )
        ref.self_attn.in_proj_bias.copy_(
            torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias])
        )
        ref.self_attn.out_proj.weight.copy_(ours.out_proj.weight)
        ref.self_attn.out_proj.bias.copy_(ours.out_proj.bias)
        ref.linear1.load_state_dict(ours.ff1.state_dict())
        ref.linear2.load_state_dict(ours.ff2.state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())
        x = torch.randn(3, 10, 64)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_tiny_transformer_and_mlp_shapes():
    assert TinyTransformerClassifier().eval()(torch.randn(4, 9, 32)).shape == (4, 10)
    m = mlp()
    assert [type(l) for l in m] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert m(torch.randn(5, 256)).shape == (5, 10)
    assert mlp(8, (4,), 3)(torch.randn(2, 8)).shape == (2, 3)


def test_smooth_random_images_deterministic_and_natural():
    a = smooth_random_images(4, size=SMALL, seed=3)
    b = smooth_random_images(4, size=SMALL, seed=3)
    c = smooth_random_images(4, size=SMALL, seed=4)
    assert a.shape == (4, 3, SMALL, SMALL) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # each image depends only on (seed, index)
    assert torch.equal(smooth_random_images(2, size=SMALL, seed=3), a[:2])
    # ImageNet-normalised pixels in [0, 1]: per-channel roughly N(0, 1), bounded
    x = smooth_random_images(16, size=SMALL, seed=0)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert torch.all(mean.abs() < 0.5), mean
    assert torch.all((std > 0.6) & (std < 1.5)), std
    assert x.min() >= -0.485 / 0.229 - 1e-4 and x.max() <= (1 - 0.406) / 0.225 + 1e-4
    # smooth: neighbouring pixels are strongly correlated
    dx = x[..., 1:] - x[..., :-1]
    assert dx.var() < 0.5 * x.var()


def test_calibration_batches():
    batches = calibration_batches(3, 2, size=32)
    assert len(batches) == 3 and all(b.shape == (2, 3, 32, 32) for b in batches)
    assert torch.equal(torch.cat(batches), smooth_random_images(6, size=32, seed=1))
    assert not torch.allclose(batches[0], smooth_random_images(2, size=32))  # eval seed 0
    assert torch.equal(batches[1], calibration_batches(3, 2, size=32)[1])


def test_reestimate_batchnorm_changes_running_stats():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.3)
    model = nn.Sequential(bn, nn.Dropout(0.5)).eval()
    batches = [torch.randn(4, 3, 8, 8) * 2 + 1 for _ in range(3)]
    reestimate_batchnorm(model, batches)
    # cumulative average of the per-batch statistics
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    varis = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, varis)
    assert bn.momentum == 0.3
    assert not model.training and not bn.training


def test_reestimate_batchnorm_on_resnet_restores_modes():
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    model.train()
    before = model.layer2[0].bn1.running_var.clone()
    reestimate_batchnorm(model, [smooth_random_images(2, size=32)])
    assert not torch.allclose(model.layer2[0].bn1.running_var, before)
    assert all(m.training for m in model.modules())  # flags restored as they were
    assert model.bn1.momentum == 0.1


def test_prepare_random_model_deterministic():
    a = _small_model("mobilenet_v2")
    b = _small_model("mobilenet_v2")
    assert not a.training
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    # BN statistics were re-estimated (not the initial zeros / ones)
    assert not torch.allclose(a.features[0][1].running_var, torch.ones(32))
    with pytest.raises(KeyError):
        prepare_random_model("nope")
