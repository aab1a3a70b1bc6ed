"""End-to-end: the digits CNN, its weight cache, ``run_demo`` and the CLI."""
from __future__ import annotations

import io
import json
import math
import os

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from qcompiler.zoo import digits
from qcompiler.zoo.digits import (DigitsCNN, TrainConfig, digits_cache_path,
                                  get_trained_digits_cnn, load_digits_split)

FAST = TrainConfig(epochs=2)  # for the cache tests: the weights' quality does not matter there

REQUIRED_KEYS = {
    "float_accuracy", "int8_accuracy", "sqnr_db", "float_size_bytes", "int8_size_bytes",
    "float_latency_batch1_ms", "int8_latency_batch1_ms", "float_latency_full_ms",
    "int8_latency_full_ms", "requant_mode", "layers",
}


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """One cache dir for the module (so the full training runs once), via the env variable."""
    cache = tmp_path_factory.mktemp("qcompiler-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QCOMPILER_CACHE_DIR", str(cache))
        yield cache


def _quiet_console() -> Console:
    return Console(file=io.StringIO(), width=140)


# --------------------------------------------------------------------------- model and data


def test_model_is_small_and_traceable():
    model = DigitsCNN().eval()
    assert sum(p.numel() for p in model.parameters()) < 100_000
    gm = torch.fx.symbolic_trace(model)
    kinds = {type(m) for m in model.modules()}
    assert {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d,
            torch.nn.Dropout, torch.nn.Linear} <= kinds
    assert any(n.op == "call_function" and "add" in str(n.target) for n in gm.graph.nodes)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(gm(x), model(x))
    assert model(x).shape == (5, 10)


def test_split_is_deterministic_stratified_and_standardized():
    a, b = load_digits_split(seed=0), load_digits_split(seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.x_train.dtype == torch.float32
    assert len(a.x_train) + len(a.x_test) == 1797
    assert abs(len(a.x_test) / 1797 - 0.2) < 0.01
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3
    counts = torch.bincount(a.y_test, minlength=10)
    assert int(counts.min()) >= 35  # every class is represented (~36 each)


# --------------------------------------------------------------------------- cache


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("QCOMPILER_CACHE_DIR", str(tmp_path))
    assert digits_cache_path().parent == tmp_path
    assert digits_cache_path(config=FAST) != digits_cache_path()  # hyper-parameters are keyed


def test_cache_is_reused(tmp_path, monkeypatch):
    first = get_trained_digits_cnn(cache_dir=tmp_path, config=FAST)
    assert first.loaded_from_cache is False and not first.training
    path = digits_cache_path(tmp_path, FAST)
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a valid cache file exists")

    monkeypatch.setattr(digits, "train_digits_cnn", no_training)
    second = get_trained_digits_cnn(cache_dir=tmp_path, config=FAST)
    assert second.loaded_from_cache is True and not second.training
    assert path.stat().st_mtime_ns == mtime
    for (k, v), (k2, v2) in zip(first.state_dict().items(), second.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_retrain_flag_ignores_cache(tmp_path):
    get_trained_digits_cnn(cache_dir=tmp_path, config=FAST)
    again = get_trained_digits_cnn(cache_dir=tmp_path, retrain=True, config=FAST)
    assert again.loaded_from_cache is False


@pytest.mark.parametrize("garbage", [b"", b"not a torch file at all", b"PK\x03\x04truncated"])
def test_corrupt_cache_retrains_with_warning(tmp_path, garbage):
    path = digits_cache_path(tmp_path, FAST)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(garbage)
    with pytest.warns(RuntimeWarning, match="retraining"):
        model = get_trained_digits_cnn(cache_dir=tmp_path, config=FAST)
    assert model.loaded_from_cache is False
    state = torch.load(path, weights_only=True)  # the file was rewritten and is valid now
    DigitsCNN().load_state_dict(state)
    assert get_trained_digits_cnn(cache_dir=tmp_path, config=FAST).loaded_from_cache is True


def test_wrong_state_dict_in_cache_retrains(tmp_path):
    path = digits_cache_path(tmp_path, FAST)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.warns(RuntimeWarning):
        assert get_trained_digits_cnn(cache_dir=tmp_path, config=FAST).loaded_from_cache is False


# --------------------------------------------------------------------------- demo and CLI


def test_run_demo_end_to_end(cache_env, tmp_path):
    from qcompiler.demo import run_demo

    out = tmp_path / "demo.json"
    console = _quiet_console()
    result = run_demo(json_path=out, console=console, latency_budget_s=0.2, threads=1)
    written = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(written)
    assert written["requant_mode"] == "fp32"
    assert written["float_accuracy"] == pytest.approx(result["float_accuracy"])
    for key in ("float_accuracy", "int8_accuracy"):
        assert 0.0 <= written[key] <= 1.0
    assert written["float_accuracy"] >= 0.95
    assert written["int8_accuracy"] >= written["float_accuracy"] - 0.01
    assert written["sqnr_db"] is None or written["sqnr_db"] > 10
    assert 0 < written["int8_size_bytes"] < written["float_size_bytes"]
    for key in ("float_latency_batch1_ms", "int8_latency_batch1_ms",
                "float_latency_full_ms", "int8_latency_full_ms"):
        assert written[key] > 0 and math.isfinite(written[key])
    assert written["layers"]  # the per-layer report made it into the JSON
    text = console.file.getvalue()
    assert "test accuracy" in text and "SQNR" in text

    # the float weights are cached now: a second run loads them instead of training
    cached = list(cache_env.glob("digits_cnn-*.pt"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = run_demo(console=_quiet_console(), latency_budget_s=0.2, threads=1)
    assert again["float_model_from_cache"] is True
    assert again["float_accuracy"] == result["float_accuracy"]
    assert again["torch_threads"] == 1
    assert cached[0].stat().st_mtime_ns == mtime


def test_run_demo_rejects_unknown_requant_mode():
    from qcompiler.demo import run_demo

    with pytest.raises(ValueError, match="requant_mode"):
        run_demo(requant_mode="float16", console=_quiet_console())


def test_cli_demo_fixed_point_writes_json(cache_env, tmp_path):
    from qcompiler.cli import main

    out = tmp_path / "fixed.json"
    args = ["demo", "--requant-mode", "fixed_point", "--threads", "1", "--json", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(data)
    assert data["requant_mode"] == "fixed_point"
    assert data["int8_accuracy"] >= data["float_accuracy"] - 0.01


def test_cli_rejects_bad_requant_mode():
    from qcompiler.cli import main

    res = CliRunner().invoke(main, ["demo", "--requant-mode", "bogus"])
    assert res.exit_code != 0 and "bogus" in res.output


def test_cli_passes_prints_pipeline():
    import qcompiler
    from qcompiler.cli import main

    res = CliRunner().invoke(main, ["passes"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert res.output.strip() == qcompiler.default_pipeline().describe().strip()
    assert "fold_batchnorm" in res.output


def test_sqnr_helper():
    from qcompiler.demo import sqnr_db

    f = torch.tensor([3.0, 4.0])
    assert sqnr_db(f, f) == math.inf
    assert sqnr_db(f, f + torch.tensor([0.3, 0.4])) == pytest.approx(20.0)
