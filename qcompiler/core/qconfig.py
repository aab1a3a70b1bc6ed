"""What the user asks for (QConfig) and what a target can do (Capabilities).

insert_observers intersects the two; no pass ever tests a backend's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

from .qtypes import QType, qtype

GROUP_SIZES = (32, 64, 128)

GRANULARITIES = ("per_tensor", "per_channel")
#: how a layer is quantized: static int8 (calibrated ranges), dynamic int8 (activation ranges
#: measured per call, core/dynamic_ops.py), weight-only int8/int4/NF4 (core/weight_only_ops.py),
#: or half precision (bfloat16/float16 weights and inputs, float32 accumulation)
METHODS = ("static", "dynamic", "weight_only", "half")
#: weight dtypes beyond the integer qtypes: NF4 levels (weight-only) and the half precisions
WEIGHT_FORMATS = ("nf4", "bfloat16", "float16")
HALF_DTYPES = ("bfloat16", "float16")
OBSERVERS = ("minmax", "moving_average", "histogram")
RANGE_METHODS = ("minmax", "percentile", "mse", "entropy")
REQUANT_MODES = ("fp32", "fixed_point")
#: how weight-only codes are chosen: each weight to its nearest level, or GPTQ (core/gptq.py: the
#: rounding errors compensated across a Linear's inputs, weighed by calibration activations)
WEIGHT_ROUNDINGS = ("nearest", "gptq")


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
    granularity: str = "per_tensor"     # also "per_token" (dynamic activations), "per_group" (weight-only)
    observer: str = "minmax"
    range_method: str = "minmax"
    group_size: Optional[int] = None    # values per scale along K, with granularity="per_group"

    def __post_init__(self):
        if self.dtype not in WEIGHT_FORMATS:
            qtype(self.dtype)
        if (self.granularity == "per_group") != (self.group_size is not None):
            raise ValueError("granularity='per_group' goes with a group_size (32, 64 or 128), and a group_size "
                             f"with granularity='per_group' only; got {self.granularity!r}, {self.group_size!r}")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {self.group_size!r}")
        for value, allowed, what in ((self.granularity, GRANULARITIES + ("per_token", "per_group"), "granularity"),
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
    # static | dynamic | weight_only | half (METHODS); dynamic/weight_only/half apply to Linear
    # layers (weight-only also to Embedding), everything else of such a layer config stays float
    method: str = "static"
    # weight-only: compute in float32, or round inputs and weights to bfloat16 (vdpbf16ps)
    compute: str = "float32"
    # weight-only: "nearest" (no calibration data needed) or "gptq" (Linears; needs calibration data)
    weight_rounding: str = "nearest"
    overrides: Mapping[str, Optional["QConfig"]] = field(default_factory=dict)

    def __post_init__(self):
        if self.requant_mode not in REQUANT_MODES:
            raise ValueError(f"unknown requant_mode {self.requant_mode!r}; choose one of {REQUANT_MODES}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.smoothing is not None:
            check_alpha(self.smoothing)
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ValueError(f"unknown weight_rounding {self.weight_rounding!r}; choose one of {WEIGHT_ROUNDINGS}")
        check_method(self)

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
        """Static int8 activations with int4 per-channel weights."""
        return cls(weight=TensorSpec("int4", symmetric=True, granularity="per_channel"))

    @classmethod
    def dynamic(cls, per_token: bool = True, symmetric: bool = True,
                smoothing: Optional[float] = None) -> "QConfig":
        """Dynamic int8 for Linear layers: per-channel int8 weights, activation ranges measured at run
        time per token (row) or per tensor; symmetric int8 or asymmetric uint8 activations."""
        act = TensorSpec("int8" if symmetric else "uint8", symmetric=symmetric,
                         granularity="per_token" if per_token else "per_tensor")
        return cls(method="dynamic", activation=act, smoothing=smoothing, bias_correction=False,
                   weight=TensorSpec("int8_narrow", symmetric=True, granularity="per_channel"))

    @classmethod
    def weight_only(cls, dtype: str = "int4", group_size: Optional[int] = 32, symmetric: bool = True,
                    compute: str = "float32", rounding: str = "nearest") -> "QConfig":
        """Weight-only int8/int4/NF4 for Linear and Embedding layers, per group of ``group_size``
        along K (None: per channel); activations stay float. ``rounding="gptq"``: the Linears'
        codes chosen by GPTQ on the calibration data (embeddings keep nearest rounding)."""
        spec = TensorSpec(dtype, symmetric=symmetric, granularity="per_group" if group_size else "per_channel",
                          group_size=group_size)
        return cls(method="weight_only", weight=spec, compute=compute, bias_correction=False,
                   weight_rounding=rounding)

    @classmethod
    def half(cls, dtype: str = "bfloat16") -> "QConfig":
        """Linear layers in half precision: bfloat16/float16 weights and inputs, float32 accumulation."""
        return cls(method="half", weight=TensorSpec(dtype, symmetric=True, granularity="per_tensor"),
                   bias_correction=False)


def check_method(cfg: QConfig) -> None:
    """What each method accepts (a mistake is reported here, not as odd numbers later)."""
    act, w = cfg.activation, cfg.weight
    if cfg.weight_rounding != "nearest" and cfg.method != "weight_only":
        raise ValueError(f"weight_rounding={cfg.weight_rounding!r} is for method='weight_only' "
                         f"(QConfig.weight_only(rounding=...)), not {cfg.method!r}")
    if cfg.method == "static":
        if act.granularity != "per_tensor":
            raise ValueError("static activations are quantized per tensor (per_token is for method='dynamic')")
        if w.granularity == "per_group" or w.dtype in WEIGHT_FORMATS:
            raise ValueError(f"static int8 takes integer weights per tensor or per channel; {w.dtype} "
                             f"{w.granularity} weights are for method='weight_only' (QConfig.weight_only())")
    elif cfg.method == "dynamic":
        if act.granularity not in ("per_tensor", "per_token") or (act.dtype, act.symmetric) not in (
                ("int8", True), ("uint8", False)):
            raise ValueError("dynamic activations are int8 symmetric or uint8 asymmetric, per_tensor or per_token "
                             f"(QConfig.dynamic()); got {act.dtype} symmetric={act.symmetric} {act.granularity}")
        if w.dtype not in ("int8", "int8_narrow") or not w.symmetric or w.granularity == "per_group":
            raise ValueError("dynamic quantization takes symmetric int8 weights per channel or per tensor")
    elif cfg.method == "weight_only":
        from .weight_only_ops import COMPUTE_DTYPES, WEIGHT_ONLY_DTYPES
        if w.dtype not in WEIGHT_ONLY_DTYPES or w.granularity == "per_tensor":
            raise ValueError(f"weight-only weights are one of {WEIGHT_ONLY_DTYPES}, per_channel or per_group "
                             f"(QConfig.weight_only()); got {w.dtype} {w.granularity}")
        if not w.symmetric and w.dtype != "int4":
            raise ValueError(f"asymmetric weight-only quantization is offered for int4 only, not {w.dtype}")
        if cfg.compute not in COMPUTE_DTYPES:
            raise ValueError(f"compute must be one of {COMPUTE_DTYPES}, got {cfg.compute!r}")
    elif cfg.method == "half" and w.dtype not in HALF_DTYPES:
        raise ValueError(f"half precision stores weights as one of {HALF_DTYPES}, got {w.dtype} (QConfig.half())")


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
