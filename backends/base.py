"""The backend contract (DESIGN.md §4): capabilities as data, then legalize → emit → build → load.

A target subclasses :class:`Backend`, sets ``name`` and ``capabilities``, and overrides
the steps it needs:

    legalize(gm, example_inputs) -> gm       target rewrites + what emit needs on the nodes
    emit(gm)                     -> source   deterministic code (None for interpreting targets)
    build(source)                -> artifact a toolchain call, cached by content hash
    load(gm, artifact)           -> module   float in, float out, equal to the reference

``compile`` chains them for the whole graph. Where the target refuses a node (it raises
:class:`BackendUnsupported` naming it), ``compile`` splits the graph (``partition.py``): the
largest segments the target covers go through the same four steps, and PyTorch runs the rest
exactly as the reference does. C targets share one implementation of the steps:
:class:`qcompiler.backends.c_target.CTarget`. The registry in ``qcompiler.backends`` makes a
target reachable as ``qcompiler.compile(qm, target=name)``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx

from qcompiler.core.qconfig import Capabilities


class BackendUnavailable(RuntimeError):
    pass


class BackendUnsupported(NotImplementedError):
    """The graph contains something this target cannot compile. The message names the user's
    layer and op; ``node`` is the graph node's name, so partitioning can run it in PyTorch."""

    def __init__(self, message: str, node: Optional[str] = None, why: Optional[str] = None):
        super().__init__(message)
        self.node = node
        self.why = why or message       # the reason alone, without the node's name


class Backend:
    name: str = ""
    capabilities: Capabilities = Capabilities()

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(usable here?, why not) — e.g. a missing compiler or CPU feature."""
        return True, ""

    @classmethod
    def runs_natively(cls) -> bool:
        """Does its code run on this host's own CPU (not under an emulator)? Only such targets
        are timed by benchmarks."""
        return True

    def legalize(self, gm: fx.GraphModule, example_inputs: tuple) -> fx.GraphModule:
        """Target rewrites of the INTEGER graph, and what ``emit`` needs recorded on its nodes
        (shapes for the example inputs' shapes); raises BackendUnsupported for a node it
        cannot take."""
        return gm

    def emit(self, gm: fx.GraphModule) -> Any:
        """Deterministic source for the legalized graph (None for interpreting targets)."""
        return None

    def build(self, source: Any) -> Any:
        """Toolchain call, cached by content hash; returns a loadable artifact."""
        return None

    def load(self, gm: fx.GraphModule, artifact: Any) -> torch.nn.Module:
        raise NotImplementedError

    # -- chaining ------------------------------------------------------------------------

    def check_available(self) -> None:
        ok, why = self.availability()
        if not ok:
            raise BackendUnavailable(f"target {self.name!r} is not available here: {why}")

    def compile_whole(self, gm: fx.GraphModule, example_inputs: tuple) -> torch.nn.Module:
        legal = self.legalize(gm, example_inputs)
        return self.load(legal, self.build(self.emit(legal)))

    def compile(self, gm: fx.GraphModule, example_inputs: tuple, *,
                pytorch_fallback: bool = True) -> torch.nn.Module:
        """One program when the target covers the whole graph; otherwise segments joined by
        PyTorch, or, with ``pytorch_fallback=False``, an error naming what it does not cover."""
        self.check_available()
        try:
            return self.compile_whole(gm, example_inputs)
        except BackendUnsupported:
            pass
        from . import partition

        emitted: dict = {}      # segments emitted while planning, reused by their first build

        def key(segment, args):
            return id(segment), partition._shapes(args)

        def try_segment(segment: fx.GraphModule, args: tuple) -> None:
            legal = self.legalize(segment, args)
            emitted[key(segment, args)] = (legal, self.emit(legal))

        def compile_segment(segment: fx.GraphModule, args: tuple) -> torch.nn.Module:
            done: Optional[tuple] = emitted.pop(key(segment, args), None)
            if done is None:
                return self.compile_whole(segment, args)
            legal, source = done
            return self.load(legal, self.build(source))

        plan = partition.plan_for(gm, example_inputs, self.capabilities.ops, try_segment)
        if not pytorch_fallback:
            raise BackendUnsupported(
                f"target {self.name!r} does not cover {len(plan.pytorch_nodes)} op(s): "
                + "; ".join(plan.pytorch_nodes[:12]) + ("; ..." if len(plan.pytorch_nodes) > 12 else "")
                + ". compile(..., pytorch_fallback=True) (the default) runs them in PyTorch between native "
                  "segments; docs/supported-ops.md lists what each target covers.")
        return partition.PartitionedModel(plan, example_inputs, compile_segment, self.name)
