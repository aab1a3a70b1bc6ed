"""A tiny CNN for scikit-learn's bundled 8x8 digits, its data, training and a weight cache.

Everything here is deterministic and offline: the data set ships with scikit-learn
(``sklearn.datasets.load_digits``), training takes a few seconds on two CPU cores, and the
trained weights are cached under ``$QCOMPILER_CACHE_DIR`` (default ``~/.cache/qcompiler``),
keyed by a hash of the architecture source, the training hyper-parameters and the torch
version, so a change to any of them retrains instead of loading stale weights.

The model is small but has what a real network has, so the demo exercises the whole pipeline:
Conv2d+BatchNorm2d+ReLU blocks (BN folding), a residual ``relu(bn(conv(x)) + x)`` (add+relu
fusion), a max-pool, flatten, dropout and Linear layers (linear+relu fusion).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

__all__ = [
    "DigitsCNN",
    "DigitsSplit",
    "TrainConfig",
    "DEFAULT_TRAIN_CONFIG",
    "load_digits_split",
    "train_digits_cnn",
    "evaluate_accuracy",
    "default_cache_dir",
    "digits_cache_path",
    "get_trained_digits_cnn",
]

NUM_CLASSES = 10


class DigitsCNN(nn.Module):
    """Input ``[N, 1, 8, 8]`` float (standardized pixels), output ``[N, 10]`` logits.

    ~41k parameters. Traceable with ``torch.fx.symbolic_trace``.
    """

    def __init__(self, width: int = 16, hidden: int = 64, dropout: float = 0.25):
        super().__init__()
        # stem: conv + BN + ReLU                                  [N, w, 8, 8]
        self.conv1 = nn.Conv2d(1, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        # residual block: relu(bn(conv(x)) + x)                   [N, w, 8, 8]
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)                              # [N, w, 4, 4]
        # widening block: conv + BN + ReLU                        [N, 2w, 4, 4]
        self.conv3 = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1, bias=True)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.relu3 = nn.ReLU()
        # classifier
        self.fc1 = nn.Linear(2 * width * 4 * 4, hidden)
        self.relu4 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)) + x)
        x = self.pool(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = torch.flatten(x, 1)
        x = self.dropout(self.relu4(self.fc1(x)))
        return self.fc2(x)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsSplit:
    """Standardized digits tensors: x ``[N, 1, 8, 8]`` float32, y ``[N]`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float


def load_digits_split(seed: int = 0, test_size: float = 0.2) -> DigitsSplit:
    """The 1,797 digits, split stratified and deterministically (80/20 by default).

    Pixels (0..16) are scaled to [0, 1], then standardized with the *training* set's
    mean and standard deviation (one scalar each, so no pixel divides by zero).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0
    labels = digits.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_size, random_state=seed, stratify=labels)
    mean = float(x_tr.mean())
    std = float(x_tr.std())

    def to_tensor(x):
        return torch.from_numpy((x - mean) / std).float().unsqueeze(1).contiguous()

    return DigitsSplit(to_tensor(x_tr), torch.from_numpy(y_tr), to_tensor(x_te),
                       torch.from_numpy(y_te), mean, std)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (part of the cache key)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


DEFAULT_TRAIN_CONFIG = TrainConfig()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 512) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(x), 1)


def train_digits_cnn(epochs: int = DEFAULT_TRAIN_CONFIG.epochs, seed: int = 0, *,
                     batch_size: int = DEFAULT_TRAIN_CONFIG.batch_size,
                     lr: float = DEFAULT_TRAIN_CONFIG.lr,
                     weight_decay: float = DEFAULT_TRAIN_CONFIG.weight_decay,
                     data: Optional[DigitsSplit] = None,
                     progress: bool = False) -> DigitsCNN:
    """Train a :class:`DigitsCNN` deterministically (Adam, one-cycle LR); returns it in eval mode.

    Training runs on one intra-op thread: the model is too small to gain from more, a
    busy machine then cannot slow it down by oversubscription, and the reduction order (so
    the weights) does not depend on the core count. The caller's thread count is restored.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(epochs, seed, batch_size, lr, weight_decay, data, progress)
    finally:
        torch.set_num_threads(threads)


def _train(epochs, seed, batch_size, lr, weight_decay, data, progress) -> DigitsCNN:
    data = data if data is not None else load_digits_split(seed)
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(data.x_train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(epochs * steps_per_epoch, 1))
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)

    epoch_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        epoch_iter = tqdm(epoch_iter, desc="training DigitsCNN", unit="epoch", leave=False)
    model.train()
    for _ in epoch_iter:
        perm = torch.randperm(len(data.x_train), generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$QCOMPILER_CACHE_DIR`` if set, else ``~/.cache/qcompiler``."""
    env = os.environ.get("QCOMPILER_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qcompiler"


def _source_of(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):  # no source shipped (e.g. a .pyc-only install)
        code = getattr(obj, "__code__", None)
        return repr(code.co_code) if code is not None else obj.__qualname__


# Captured here, not looked up at call time, so the key only depends on the code as written.
_KEYED_CODE = {"arch": DigitsCNN, "data": load_digits_split, "train": train_digits_cnn,
               "train_loop": _train}


def _cache_key(config: TrainConfig) -> str:
    payload = {name: _source_of(obj) for name, obj in _KEYED_CODE.items()}
    payload.update(config=config.__dict__, torch=torch.__version__)
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def digits_cache_path(cache_dir: Union[str, os.PathLike, None] = None,
                      config: TrainConfig = DEFAULT_TRAIN_CONFIG) -> Path:
    """Where the trained weights for ``config`` are (or would be) cached."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"digits_cnn-{_cache_key(config)}.pt"


def _atomic_save(state_dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state_dict, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; make it an ordinary shared-cache file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def get_trained_digits_cnn(cache_dir: Union[str, os.PathLike, None] = None,
                           retrain: bool = False, *,
                           config: TrainConfig = DEFAULT_TRAIN_CONFIG,
                           progress: bool = False) -> DigitsCNN:
    """The trained :class:`DigitsCNN` in eval mode, from the cache when possible.

    A cache file that cannot be loaded (truncated, corrupt, wrong keys) is reported with a
    ``RuntimeWarning`` and replaced by retraining. ``retrain=True`` ignores the cache and
    overwrites it. The returned model has ``loaded_from_cache`` set to True or False.
    """
    path = digits_cache_path(cache_dir, config)
    if not retrain and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = DigitsCNN()
            model.load_state_dict(state, strict=True)
            model.eval()
            model.loaded_from_cache = True
            return model
        except Exception as exc:  # corrupt / truncated / incompatible file
            warnings.warn(f"could not load cached DigitsCNN weights from {path} "
                          f"({type(exc).__name__}: {exc}); retraining", RuntimeWarning,
                          stacklevel=2)
    model = train_digits_cnn(config.epochs, config.seed, batch_size=config.batch_size,
                             lr=config.lr, weight_decay=config.weight_decay, progress=progress)
    _atomic_save(model.state_dict(), path)
    model.loaded_from_cache = False
    return model
