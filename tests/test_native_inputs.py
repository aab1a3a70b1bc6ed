"""What reaches native code: inputs of the wrong shape, rank, count, type, dtype or device are
rejected before the generated library runs; non-contiguous inputs (strided, transposed,
channels-last, expanded) reach it only as contiguous copies and give the contiguous result;
a bundle whose model.c was emptied or garbled says so, naming the source."""
import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler.backends.toolchain import ToolchainError

X86_OK, X86_WHY = qcompiler.available_targets()["x86"]
pytestmark = pytest.mark.skipif(not X86_OK, reason=f"x86 target unavailable: {X86_WHY}")
SHAPE = (2, 3, 6, 6)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    qm = qcompiler.quantize(model, [torch.randn(SHAPE)], progress=False)
    return qcompiler.compile(qm, target="x86"), qm


@pytest.fixture
def native_calls(models, monkeypatch):
    """Each call of the generated library's entry point: the (pointer, numel) of every input."""
    compiled = models[0]
    real = compiled.native.cdll.qc_model_run_checked
    calls = []

    def record(in_ptrs, in_numel, n_in, *rest):
        calls.append([(in_ptrs[i], in_numel[i]) for i in range(n_in)])
        return real(in_ptrs, in_numel, n_in, *rest)
    monkeypatch.setattr(compiled.native.cdll, "qc_model_run_checked", record)
    return calls


x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
REJECTED = {
    "narrower": ((x[..., :5],), ValueError, "compiled for"),
    "more channels": ((torch.randn(2, 4, 6, 6),), ValueError, "compiled for"),
    "rank 3": ((x[0],), ValueError, "compiled for"),
    "rank 5": ((x[None],), ValueError, "compiled for"),
    "no input": ((), ValueError, "expected 1 input"),
    "two inputs": ((x, x), ValueError, "expected 1 input"),
    "a list": ((x.tolist(),), TypeError, "torch.Tensor"),
    "a numpy array": ((x.numpy(),), TypeError, "torch.Tensor"),
    "int64": ((x.long(),), TypeError, "float"),
    "int32": ((x.int(),), TypeError, "float"),
    "uint8": ((x.to(torch.uint8),), TypeError, "float"),
    "bool": ((x > 0,), TypeError, "float"),
    "complex": ((x.to(torch.complex64),), TypeError, "float"),
    "meta device": ((x.to("meta"),), ValueError, "CPU"),
}


@pytest.mark.parametrize("inputs, error, message", REJECTED.values(), ids=REJECTED.keys())
def test_rejected_before_native_code_runs(models, native_calls, inputs, error, message):
    with pytest.raises(error, match=message):
        models[0](*inputs)
    assert native_calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_input_is_rejected(models, native_calls):
    with pytest.raises(ValueError, match="CPU"):
        models[0](x.cuda())
    assert native_calls == []


def _strided(t):
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1])
    wide[..., ::2] = t
    return wide[..., ::2]


NON_CONTIGUOUS = {
    "every other column": _strided,
    "transposed": lambda t: t.transpose(2, 3),
    "channels last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "expanded batch": lambda t: t[:1].expand(SHAPE),
    "requires grad": lambda t: t.clone().requires_grad_(),
}


@pytest.mark.parametrize("view", NON_CONTIGUOUS.values(), ids=NON_CONTIGUOUS.keys())
def test_non_contiguous_inputs_reach_native_code_as_contiguous_copies(models, native_calls, view):
    compiled, qm = models
    v = view(x)
    out = compiled(v)
    assert torch.equal(out, qm(v.detach().contiguous()))
    ((pointer, numel),) = native_calls[-1]
    assert numel == v.numel()
    if not v.is_contiguous():
        assert pointer != v.data_ptr()          # a copy, not the strided storage


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_run_as_their_float32_value(models, native_calls, dtype):
    """Other float dtypes are converted to float32, as the model's weights are (documented in
    docs/robustness.md); a run must equal the run on that float32 tensor."""
    compiled = models[0]
    v = x.to(dtype)
    assert torch.equal(compiled(v), compiled(v.float()))
    assert [numel for ((_, numel),) in native_calls] == [v.numel()] * 2


@pytest.mark.parametrize("content", ["", "this is not C {\n"], ids=["emptied", "garbled"])
def test_bundle_with_a_broken_model_c_names_it(models, tmp_path, content):
    from qcompiler.backends.native_model import load_bundle

    bundle = models[0].save(tmp_path / "bundle")
    (bundle / "model.c").write_text(content)
    with pytest.raises((ToolchainError, ValueError)) as err:
        load_bundle(bundle)
    message = str(err.value)
    assert "model.c" in message and "undefined symbol" not in message, message
