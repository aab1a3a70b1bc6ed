"""Ordered, user-editable passes over fx graphs, with state checks (DESIGN.md §2).

A pass names the graph states it requires and establishes. The manager checks ``requires``
before each pass, verifies ``establishes`` on the returned graph, times every pass, can
dump the graph after each one, and re-raises any failure as :class:`PassError` naming the
pass, the node being worked on and the passes that ran before it.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch.fx as fx

from .meta import GraphState, graph_info
from .qconfig import Capabilities, QConfig
from .states import verify_state


class PassError(RuntimeError):
    def __init__(self, pass_name: str, message: str, node: Optional[fx.Node] = None,
                 previous: Sequence[str] = ()):
        self.pass_name, self.node, self.previous = pass_name, node, list(previous)
        where = f"\n  at node: {node.format_node()}" if node is not None else ""
        super().__init__(f"error in pass '{pass_name}' after passes {self.previous}: "
                         f"{message}{where}")


class NodeError(ValueError):
    """Raised by a pass about one node; the manager adds the pass context."""

    def __init__(self, node: fx.Node, message: str):
        self.node = node
        super().__init__(message)


@dataclass
class PassContext:
    """What passes may read besides the graph: the recipe, the target and the data."""

    config: QConfig = field(default_factory=QConfig)
    capabilities: Capabilities = field(default_factory=Capabilities)
    target: str = "reference"
    calibration_data: Optional[Iterable[Any]] = None
    example_inputs: Optional[tuple] = None
    progress: bool = True
    current_node: Optional[fx.Node] = None

    def nodes(self, gm: fx.GraphModule) -> Iterator[fx.Node]:
        """Iterate a graph's nodes, remembering the current one for error messages."""
        for node in list(gm.graph.nodes):
            self.current_node = node
            yield node
        self.current_node = None


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    changes: Counter = field(default_factory=Counter)


class Pass:
    """Base class: set the class attributes, implement :meth:`run`."""

    name: str = ""
    requires: frozenset = frozenset()
    establishes: frozenset = frozenset()
    invalidates: frozenset = frozenset()

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> "PassResult | Counter | dict | None":
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


class FunctionPass(Pass):
    def __init__(self, fn: Callable, name: str, requires, establishes, invalidates):
        self.fn, self.name = fn, name
        self.requires, self.establishes = frozenset(requires), frozenset(establishes)
        self.invalidates = frozenset(invalidates)
        self.__doc__ = fn.__doc__

    def run(self, gm, ctx):
        return self.fn(gm, ctx)


def graph_pass(name: Optional[str] = None, *, requires: Iterable[GraphState] = (),
               establishes: Iterable[GraphState] = (), invalidates: Iterable[GraphState] = ()):
    """Turn ``fn(gm, ctx) -> Counter | dict | PassResult | None`` into a :class:`Pass`."""
    def wrap(fn):
        return FunctionPass(fn, name or fn.__name__, requires, establishes, invalidates)
    return wrap


@dataclass
class PassRecord:
    name: str
    seconds: float
    changes: Counter


@dataclass
class PipelineResult:
    graph_module: fx.GraphModule
    records: list

    def record(self, name: str) -> PassRecord:
        """The record of the pass called ``name``."""
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(f"no pass {name!r} ran; these did: {[r.name for r in self.records]}")

    def summary(self) -> str:
        rows = [f"{'pass':<22}{'time (ms)':>10}  changes"]
        for r in self.records:
            changes = ", ".join(f"{k}={v}" for k, v in sorted(r.changes.items())) or "-"
            rows.append(f"{r.name:<22}{r.seconds * 1e3:>10.1f}  {changes}")
        return "\n".join(rows)


class PassManager:
    def __init__(self, passes: Iterable[Pass] = ()):
        self.passes: list[Pass] = []
        for p in passes:
            self.append(p)

    # -- editing -----------------------------------------------------------------------
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def _index(self, name: str) -> int:
        try:
            return self.names().index(name)
        except ValueError:
            raise KeyError(f"no pass named {name!r}; the pipeline has {self.names()}") from None

    def _checked(self, p: Pass) -> Pass:
        if not isinstance(p, Pass) or not p.name:
            raise TypeError(f"{p!r} is not a named Pass (subclass Pass or use @graph_pass)")
        if p.name in self.names():
            raise ValueError(f"a pass named {p.name!r} is already in the pipeline")
        return p

    def append(self, p: Pass) -> "PassManager":
        self.passes.append(self._checked(p))
        return self

    def insert_before(self, name: str, p: Pass) -> "PassManager":
        self.passes.insert(self._index(name), self._checked(p))
        return self

    def insert_after(self, name: str, p: Pass) -> "PassManager":
        self.passes.insert(self._index(name) + 1, self._checked(p))
        return self

    def replace(self, name: str, p: Pass) -> "PassManager":
        i = self._index(name)
        old = self.passes.pop(i)
        try:
            self.passes.insert(i, self._checked(p))
        except Exception:
            self.passes.insert(i, old)
            raise
        return self

    def remove(self, name: str) -> "PassManager":
        del self.passes[self._index(name)]
        return self

    def __getitem__(self, name: str) -> Pass:
        return self.passes[self._index(name)]

    def describe(self) -> str:
        """The whole order on one screen: each pass, what it requires and establishes."""
        def fmt(states):
            return ", ".join(sorted(s.name for s in states)) or "-"
        rows = [f"{'#':>2}  {'pass':<20} {'requires':<28} establishes"]
        for i, p in enumerate(self.passes, 1):
            rows.append(f"{i:>2}  {p.name:<20} {fmt(p.requires):<28} {fmt(p.establishes)}")
        return "\n".join(rows)

    # -- running -----------------------------------------------------------------------
    def run(self, gm: fx.GraphModule, ctx: Optional[PassContext] = None, *,
            dump_dir: Optional[str | Path] = None) -> PipelineResult:
        ctx = ctx or PassContext()
        records: list[PassRecord] = []
        done: list[str] = []
        if dump_dir is not None:
            dump_dir = Path(dump_dir)
            dump_dir.mkdir(parents=True, exist_ok=True)
            (dump_dir / "00_input.txt").write_text(str(gm.graph))
        for i, p in enumerate(self.passes, 1):
            states = graph_info(gm).states
            missing = set(p.requires) - states
            if missing:
                providers = [q.name for q in self.passes if set(q.establishes) & missing]
                raise PassError(p.name, f"requires states {sorted(s.name for s in missing)} the "
                                f"graph does not hold (it holds {sorted(s.name for s in states)}); "
                                f"passes that establish them: {providers or 'none in this pipeline'}",
                                previous=done)
            start = time.perf_counter()
            try:
                result = _normalize(p.run(gm, ctx), gm)
            except PassError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised with pass, node and history
                node = exc.node if isinstance(exc, NodeError) else ctx.current_node
                raise PassError(p.name, f"{type(exc).__name__}: {exc}", node, done) from exc
            finally:
                ctx.current_node = None
            seconds = time.perf_counter() - start
            gm = result.graph_module
            gm.recompile()                      # passes edit the graph; keep forward() in sync
            info = graph_info(gm)
            info.states = (set(states) - set(p.invalidates)) | set(p.establishes)
            for state in p.establishes:
                problems = verify_state(state, gm)
                if problems:
                    node, why = problems[0]
                    raise PassError(p.name, f"claims to establish {state.name}, but {why}"
                                    + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""),
                                    node, done)
            records.append(PassRecord(p.name, seconds, result.changes))
            done.append(p.name)
            if dump_dir is not None:
                (dump_dir / f"{i:02d}_{p.name}.txt").write_text(str(gm.graph))
        return PipelineResult(gm, records)


def _normalize(out, gm) -> PassResult:
    if isinstance(out, PassResult):
        return out
    if out is None:
        return PassResult(gm)
    if isinstance(out, dict):
        return PassResult(gm, Counter(out))
    raise TypeError(f"a pass must return PassResult, a dict/Counter of changes or None, not {type(out).__name__}")
