"""The loaded model of every C target: an nn.Module around one generated program, and its bundle.

The program is a shared library called through ctypes (:class:`LibraryProgram`) where the host
runs the target's code, or an executable run through the target's runner, e.g.
``qemu-aarch64 -cpu max`` for ARM code on an x86 host (:class:`ExecutableProgram`); both take
the same checked buffers, so :class:`NativeModel` is the same for every target.

``NativeModel(x)`` checks every input's shape and dtype before native code runs,
reuses one arena (no allocation per call besides the outputs) and returns float tensors
(or the output integers with ``return_int=True``). A batch size other than the compiled
one is compiled on first use (same graph, new shapes) when the module still has its
graph; a model loaded from a bundle runs only the batch size it was built for.

``streams = k`` splits a batch into k equal parts run at once, each on its own arena and
``threads // k`` threads (batch-level parallelism, like OpenVINO's CPU streams): where per-layer
threading scales poorly (many short, memory-bound steps, as in MobileNetV2) it beats splitting
every layer across the cores; where big GEMMs scale well (ResNet-18) it loses.
:meth:`NativeModel.tune_streams` times the choices on the caller's input and keeps the
fastest.

``save(path)`` writes a self-contained bundle (model.c, model.h, weights.bin, the runtime
source, qc_model_main.c, a Makefile, manifest.json); :func:`load_bundle` loads it again
without pickles.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import re
import shlex
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from qcompiler.core.embedding_ops import check_indices

from . import toolchain
from .c_emitter import HEADER_BYTES, MODEL_HEADER

_DTYPES = {"uint8": torch.uint8, "int8": torch.int8, "float32": torch.float32, "int64": torch.int64}
_MODEL_ERRORS = {-1: "a required pointer is NULL", -2: "weights do not match this model (size or digest)",
                 -3: "model not initialized", -4: "out of memory", -5: "a buffer or the arena has the wrong size",
                 -6: "an index input is outside its embedding table",
                 -7: "an input holds NaN or an infinity",
                 -8: "a row that dynamic quantization measures spans more than float32's range (its max − min "
                     "overflows): no finite scale covers it"}
#: qc_model_run's code for a non-finite input (the caller then names which one)
_ERR_NONFINITE = -7
BUNDLE_FORMAT = 2


class NativeModelError(RuntimeError):
    pass


@dataclass
class NativeArtifact:
    """What a C target's build() hands to load(): the built program and what it was built from."""

    target: str                 # the registered target name ("x86", "arm+i8mm")
    path: Path                  # a shared library, or an executable when ``runner`` is set
    source: str                 # the model's C
    weights: bytes
    variant: str                # the code variant it runs ("avx2", "i8mm")
    model_flags: list           # how the program was built (profile() rebuilds it with -DQC_PROFILE)
    program_source: str         # what was compiled: the model's C (+ qc_model_main.c for an executable)
    compiler: str = "cc"        # the toolchain kind that built it
    runner: Optional[list] = None   # an executable's command prefix ([] native, qemu-user otherwise)


def _check_weights(path: Path, manifest: dict, weights: bytes) -> None:
    digest = hashlib.sha256(weights[HEADER_BYTES:]).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise NativeModelError(f"{path}: the weights do not match this model (sha256 of the payload "
                               f"{digest[:16]}..., the model expects {str(manifest.get('weights_sha256'))[:16]}"
                               "...): a corrupt or foreign weights.bin")


def model_error(code: int, kernel_error: Callable[[int], str]) -> str:
    if code < 0:
        return _MODEL_ERRORS.get(code, f"error {code}")
    return f"kernel error {code}: {kernel_error(code)}"


class LibraryProgram:
    """ctypes view of one model library (the ABI in c_emitter.MODEL_HEADER), run in this process."""

    needs_arena = True

    def __init__(self, library: Path, weights: bytes):
        self.path = Path(library)
        cdll = toolchain.load_library(self.path)
        pp = ctypes.POINTER(ctypes.c_void_p)
        cdll.qc_model_init.argtypes, cdll.qc_model_init.restype = [ctypes.c_char_p, ctypes.c_int64], ctypes.c_int
        cdll.qc_model_arena_bytes.argtypes, cdll.qc_model_arena_bytes.restype = [], ctypes.c_int64
        cdll.qc_model_manifest.argtypes, cdll.qc_model_manifest.restype = [], ctypes.c_char_p
        for fn in (cdll.qc_model_run, cdll.qc_model_run_int):
            fn.argtypes, fn.restype = [pp, pp, ctypes.c_void_p, ctypes.c_int], ctypes.c_int
        i64p = ctypes.POINTER(ctypes.c_int64)
        cdll.qc_model_run_checked.argtypes = [pp, i64p, ctypes.c_int, pp, i64p, ctypes.c_int, ctypes.c_int,
                                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        cdll.qc_model_run_checked.restype = ctypes.c_int
        self.cdll = cdll
        self.manifest = json.loads(cdll.qc_model_manifest().decode())
        self.weights = bytes(weights)
        _check_weights(self.path, self.manifest, self.weights)
        code = cdll.qc_model_init(self.weights, len(self.weights))
        if code != 0:
            raise NativeModelError(f"{self.path}: qc_model_init failed: {self.error(code)}")
        # every C target's runtime names its kernels' error codes (the backend contract)
        self.strerror = cdll.qc_rt_gemm_strerror
        self.strerror.argtypes, self.strerror.restype = [ctypes.c_int], ctypes.c_char_p
        self.arena_bytes = int(cdll.qc_model_arena_bytes())

    def error(self, code: int) -> str:
        return model_error(code, lambda c: self.strerror(c).decode())

    def run(self, xs: list, outs: list, return_int: bool, arena_ptr: int, arena_bytes: int, threads: int) -> int:
        """One call on contiguous inputs and outputs (checked again on the C side); the return code."""
        in_ptrs = (ctypes.c_void_p * max(len(xs), 1))(*[x.data_ptr() for x in xs])
        in_numel = (ctypes.c_int64 * max(len(xs), 1))(*[x.numel() for x in xs])
        out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*[o.data_ptr() for o in outs])
        out_numel = (ctypes.c_int64 * max(len(outs), 1))(*[o.numel() for o in outs])
        return self.cdll.qc_model_run_checked(in_ptrs, in_numel, len(xs), out_ptrs, out_numel, len(outs),
                                              int(return_int), arena_ptr, arena_bytes, threads)


    def profile(self, xs: list, repeats: int, warmup: int, arena_ptr: int, threads: int) -> list[tuple[str, int]]:
        """(step name, nanoseconds over ``repeats`` runs) per step, of a -DQC_PROFILE build."""
        cdll = self.cdll
        cdll.qc_model_profile.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
        cdll.qc_model_profile.restype = ctypes.c_int
        cdll.qc_model_step_name.argtypes, cdll.qc_model_step_name.restype = [ctypes.c_int], ctypes.c_char_p
        steps = int(cdll.qc_model_num_steps())
        outs = [torch.empty(tuple(s["shape"]), dtype=torch.float32) for s in self.manifest["outputs"]]
        in_ptrs = (ctypes.c_void_p * max(len(xs), 1))(*[x.data_ptr() for x in xs])
        out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*[o.data_ptr() for o in outs])
        ns = (ctypes.c_int64 * max(steps, 1))()
        for i in range(warmup + repeats):
            if i == warmup:
                cdll.qc_model_profile(None, 1)
            code = cdll.qc_model_run(in_ptrs, out_ptrs, ctypes.c_void_p(arena_ptr), threads)
            if code != 0:
                raise NativeModelError(f"qc_model_run failed: {self.error(code)}")
        cdll.qc_model_profile(ns, 1)
        return [(cdll.qc_model_step_name(i).decode(), ns[i]) for i in range(steps)]


class ExecutableProgram:
    """One model built as a program (backends/c_runtime/qc_model_main.c), run per call through
    ``runner`` (e.g. ``qemu-aarch64 -cpu max``): inputs and outputs cross as files of raw bytes
    in a private temporary directory; the program allocates its own arena."""

    needs_arena = False
    _ERROR = re.compile(r"qc_model_main: error (-?\d+): (.*)")

    def __init__(self, executable: Path, weights: bytes, runner: list):
        self.path = Path(executable)
        self.runner = list(runner)
        self.weights = bytes(weights)
        self._dir = tempfile.TemporaryDirectory(prefix="qc-native-")
        self._weights_file = Path(self._dir.name) / "weights.bin"
        self._weights_file.write_bytes(self.weights)
        self.manifest = json.loads(self._call(["manifest"]).stdout)
        _check_weights(self.path, self.manifest, self.weights)
        self.arena_bytes = int(self.manifest["arena_bytes"])
        self._messages: dict[int, str] = {}
        self._calls = 0
        self._lock = threading.Lock()

    def _call(self, args: list) -> subprocess.CompletedProcess:
        command = [*self.runner, str(self.path), *args]
        try:
            return subprocess.run(command, capture_output=True, text=True, check=True)
        except OSError as e:
            raise NativeModelError(f"cannot run {shlex.join(command)}: {e}") from None
        except subprocess.CalledProcessError as e:
            match = self._ERROR.search(e.stderr or "")
            if match and int(match.group(1)) != 0:
                raise _ProgramFailed(int(match.group(1)), match.group(2)) from None
            raise NativeModelError(f"{shlex.join(command)} failed with status {e.returncode}: "
                                   f"{(e.stderr or e.stdout or '').strip()[-2000:]}") from None

    def error(self, code: int) -> str:
        return model_error(code, lambda c: self._messages.get(c, "(no message)"))

    def run(self, xs: list, outs: list, return_int: bool, arena_ptr: int, arena_bytes: int, threads: int) -> int:
        with self._lock:
            self._calls += 1
            call = self._calls
        folder = Path(self._dir.name)
        inputs, outputs = folder / f"in{call}.bin", folder / f"out{call}.bin"
        try:
            inputs.write_bytes(b"".join(x.numpy().tobytes() for x in xs))
            try:
                self._call(["run", str(self._weights_file), str(inputs), str(outputs),
                            "int" if return_int else "float", str(threads)])
            except _ProgramFailed as failed:
                self._messages[failed.code] = failed.message
                return failed.code
            data = outputs.read_bytes()
            offset = 0
            for o in outs:
                n = o.numel() * o.element_size()
                o.copy_(torch.frombuffer(bytearray(data[offset:offset + n]), dtype=o.dtype).reshape(o.shape))
                offset += n
            if offset != len(data):
                raise NativeModelError(f"{self.path} wrote {len(data)} bytes of outputs, expected {offset}")
            return 0
        finally:
            inputs.unlink(missing_ok=True)
            outputs.unlink(missing_ok=True)


    def profile(self, xs: list, repeats: int, warmup: int, arena_ptr: int, threads: int) -> list[tuple[str, int]]:
        """As LibraryProgram.profile, from the program's ``profile`` command (a -DQC_PROFILE build)."""
        inputs = Path(self._dir.name) / "profile_in.bin"
        inputs.write_bytes(b"".join(x.numpy().tobytes() for x in xs))
        try:
            out = self._call(["profile", str(self._weights_file), str(inputs), str(repeats), str(warmup),
                              str(threads)])
        except _ProgramFailed as failed:
            message = failed.message
            raise NativeModelError(f"qc_model_run failed: {model_error(failed.code, lambda _: message)}") from None
        rows = [line.split("\t", 1) for line in out.stdout.splitlines() if line]
        return [(name, int(ns)) for ns, name in rows]


class _ProgramFailed(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def open_program(artifact: NativeArtifact):
    if artifact.runner is None:
        return LibraryProgram(artifact.path, artifact.weights)
    return ExecutableProgram(artifact.path, artifact.weights, artifact.runner)


class NativeModel(torch.nn.Module):
    """A model compiled for a C target: float NCHW tensors in, float tensors out."""

    def __init__(self, artifact: NativeArtifact, *, threads: Optional[int] = None,
                 recompile: Optional[Callable[[int], "NativeModel"]] = None, bundle_writer=None):
        super().__init__()
        self.artifact = artifact
        self.native = open_program(artifact)
        self.target = artifact.target
        self.source = artifact.source
        self.variant = artifact.variant
        self.threads = threads
        self._recompile = recompile
        self._bundle_writer = bundle_writer       # the target's save(): writes the bundle's build files
        self._by_batch: dict[int, NativeModel] = {}
        self._compile_lock = threading.Lock()
        man = self.native.manifest
        self.input_shapes = [tuple(s["shape"]) for s in man["inputs"]]
        self.input_dtypes = [_DTYPES[s["dtype"]] for s in man["inputs"]]
        self.input_index_rows = [int(s.get("index_rows", 0)) for s in man["inputs"]]
        self.input_names = [s["name"] for s in man["inputs"]]
        self.output_specs = man["outputs"]
        self.tuple_output = bool(man.get("tuple_output"))
        self.batch = self.input_shapes[0][0] if self.input_shapes and self.input_shapes[0] else 1
        # the arena: one per module, 64-byte aligned, reused by every call (an executable has its own)
        self._arena_bytes = nbytes = self.native.arena_bytes if self.native.needs_arena else 0
        self._arena_owner = torch.empty(nbytes + 64, dtype=torch.uint8)
        self._arena_ptr = self._arena_owner.data_ptr() + (-self._arena_owner.data_ptr()) % 64
        # ctypes releases the GIL: calls from two Python threads must not share the arena at once
        self._arena_lock = threading.Lock()
        self._streams = 1
        self._stream_pool: Optional[tuple] = None    # (streams, executor, arena owners) when > 1

    @property
    def isa(self) -> str:
        """The code variant (x86: the GEMM ISA; ARM: the NEON level)."""
        return self.variant

    @property
    def manifest(self) -> dict:
        return self.native.manifest

    def describe(self) -> str:
        """What runs where (as PartitionedModel.describe): here, all of it in one native program."""
        return (f"1 {self.target} program ({self.manifest['steps']} steps, {self.variant}), "
                "0 op(s) in PyTorch, 0 boundary crossing(s) per call")

    def _threads(self) -> int:
        return int(self.threads) if self.threads else torch.get_num_threads()

    def check_inputs(self, inputs: tuple, any_batch: bool = False) -> list[torch.Tensor]:
        """The inputs as the native code takes them, or the error naming what is wrong; with
        ``any_batch`` the leading dim is not compared (before building another batch size)."""
        if len(inputs) != len(self.input_shapes):
            raise ValueError(f"expected {len(self.input_shapes)} input tensors, got {len(inputs)}")
        checked = []
        for i, (x, shape, dtype) in enumerate(zip(inputs, self.input_shapes, self.input_dtypes)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"input {i} must be a torch.Tensor, got {type(x).__name__}")
            rows = self.input_index_rows[i]
            if rows:                            # token ids: any integer type, checked against the table
                check_indices(x, rows, f"input {i} ({self.input_names[i]})")
            elif dtype != torch.float32:        # integers crossing a segment boundary, as they are
                if x.dtype != dtype:
                    raise TypeError(f"input {i} must be a {dtype} tensor, got {x.dtype}")
            elif not x.is_floating_point():
                raise TypeError(f"input {i} must be a float tensor, got {x.dtype}")
            if x.device.type != "cpu":
                raise ValueError(f"input {i} must be on the CPU, got {x.device}")
            if (tuple(x.shape[1:]) != shape[1:] or x.dim() != len(shape)) if any_batch else tuple(x.shape) != shape:
                raise ValueError(f"input {i} has shape {tuple(x.shape)}, but this model was compiled for {shape}")
            checked.append(x.detach().to(dtype).contiguous())
        return checked

    def _for_batch(self, n: int) -> "NativeModel":
        """The module of this graph for batch size ``n``, compiled on first use."""
        if n == self.batch:
            return self
        if self._recompile is None:
            raise ValueError(f"this model was built for batch size {self.batch}, got {n}; compile it again "
                             "for that batch size (a bundle runs only the batch it was built for)")
        with self._compile_lock:           # threads calling at a new batch size at once build it once
            if n not in self._by_batch:
                self._by_batch[n] = self._recompile(n)
        return self._by_batch[n]

    def _other_batch(self, inputs: tuple) -> Optional["NativeModel"]:
        """The module for another batch size, compiled on first use (when that is possible)."""
        if not inputs or not isinstance(inputs[0], torch.Tensor) or inputs[0].dim() == 0:
            return None
        n = int(inputs[0].shape[0])
        if n == self.batch or not all(isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n
                                      for x in inputs):
            return None
        if tuple(inputs[0].shape[1:]) != self.input_shapes[0][1:]:
            return None             # a shape error, reported by check_inputs
        self.check_inputs(inputs, any_batch=True)       # a wrong dtype or device builds nothing
        module = self._for_batch(n)
        module.threads = self.threads
        return module

    def forward(self, *inputs, return_int: bool = False):
        if inputs and all(isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == 0 for x in inputs):
            return self._empty_batch(inputs, return_int)
        other = self._other_batch(inputs)
        if other is not None:
            return other(*inputs, return_int=return_int)
        xs = self.check_inputs(inputs)
        outs = [torch.empty(tuple(s["shape"]), dtype=_DTYPES[s["dtype"]] if return_int or s.get("raw")
                            else torch.float32) for s in self.output_specs]
        with self._arena_lock:
            if self._streams > 1:
                self._run_streams(xs, outs, return_int)
            else:
                self._run(xs, outs, return_int, self._arena_ptr, self._arena_bytes, self._threads())
        return tuple(outs) if self.tuple_output else outs[0]

    def _empty_batch(self, inputs: tuple, return_int: bool):
        """A batch of 0 gives what the float model gives: outputs with 0 rows (nothing runs)."""
        if len(inputs) != len(self.input_shapes) or \
                any(tuple(x.shape[1:]) != s[1:] for x, s in zip(inputs, self.input_shapes)) or \
                any(not s["shape"] or s["shape"][0] != self.batch for s in self.output_specs):
            raise ValueError(f"an empty batch of shapes {[tuple(x.shape) for x in inputs]}: this model takes "
                             f"{self.input_shapes} (any batch size), and its outputs must have the batch first")
        outs = [torch.empty((0, *s["shape"][1:]), dtype=_DTYPES[s["dtype"]] if return_int or s.get("raw")
                            else torch.float32) for s in self.output_specs]
        return tuple(outs) if self.tuple_output else outs[0]

    def _run(self, xs: list, outs: list, return_int: bool, arena_ptr: int, arena_bytes: int, threads: int):
        """One native call on contiguous inputs and outputs (checked again on the C side)."""
        code = self.native.run(xs, outs, return_int, arena_ptr, arena_bytes, threads)
        if code == _ERR_NONFINITE:
            bad = next((i for i, x in enumerate(xs) if x.is_floating_point() and not bool(torch.isfinite(x).all())), None)
            where = f"input {bad}" if bad is not None else "a value computed inside the model (the inputs are finite)"
            raise ValueError(f"{where} holds NaN or an infinity: no integer stands for them, so the quantized model "
                             "refuses them (the float model would propagate them); check the data or the op that "
                             "produced it")
        if code != 0:
            raise NativeModelError(f"qc_model_run failed: {self.native.error(code)}")

    # -- streams: batch-level parallelism ---------------------------------------------------

    @property
    def streams(self) -> int:
        return self._streams

    @streams.setter
    def streams(self, k: int):
        k = int(k)
        if k < 1:
            raise ValueError(f"streams must be at least 1, got {k}")
        if k > 1:
            if self.batch % k:
                raise ValueError(f"streams={k} must divide the batch size {self.batch}")
            part = self._for_batch(self.batch // k)
            batch_major = all(tuple(s["shape"][:1]) == (self.batch,) and tuple(p["shape"]) ==
                              (self.batch // k, *s["shape"][1:])
                              for s, p in zip([*self.manifest["inputs"], *self.output_specs],
                                              [*part.manifest["inputs"], *part.output_specs]))
            if not batch_major:
                raise ValueError("streams need every input and output to have the batch as dimension 0")
        if self._stream_pool is not None:
            self._stream_pool[1].shutdown()
            self._stream_pool = None
        self._streams = k

    def _run_streams(self, xs: list, outs: list, return_int: bool):
        """Each of `streams` equal slices of the batch on the part module, one slice per thread,
        each with an arena of its own; outputs are written in place (slices of `outs`)."""
        k = self._streams
        part = self._for_batch(self.batch // k)
        if self._stream_pool is None:
            arenas = [torch.empty(part._arena_bytes + 64, dtype=torch.uint8) for _ in range(k)]
            self._stream_pool = (k, ThreadPoolExecutor(k - 1, thread_name_prefix="qc-stream"), arenas)
        _, pool, arenas = self._stream_pool
        threads = max(1, self._threads() // k)
        n = part.batch

        def run(i: int):
            arena = arenas[i].data_ptr() + (-arenas[i].data_ptr()) % 64
            part._run([x[i * n:(i + 1) * n] for x in xs], [o[i * n:(i + 1) * n] for o in outs], return_int,
                      arena, part._arena_bytes, threads)

        pending = [pool.submit(run, i) for i in range(1, k)]
        run(0)
        for f in pending:
            f.result()

    def tune_streams(self, *inputs, rounds: int = 3, repeats: int = 5) -> dict:
        """Time every stream count that divides the batch (up to the thread count) on ``inputs``,
        interleaved over ``rounds``, and keep the fastest. Returns {streams: median ms}."""
        candidates = [k for k in range(1, self._threads() + 1) if self.batch % k == 0]
        times: dict[int, list] = {k: [] for k in candidates}
        for _ in range(rounds):
            for k in list(times):
                try:
                    self.streams = k
                except ValueError:          # outputs not batch-major, or no graph to recompile
                    del times[k]
                    continue
                self(*inputs)                # warm (and compile the part module once)
                t0 = time.perf_counter()
                for _ in range(repeats):
                    self(*inputs)
                times[k].append((time.perf_counter() - t0) / repeats * 1e3)
        medians = {k: statistics.median(v) for k, v in times.items()}
        self.streams = min(medians, key=medians.get)
        return medians

    # -- profiling -------------------------------------------------------------------------

    def profile(self, *inputs, repeats: int = 10, warmup: int = 2) -> list[dict]:
        """Wall time of each generated step, from a build of the same source with
        ``-DQC_PROFILE`` (a clock read around every step; the plain build has none).
        Returns one dict per step: ``index``, ``step`` (what it computes), ``ms`` (mean per run)
        and ``share`` of the total, in program order."""
        other = self._other_batch(inputs)
        if other is not None:               # as forward: another batch size runs its own build
            return other.profile(*inputs, repeats=repeats, warmup=warmup)
        xs = self.check_inputs(inputs)
        art = self.artifact
        flags = [*art.model_flags, "-DQC_PROFILE"]
        if art.runner is None:
            lib = toolchain.build_shared_library(art.program_source, flags=flags, name="qc_model_profile",
                                                 kind=art.compiler)
            profiled = LibraryProgram(lib, self.native.weights)
        else:
            exe = toolchain.build_executable(art.program_source, flags=flags, name="qc_model_profile",
                                             kind=art.compiler)
            profiled = ExecutableProgram(exe, self.native.weights, art.runner)
        with self._arena_lock:
            steps = profiled.profile(xs, repeats, warmup, self._arena_ptr, self._threads())
        total = sum(ns for _, ns in steps) or 1
        return [{"index": i, "step": name, "ms": ns / repeats / 1e6, "share": ns / total}
                for i, (name, ns) in enumerate(steps)]

    # -- bundles ---------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write a self-contained bundle directory: model.c, weights.bin, the target's runtime source,
        qc_model_main.c (a program that runs one inference from files) and a Makefile whose
        compiler is configurable (``make CC=aarch64-linux-gnu-gcc``); :func:`load_bundle` reads it."""
        if self._bundle_writer is None:
            raise RuntimeError("this model has no target to write its bundle's build files; compile it with "
                               "qcompiler.compile")
        out = Path(path)
        (out / "runtime").mkdir(parents=True, exist_ok=True)
        (out / "model.c").write_text(self.source)
        (out / "model.h").write_text(MODEL_HEADER)
        (out / "weights.bin").write_bytes(self.native.weights)
        build = self._bundle_writer(out)
        manifest = {"format": BUNDLE_FORMAT, "target": self.target, "variant": self.variant, **build,
                    **self.native.manifest}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return out


def read_bundle_manifest(root: Path) -> dict:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root / 'manifest.json'}: not a readable bundle manifest ({type(exc).__name__}: {exc}); "
                         "save the model again (NativeModel.save)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT or "target" not in manifest:
        raise ValueError(f"{root} is not a qcompiler bundle of format {BUNDLE_FORMAT} (save the model again "
                         "with this version)")
    return manifest


def load_bundle(path, *, threads: Optional[int] = None) -> NativeModel:
    """Load a bundle written by :meth:`NativeModel.save`: its target builds it (through the build
    cache) and runs it as the compiled model did; it runs the batch size it was built for."""
    from . import get_backend

    root = Path(path)
    manifest = read_bundle_manifest(root)
    try:
        artifact = get_backend(manifest["target"]).build_bundle(root, manifest)
        model = get_backend(manifest["target"]).load_artifact(artifact, threads=threads)
    except (toolchain.ToolchainError, NativeModelError, OSError) as exc:
        raise type(exc)(f"bundle {root} (model.c, weights.bin): {exc}") from exc
    if model.manifest.get("weights_sha256") != manifest.get("weights_sha256"):
        raise ValueError(f"{root}: model.c and manifest.json disagree on the weights")
    return model
