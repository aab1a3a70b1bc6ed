"""The backend contract (DESIGN.md §4): capabilities as data, then legalize → emit → build → load.

A target subclasses :class:`Backend`, sets ``name`` and ``capabilities``, and overrides
the steps it needs. ``compile`` chains them; the registry in ``qcompiler.backends``
makes the target reachable as ``qcompiler.compile(qm, target=name)``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx

from qcompiler.core.qconfig import Capabilities


class BackendUnavailable(RuntimeError):
    pass


class Backend:
    name: str = ""
    capabilities: Capabilities = Capabilities()

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(usable here?, why not) — e.g. a missing compiler or CPU feature."""
        return True, ""

    def legalize(self, gm: fx.GraphModule) -> fx.GraphModule:
        """Target rewrites of the INTEGER graph (layouts, packing, dtype shifts)."""
        return gm

    def emit(self, gm: fx.GraphModule) -> Optional[str]:
        """Deterministic source code for the graph (None for interpreting targets)."""
        return None

    def build(self, source: Optional[str]) -> Any:
        """Toolchain call, cached by content hash; returns a loadable artifact."""
        return None

    def load(self, gm: fx.GraphModule, artifact: Any, example_inputs: tuple) -> torch.nn.Module:
        raise NotImplementedError

    def compile(self, gm: fx.GraphModule, example_inputs: tuple) -> torch.nn.Module:
        ok, why = self.availability()
        if not ok:
            raise BackendUnavailable(f"target {self.name!r} is not available here: {why}")
        legal = self.legalize(gm)
        return self.load(legal, self.build(self.emit(legal)), example_inputs)
