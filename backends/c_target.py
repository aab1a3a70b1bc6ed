"""What every C target shares: legalize → emit → build → load over the shared C emitter and runtime.

A C target (x86, ARM, the next one) is a subclass that supplies only what differs:

- ``settings`` (:class:`TargetSettings`): the toolchain entry that builds its code, and the
  layout facts the shared emitter and runtime read;
- ``variant()``: the code variant to build here (x86: the GEMM ISA; ARM: the NEON level);
- ``gemm_lowering(variant)``: its :class:`GemmLowering` (weight packing, the GEMM's C call);
- ``runtime_sources(variant)`` / ``runtime_flags(variant)`` / ``runtime_headers()``: its runtime
  library: the shared ``c_runtime`` files plus its kernels and their glue.

The steps:

    legalize  record every node's value for the example shapes (core.shapes.propagate_values):
              emit reads shapes, numbers and constants from the nodes, not from a run of its own
    emit      c_emitter.Lowering with the target's GemmLowering → the model's C + weights blob
    build     the runtime (once per variant, cached by content) and the model: a shared library
              where the host runs the target's code, else a static program run through the
              toolchain's runner (qemu-user), both through backends/toolchain.py's cache
    load      :class:`NativeModel`, the same class for every C target
"""
from __future__ import annotations

import functools
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.fx as fx

from qcompiler.core.integer_ops import IntegerOp
from qcompiler.core.op_table import canonical_op
from qcompiler.core.shapes import VALUE_KEY, propagate_values

from . import toolchain
from .base import Backend
from .c_emitter import GemmLowering, Lowering, render, unsupported
from .native_model import NativeArtifact, NativeModel

C_RUNTIME_DIR = Path(__file__).resolve().parent / "c_runtime"
#: the runtime's op families beside qc_runtime.c (header, source), each its own file
FAMILIES = ("elementwise", "shapes", "transformer", "reduce", "weight_only")
#: the shared runtime, in translation-unit order, and the headers every model includes
SHARED_RUNTIME_FILES = (C_RUNTIME_DIR / "qc_runtime.h", C_RUNTIME_DIR / "qc_runtime.c",
                        *(C_RUNTIME_DIR / f"qc_rt_{f}{ext}" for f in FAMILIES for ext in (".h", ".c")))
SHARED_MODEL_HEADERS = (C_RUNTIME_DIR / "qc_runtime.h", *(C_RUNTIME_DIR / f"qc_rt_{f}.h" for f in FAMILIES))
#: a program that runs one inference from files (executables under an emulator, device bundles)
MODEL_MAIN = C_RUNTIME_DIR / "qc_model_main.c"
MODEL_FLAGS = ("-O2",)
#: a program run under qemu-user has no sysroot: static
EXECUTABLE_FLAGS = ("-static", "-pthread", "-lm")


@dataclass(frozen=True)
class TargetSettings:
    """The facts of a C target that the shared layer reads, each in one place.

    Storage is not a setting: the shared runtime keeps every activation as uint8 (an int8
    value stored + 128); a target whose GEMM takes signed operands flips the sign bit where it
    packs A (ARM: one ``eor`` per 16 bytes, inside the packing it does anyway)."""

    #: the toolchain entry that builds and runs its code (backends/toolchain.py: "cc", "aarch64")
    compiler: str = "cc"
    #: host machines (platform.machine()) that run its code natively: the model is then a shared
    #: library called in-process; elsewhere a static program run through toolchain.runner().
    #: None: wherever the compiler's host is (portable C built by the host compiler)
    native_machines: Optional[tuple] = None
    #: channels per block of the depthwise weight layout ([C / lanes][taps][lanes] int32): the
    #: vector of int32 accumulators the runtime keeps per block (QC_DW_BLOCK in qc_runtime.c)
    depthwise_lanes: int = 16


class CTarget(Backend):
    settings: TargetSettings = TargetSettings()

    def __init__(self, variant: Optional[str] = None, *, threads: Optional[int] = None, name: str = "model"):
        self._variant = variant
        self.threads = threads
        self.name_in_code = name

    # -- what a target supplies -------------------------------------------------------------

    def variant(self) -> str:
        raise NotImplementedError

    def gemm_lowering(self, variant: str) -> GemmLowering:
        raise NotImplementedError

    def runtime_sources(self, variant: str) -> list[Path]:
        """C files of the runtime library, in translation-unit order (headers first)."""
        return list(SHARED_RUNTIME_FILES)

    def runtime_flags(self, variant: str) -> list[str]:
        return [*toolchain.DEFAULT_FLAGS, *self.setting_flags()]

    def setting_flags(self) -> list[str]:
        """The settings the runtime's C reads, as -D flags."""
        return [f"-DQC_DW_BLOCK={self.settings.depthwise_lanes}"]

    def runtime_headers(self) -> list[Path]:
        """Headers a generated model includes (copied into bundles)."""
        return list(SHARED_MODEL_HEADERS)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            toolchain.find_compiler(cls.settings.compiler)
            if not cls.runs_natively():
                toolchain.runner(cls.settings.compiler)
        except toolchain.ToolchainError as e:
            return False, str(e)
        return True, ""

    # -- the contract -------------------------------------------------------------------------

    @classmethod
    def runs_natively(cls) -> bool:
        machines = cls.settings.native_machines
        return machines is None or platform.machine().lower() in machines

    def current_variant(self) -> str:
        return self._variant or self.variant()

    def legalize(self, gm: fx.GraphModule, example_inputs: tuple) -> fx.GraphModule:
        propagate_values(gm, example_inputs)
        self._check_covered(gm)
        return gm

    def _check_covered(self, gm: fx.GraphModule) -> None:
        """Refuse (naming it) the first integer op, or op on int8 values, outside the target's
        capabilities: the emitter would lower it with the shared kernels, which a target that
        leaves the op out may not have (partitioning then runs it in PyTorch)."""
        ops = self.capabilities.ops
        modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            mod = modules.get(node.target) if node.op == "call_module" else None
            if isinstance(mod, IntegerOp):
                name = mod.op_name
            elif node.op in ("call_function", "call_method", "call_module") and \
                    isinstance(node.meta.get(VALUE_KEY), torch.Tensor) and \
                    node.meta[VALUE_KEY].dtype in (torch.int8, torch.uint8):
                name = canonical_op(node, modules)
            else:
                continue
            if name and name not in ops:
                raise unsupported(node, f"target {self.name!r} has no kernel for {name!r} (its capabilities)")

    def emit(self, gm: fx.GraphModule) -> "GeneratedModel":
        variant = self.current_variant()
        lowering = Lowering(gm, self.gemm_lowering(variant), name=self.name_in_code,
                            depthwise_lanes=self.settings.depthwise_lanes)
        program = lowering.run()
        headers = [h.name for h in self.runtime_headers()]
        source = render(program, headers, f"qcompiler {self.name} model '{self.name_in_code}', {variant}")
        return GeneratedModel(source, program.weights, variant)

    def build(self, generated: "GeneratedModel") -> NativeArtifact:
        variant = generated.variant
        if self.runs_natively():
            runtime = self.build_runtime(variant)
            flags = [*MODEL_FLAGS, *self._include_flags(), "-Wl,--no-as-needed", str(runtime)]
        else:
            runtime = self.build_runtime(variant, as_object=True)
            flags = [*MODEL_FLAGS, *self._include_flags(), str(runtime), *EXECUTABLE_FLAGS]
        return self._link(generated.source, generated.weights, variant, flags, MODEL_MAIN.read_text())

    def _link(self, model_c: str, weights: bytes, variant: str, flags: list, main_c: str) -> NativeArtifact:
        """The model as a shared library (native) or a program with ``main_c`` (through the runner)."""
        kind = self.settings.compiler
        if self.runs_natively():
            path = toolchain.build_shared_library(model_c, flags=flags, name="qc_model", kind=kind)
            return NativeArtifact(self.name, path, model_c, weights, variant, flags, model_c, kind)
        program = model_c + "\n" + main_c
        path = toolchain.build_executable(program, flags=flags, name="qc_model_main", kind=kind)
        return NativeArtifact(self.name, path, model_c, weights, variant, flags, program, kind, toolchain.runner(kind))

    def load(self, gm: fx.GraphModule, artifact: NativeArtifact) -> NativeModel:
        return self.load_artifact(artifact, threads=self.threads)

    def load_artifact(self, artifact: NativeArtifact, *, threads: Optional[int] = None) -> NativeModel:
        return NativeModel(artifact, threads=threads,
                           bundle_writer=functools.partial(self.write_bundle, artifact.variant))

    def compile_whole(self, gm: fx.GraphModule, example_inputs: tuple) -> NativeModel:
        """One program; another batch size compiles the same graph again on first use."""
        model = super().compile_whole(gm, example_inputs)

        def recompile_for(batch: int) -> NativeModel:
            shaped = tuple(torch.zeros((batch, *x.shape[1:]), dtype=x.dtype) if isinstance(x, torch.Tensor) else x
                           for x in example_inputs)
            return type(self)(self.current_variant(), threads=self.threads,
                              name=self.name_in_code).compile_whole(gm, shaped)

        model._recompile = recompile_for
        return model

    def compile(self, gm: fx.GraphModule, example_inputs: tuple, *, pytorch_fallback: bool = True,
                threads: Optional[int] = None, name: Optional[str] = None) -> torch.nn.Module:
        if threads is not None:
            self.threads = threads
        if name is not None:
            self.name_in_code = name
        return super().compile(gm, example_inputs, pytorch_fallback=pytorch_fallback)

    # -- the runtime library ----------------------------------------------------------------------

    def runtime_source(self, variant: str) -> str:
        """The runtime as one translation unit (see :func:`join_sources`)."""
        return join_sources(self.runtime_sources(variant))

    def build_runtime(self, variant: str, as_object: bool = False) -> Path:
        """The runtime library for ``variant`` (an object file to link into a static program with
        ``as_object``), built on first use and cached by content."""
        build = toolchain.build_object if as_object else toolchain.build_shared_library
        return build(self.runtime_source(variant), flags=self.runtime_flags(variant),
                     name=f"qc_rt_{self.name.replace('+', '_')}_{variant}", kind=self.settings.compiler)

    def _include_flags(self) -> list[str]:
        return [f"-I{d}" for d in dict.fromkeys(str(h.parent) for h in self.runtime_headers())]

    # -- bundles ------------------------------------------------------------------------------------

    def write_bundle(self, variant: str, out: Path) -> dict:
        """The build half of a bundle (NativeModel.save writes the model's half): the runtime as
        one C file, the headers, qc_model_main.c and a Makefile; returns what the manifest keeps."""
        runtime_c = f"qc_runtime_{self.name.replace('+', '_')}.c"
        (out / "runtime" / runtime_c).write_text(self.runtime_source(variant))
        for header in self.runtime_headers():
            (out / "runtime" / header.name).write_text(header.read_text())
        (out / "qc_model_main.c").write_text(MODEL_MAIN.read_text())
        flags = self.runtime_flags(variant)
        (out / "Makefile").write_text(_makefile(self.name, variant, runtime_c, flags, _compiler_name(
            toolchain.find_compiler(self.settings.compiler)), static=not self.runs_natively()))
        return {"runtime": f"runtime/{runtime_c}", "runtime_flags": flags}

    def build_bundle(self, root: Path, manifest: dict) -> NativeArtifact:
        """The artifact of a saved bundle, built from its own files through the build cache."""
        variant = manifest["variant"]
        runtime_src = (root / manifest["runtime"]).read_text()
        model_src = (root / "model.c").read_text()
        include = [f"-I{(root / 'runtime').resolve()}"]
        build = toolchain.build_object if not self.runs_natively() else toolchain.build_shared_library
        runtime = build(runtime_src, flags=manifest["runtime_flags"],
                        name=f"qc_rt_{self.name.replace('+', '_')}_{variant}", kind=self.settings.compiler)
        weights = (root / "weights.bin").read_bytes()
        link = ["-Wl,--no-as-needed", str(runtime)] if self.runs_natively() else [str(runtime), *EXECUTABLE_FLAGS]
        return self._link(model_src, weights, variant, [*MODEL_FLAGS, *include, *link],
                          (root / "qc_model_main.c").read_text())


@dataclass
class GeneratedModel:
    """What emit() returns: the model's C, its weights blob, and the variant it was emitted for."""

    source: str
    weights: bytes
    variant: str


def join_sources(files: list[Path]) -> str:
    """C files as one translation unit, their local includes dropped: each must name a file
    earlier in the list (dependency order), so a forgotten one is an error, not a silent change
    (a runtime without qc_thread_pool.h would run serially). A #line per file keeps
    diagnostics pointing at it."""
    include = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    parts, joined = [], set()
    for path in files:
        lines = []
        for line in path.read_text().splitlines():
            m = include.match(line)
            if m is None:
                lines.append(line)
            elif m.group(1) not in joined:
                raise ValueError(f"{path.name} includes {m.group(1)!r}, which is not earlier in the runtime's "
                                 f"files {[p.name for p in files]}")
        joined.add(path.name)
        parts.append(f'#line 1 "{path.name}"\n' + "\n".join(lines) + "\n")
    return "\n".join(parts)


def _compiler_name(path: str) -> str:
    """The compiler as the bundle's Makefile names it: its bare name where PATH finds the same one
    (a bundle moves to other machines), else its full path."""
    name = Path(path).name
    found = shutil.which(name)
    return name if found and Path(found).resolve() == Path(path).resolve() else path


def _makefile(target: str, variant: str, runtime_c: str, flags: list, cc: str, static: bool) -> str:
    ldflags = "-static " if static else ""
    return f"""# qcompiler bundle: target {target} ({variant}).
#   make                     builds libqc_model.so and qc_model_main with CC ({cc})
#   make CC=<compiler>       another compiler for the same target (CFLAGS_EXTRA=...: more flags);
#                            only on the command line: an exported CC would not build for this target
#   ./qc_model_main run weights.bin inputs.bin outputs.bin [int|float] [threads]
# -ffp-contract=off is required: requantization must not be contracted into FMAs.
ifneq ($(origin CC),command line)
CC = {cc}
endif
CFLAGS = -ffp-contract=off {' '.join(flags)} -Iruntime $(CFLAGS_EXTRA)
LDFLAGS ?= {ldflags}-pthread -lm
SOURCES = runtime/{runtime_c} model.c

all: libqc_model.so qc_model_main

libqc_model.so: $(SOURCES)
\t$(CC) -shared -fPIC $(CFLAGS) $(SOURCES) -o $@ -pthread -lm

qc_model_main: $(SOURCES) qc_model_main.c
\t$(CC) $(CFLAGS) $(SOURCES) qc_model_main.c -o $@ $(LDFLAGS)

clean:
\trm -f libqc_model.so qc_model_main

.PHONY: all clean
"""
