"""Bad input, bad data, bad files: each gets a clear error or a documented behaviour, and
nothing is lost (docs/robustness.md lists what each case gets).

Model- and data-level cases run on every target; native cases (bundles, batches, threads) on
the compiled targets available here.
"""
import threading

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler.core.observers import CalibrationError
from qcompiler.core.tracing import TraceError
from qcompiler.passes.insert_observers import NothingToQuantizeError

TARGETS = [name for name, (ok, _) in qcompiler.available_targets().items() if ok]
COMPILED = [t for t in TARGETS if t != "reference"]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def quantize(model, batches, **kw):
    return qcompiler.quantize(model, batches, progress=False, **kw)


# -- the model ----------------------------------------------------------------------------------

def test_nothing_to_quantize_says_so_plainly():
    with pytest.raises(NothingToQuantizeError, match=r"nothing to quantize.*its ops: relu"):
        quantize(nn.Sequential(nn.ReLU()), [torch.randn(2, 4)])


def test_untraceable_model_names_the_line_and_the_way_around():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(TraceError, match=r"leaf_modules.*concrete_args"):
        quantize(Branchy(), [torch.randn(2, 4)])


def test_unsupported_op_runs_in_pytorch_and_is_named():
    class WithErf(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.erf(self.a(x)))

    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="erf"):
        qm = quantize(WithErf().eval(), [x])
    for target in COMPILED:
        compiled = qcompiler.compile(qm, target=target)
        assert torch.equal(compiled(x), qm(x))
        assert "erf" in compiled.describe()
        with pytest.raises(Exception, match="erf"):
            qcompiler.compile(qm, target=target, pytorch_fallback=False)


# -- calibration data ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_calibration_names_the_batch(value):
    bad = torch.randn(4, 16)
    bad[1, 3] = value
    with pytest.raises(CalibrationError, match=r"calibration batch 1: .*NaN or Inf"):
        quantize(mlp(), [torch.randn(4, 16), bad])


@pytest.mark.parametrize("data", [[], iter([])], ids=["empty list", "empty iterator"])
def test_empty_calibration(data):
    with pytest.raises(CalibrationError, match="empty|no batches"):
        quantize(mlp(), data)


def test_int_typed_calibration_names_the_dtype():
    with pytest.raises(TraceError, match=r"torch.int64 \[4, 16\].*dtype"):
        quantize(mlp(), [torch.ones(4, 16, dtype=torch.int64)])


def test_wrong_shape_batch_names_its_index_and_the_expected_shape():
    with pytest.raises(CalibrationError, match=r"batch 2 \(torch.float32 \[4, 32\]\).*example inputs are torch.float32 \[4, 16\]"):
        quantize(mlp(), [torch.randn(4, 16), torch.randn(4, 16), torch.randn(4, 32)])


def test_generator_calibration_works():
    x = torch.randn(4, 16)
    qm = quantize(mlp(), (torch.randn(4, 16) for _ in range(3)))
    assert qm(x).shape == (4, 4)


def test_all_zero_calibration_warns_and_names_the_tensor():
    with pytest.warns(UserWarning, match=r"exactly zero in every calibration batch \(input"):
        quantize(mlp(), [torch.zeros(4, 16)])


@pytest.mark.parametrize("scale", [1e-12, 1e6])
@pytest.mark.parametrize("target", TARGETS)
def test_extreme_input_scales_quantize_and_stay_exact(scale, target):
    x = torch.randn(8, 16) * scale
    qm = quantize(mlp(), [x], target=target)
    compiled = qcompiler.compile(qm, target=target)
    assert torch.equal(compiled(x), qm(x))
    assert torch.isfinite(qm(x)).all()


# -- the int32 accumulator ----------------------------------------------------------------------

def test_pruned_channel_keeps_its_negative_bias():
    """An all-zero (pruned) weight row with bias -10: its weight range is exactly 0, so its
    scale is 1.0, not the smallest float; the int32 bias at s_x * s_w is then ordinary. (It
    was clamped to -2^31 silently: -5.2 instead of -10.)"""
    m = nn.Sequential(nn.Linear(16, 4)).eval()
    with torch.no_grad():
        m[0].weight[0].zero_()
        m[0].bias.copy_(torch.tensor([-10.0, 0.5, 0.1, -0.1]))
    x = torch.randn(8, 16)
    qm = quantize(m, [torch.randn(8, 16)])
    assert torch.allclose(qm(x)[:, 0], torch.full((8,), -10.0), atol=0.05)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_bias_past_int32_keeps_the_layer_in_float_with_a_note(sign):
    m = nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        m[0].weight.fill_(1e-9)          # weight scale at its floor (1.2e-7): s_x * s_w ~ 1e-8
        m[0].bias.fill_(sign * 100.0)
    x = torch.randn(8, 16)
    with pytest.warns(UserWarning, match="stay in float"):
        qm = quantize(m, [x], target="x86" if COMPILED else "reference")
    assert any("bias does not fit int32" in line for line in qm.report().notes), qm.report().notes
    for target in COMPILED:            # it runs in PyTorch between native segments
        assert torch.equal(qcompiler.compile(qm, target=target)(x), qm(x))


@pytest.mark.parametrize("target", TARGETS)
def test_k8192_at_full_range_is_exact(target):
    """K = 8192 with inputs and weights at the ends of their ranges: the accumulator proof
    holds (8192 * 255 * 127 < 2^31) and every target agrees bit for bit."""
    m = nn.Sequential(nn.Linear(8192, 4)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.sign(torch.randn(4, 8192)) * 0.01)
        m[0].bias.zero_()
    x = torch.sign(torch.randn(2, 8192))
    qm = quantize(m, [x], target=target)
    assert torch.equal(qcompiler.compile(qm, target=target)(x), qm(x))


# -- run time -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiled_models():
    x = torch.randn(8, 16)
    qm = quantize(mlp(), [x], target="x86" if COMPILED else "reference")
    return x, qm, {t: qcompiler.compile(qm, target=t) for t in TARGETS}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("target", TARGETS)
def test_non_finite_input_is_refused(compiled_models, target, value):
    x, qm, models = compiled_models
    bad = x.clone()
    bad[3, 5] = value
    with pytest.raises(ValueError, match="NaN or an infinity"):
        models[target](bad)
    with pytest.raises(ValueError, match="NaN or an infinity"):
        qm(bad)


@pytest.mark.parametrize("target", TARGETS)
def test_huge_finite_input_saturates_exactly(compiled_models, target):
    x, qm, models = compiled_models
    huge = x * 1e30
    assert torch.equal(models[target](huge), qm(huge))


@pytest.mark.parametrize("target", TARGETS)
def test_empty_batch_gives_an_empty_output(compiled_models, target):
    _, qm, models = compiled_models
    out = models[target](torch.empty(0, 16))
    assert out.shape == (0, 4)


@pytest.mark.parametrize("target", COMPILED)
def test_profile_at_another_batch_behaves_as_forward(compiled_models, target):
    _, _, models = compiled_models
    steps = models[target].profile(torch.randn(1, 16), repeats=1, warmup=0)
    assert steps and all(s["ms"] >= 0 for s in steps)


@pytest.mark.parametrize("target", COMPILED)
def test_threads_at_a_new_batch_size_build_it_once_and_agree(compiled_models, target):
    _, qm, models = compiled_models
    model = models[target]
    x = torch.randn(5, 16)
    built, recompile = [], model._recompile
    model._recompile = lambda n: built.append(n) or recompile(n)
    errors, outs = [], []

    def call():
        try:
            for _ in range(50):
                outs.append(model(x))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model._recompile = recompile
    assert not errors and built == [5]
    expected = qm(x)
    assert len(outs) == 200 and all(torch.equal(o, expected) for o in outs)


# -- bundles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", COMPILED)
def test_corrupt_weights_are_refused_and_a_repaired_bundle_loads(compiled_models, target, tmp_path):
    from qcompiler.backends.native_model import NativeModelError, load_bundle

    x, qm, models = compiled_models
    root = models[target].save(tmp_path / "bundle")
    weights = (root / "weights.bin").read_bytes()
    corrupt = bytearray(weights)
    corrupt[len(corrupt) // 2] ^= 0xFF
    (root / "weights.bin").write_bytes(bytes(corrupt))
    with pytest.raises(NativeModelError, match="weights do not match"):
        load_bundle(root)
    (root / "weights.bin").write_bytes(weights)
    assert torch.equal(load_bundle(root)(x), qm(x))


@pytest.mark.parametrize("target", COMPILED)
def test_garbled_manifest_names_the_file(compiled_models, target, tmp_path):
    from qcompiler.backends.native_model import load_bundle

    root = compiled_models[2][target].save(tmp_path / "bundle")
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest.json: not a readable bundle manifest"):
        load_bundle(root)


@pytest.mark.parametrize("target", COMPILED)
def test_native_init_refuses_other_weights_for_a_loaded_model(compiled_models, target):
    """The library keeps one private copy of its weights per process: loading different bytes
    through it (past the Python check) is an error, not a silent reuse of the old copy."""
    from qcompiler.backends.native_model import ExecutableProgram, NativeModelError

    model = compiled_models[2][target]
    native = model.native
    other = bytearray(native.weights)
    other[-1] ^= 0x01
    if isinstance(native, ExecutableProgram):   # a program reads its weights per run: refused before it runs
        with pytest.raises(NativeModelError, match="weights do not match"):
            ExecutableProgram(native.path, bytes(other), native.runner)
        return
    assert native.cdll.qc_model_init(bytes(other), len(other)) == -2
    assert native.cdll.qc_model_init(native.weights, len(native.weights)) == 0


@pytest.mark.parametrize("target", COMPILED)
def test_wrong_dtype_at_another_batch_size_builds_nothing(compiled_models, target):
    model = compiled_models[2][target]
    built, recompile = [], model._recompile
    model._recompile = lambda n: built.append(n) or recompile(n)
    try:
        with pytest.raises(TypeError, match="float"):
            model(torch.ones(3, 16, dtype=torch.int64))
        with pytest.raises(ValueError, match="CPU"):
            model(torch.ones(7, 16, device="meta"))
    finally:
        model._recompile = recompile
    assert built == []


@pytest.mark.parametrize("target", COMPILED)
def test_emptied_bundle_source_names_the_bundle(compiled_models, target, tmp_path):
    from qcompiler.backends.native_model import load_bundle

    root = compiled_models[2][target].save(tmp_path / "bundle")
    (root / "model.c").write_text("")
    with pytest.raises(Exception, match=rf"bundle {root}.*model.c") as exc:
        load_bundle(root)
    assert "undefined symbol" not in str(exc.value)
