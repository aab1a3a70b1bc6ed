"""Backend registry: targets plug in here; ``qcompiler.compile(qm, target=name)`` finds them."""
from __future__ import annotations

from .base import Backend, BackendUnavailable
from .reference import ReferenceBackend

_REGISTRY: dict[str, type[Backend]] = {}


def register(backend: type[Backend]) -> type[Backend]:
    if not backend.name:
        raise ValueError(f"{backend.__name__} has no name")
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown target {name!r}; registered targets: {sorted(_REGISTRY)}") from None


def available_targets() -> dict[str, tuple[bool, str]]:
    """Every registered target → (usable here?, why not)."""
    return {name: cls.availability() for name, cls in sorted(_REGISTRY.items())}


register(ReferenceBackend)

from .x86 import X86Backend  # noqa: E402  (after the registry exists: x86 imports base, toolchain)

register(X86Backend)

from .arm import ARM_BACKENDS  # noqa: E402

for _arm in ARM_BACKENDS:
    register(_arm)

__all__ = ["Backend", "BackendUnavailable", "register", "get_backend", "available_targets"]
