"""What the user asks for (QConfig) and what a target can do (Capabilities).

insert_observers intersects the two; no pass ever tests a backend's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

from .qtypes import QType, qtype

GRANULARITIES = ("per_tensor", "per_channel")
OBSERVERS = ("minmax", "moving_average", "histogram")
RANGE_METHODS = ("minmax", "percentile", "mse", "entropy")
REQUANT_MODES = ("fp32", "fixed_point")


def check_alpha(alpha) -> float:
    """A SmoothQuant migration strength: a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be a number in [0, 1] (0: scales from the weights only, "
                         f"1: from the activations only; 0.5 is SmoothQuant's default), got {alpha!r}")
    return float(alpha)


@dataclass(frozen=True)
class TensorSpec:
    """How one kind of tensor (activations or weights) is quantized."""

    dtype: str
    symmetric: bool
    granularity: str = "per_tensor"
    observer: str = "minmax"
    range_method: str = "minmax"

    def __post_init__(self):
        qtype(self.dtype)
        for value, allowed, what in ((self.granularity, GRANULARITIES, "granularity"),
                                     (self.observer, OBSERVERS, "observer"),
                                     (self.range_method, RANGE_METHODS, "range_method")):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose one of {allowed}")
        if self.range_method != "minmax" and self.observer != "histogram":
            raise ValueError(f"range_method={self.range_method!r} needs observer='histogram'")

    @property
    def qtype(self) -> QType:
        return qtype(self.dtype)


@dataclass(frozen=True)
class QConfig:
    """A quantization recipe.

    ``overrides`` maps a module path (e.g. ``"layer1.0.conv1"`` or ``"fc"``) to another
    QConfig for that layer (mixed precision) or to ``None`` to keep the layer in float.
    """

    activation: TensorSpec = TensorSpec("uint8", symmetric=False, observer="histogram",
                                        range_method="mse")
    weight: TensorSpec = TensorSpec("int8_narrow", symmetric=True, granularity="per_channel")
    requant_mode: str = "fp32"
    percentile: float = 99.99
    # MSE range search: weight of clipping error vs rounding error. Clipped values are the
    # large activations; their error reaches later layers coherently, while rounding noise
    # is averaged by every following dot product. 4 measured best on ResNet-18/MobileNetV2
    # (benchmarks/sqnr_models.py); 1 is the plain MSE.
    clip_penalty: float = 4.0
    # subtract the mean output shift caused by weight rounding (passes/correct_bias.py)
    bias_correction: bool = True
    # SmoothQuant migration strength alpha in [0, 1] (passes/smooth_activations.py); None: off
    smoothing: Optional[float] = None
    overrides: Mapping[str, Optional["QConfig"]] = field(default_factory=dict)

    def __post_init__(self):
        if self.requant_mode not in REQUANT_MODES:
            raise ValueError(f"unknown requant_mode {self.requant_mode!r}; choose one of {REQUANT_MODES}")
        if self.activation.granularity != "per_tensor":
            raise ValueError("activations are quantized per tensor")
        if self.smoothing is not None:
            check_alpha(self.smoothing)

    def for_layer(self, path: str) -> Optional["QConfig"]:
        """The config of a layer: the longest matching override prefix, else self."""
        best, best_len = self, -1
        for prefix, cfg in self.overrides.items():
            if (path == prefix or path.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = cfg, len(prefix)
        return best

    def restricted_to(self, caps: "Capabilities") -> tuple["QConfig", list]:
        """This recipe narrowed to what a target supports, with a note per change."""
        notes, act, weight, mode = [], self.activation, self.weight, self.requant_mode
        if act.dtype not in caps.activation_dtypes:
            notes.append(f"activations {act.dtype} unsupported by the target, using "
                         f"{caps.preferred_activation_dtype}")
            act = replace(act, dtype=caps.preferred_activation_dtype)
        if weight.dtype not in caps.weight_dtypes:
            fallback = "int8_narrow" if "int8_narrow" in caps.weight_dtypes else sorted(caps.weight_dtypes)[0]
            notes.append(f"weights {weight.dtype} unsupported by the target, using {fallback}")
            weight = replace(weight, dtype=fallback)
        if weight.granularity not in caps.weight_granularities:
            other = sorted(caps.weight_granularities)[0]
            notes.append(f"{weight.granularity} weights unsupported by the target, using {other}")
            weight = replace(weight, granularity=other)
        if not weight.symmetric and not caps.asymmetric_weights:
            notes.append("asymmetric weights unsupported by the target, using symmetric")
            weight = replace(weight, symmetric=True)
        if mode not in caps.requant_modes:
            notes.append(f"requant mode {mode} unsupported by the target, using {sorted(caps.requant_modes)[0]}")
            mode = sorted(caps.requant_modes)[0]
        return replace(self, activation=act, weight=weight, requant_mode=mode), notes

    def with_(self, **changes) -> "QConfig":
        return replace(self, **changes)

    # Presets for the methods users expect by name
    @classmethod
    def per_tensor(cls) -> "QConfig":
        return cls(weight=TensorSpec("int8_narrow", symmetric=True, granularity="per_tensor"))

    @classmethod
    def smoothquant(cls, alpha: float = 0.5) -> "QConfig":
        """Static int8 after SmoothQuant smoothing: activation outliers migrated into weights."""
        return cls(smoothing=alpha)

    @classmethod
    def weight_int4(cls) -> "QConfig":
        return cls(weight=TensorSpec("int4", symmetric=True, granularity="per_channel"))


@dataclass(frozen=True)
class Capabilities:
    """What a target supports, as data (DESIGN.md §4)."""

    activation_dtypes: frozenset = frozenset({"uint8", "int8"})
    weight_dtypes: frozenset = frozenset({"int8", "int8_narrow", "int4"})
    weight_granularities: frozenset = frozenset(GRANULARITIES)
    asymmetric_weights: bool = True
    requant_modes: frozenset = frozenset(REQUANT_MODES)
    ops: frozenset = frozenset()          # integer op names (see core.integer_ops.INTEGER_OPS)
    layouts: frozenset = frozenset({"NCHW"})
    isa_features: frozenset = frozenset()
    preferred_activation_dtype: str = "uint8"
