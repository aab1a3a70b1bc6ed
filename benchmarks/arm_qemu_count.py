"""Executed-instruction counts of aarch64 programs under qemu-user (issue 11's ARM proxy).

No ARM hardware here, so the dynamic figure is "guest instructions executed per MAC": a
static aarch64 executable runs under `qemu-aarch64 -cpu max` with a small TCG plugin of our own
(benchmarks/arm_insn_count_plugin.c, built here with the host compiler, no qemu headers
needed) that counts every executed guest instruction, in total and per address group
(functions picked by symbol name, so GEMM code can be told from the rest). Why a plugin and
not `-d in_asm,exec,nochain`: the log prints one line per executed block, gigabytes for a
ResNet-18, and needs a per-block instruction count joined back in; the plugin adds its counts
at run time. The count is exact for code that does not
fault (see the plugin's header) — checked on a loop of known length by
tests/test_arm_qemu_count.py.

    # any static aarch64 program, instructions in functions matching each regex:
    python benchmarks/arm_qemu_count.py run [--group gemm='^qc_arm_gemm'] -- ./prog args...
    # ResNet-18's convolutions (224x224, batch 1) as im2col GEMMs through each level's kernel:
    python benchmarks/arm_qemu_count.py resnet18 [--levels neon,dotprod,i8mm] [--markdown]
    # the whole ResNet-18 compiled by qcompiler for each ARM target, one run of its program:
    python benchmarks/arm_qemu_count.py resnet18-model [--levels ...] [--markdown]

Library: count_instructions(exe, args, groups), function_ranges(exe, regex) and, for a
compiled whole model, count_model(...) (instructions per MAC of a qc_model_main run) with
graph_macs(gm, *inputs) (the MACs of a quantized graph's convolutions and GEMMs).
"""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
from qcompiler.backends import toolchain

PLUGIN_SOURCE = Path(__file__).with_name("arm_insn_count_plugin.c")
KERNELS, RUNTIME = ROOT / "backends" / "arm" / "kernels", ROOT / "backends" / "c_runtime"
RESNET_DRIVER = Path(__file__).with_name("arm_resnet18_gemms.c")
MARCH = {"neon": "armv8-a", "dotprod": "armv8.2-a+dotprod", "i8mm": "armv8.6-a+i8mm"}


class CountError(RuntimeError):
    """The count could not be made: no emulator or compiler, or the program failed."""


@dataclass
class InsnCount:
    total: int                                   # every guest instruction executed
    groups: dict[str, int] = field(default_factory=dict)   # per requested group

    @property
    def rest(self) -> int:
        return self.total - sum(self.groups.values())


def emulator() -> list[str]:
    """qemu-aarch64 command prefix (the toolchain's: $QCOMPILER_QEMU honoured); the count needs the
    emulator even on an aarch64 host, where the toolchain would run programs natively."""
    try:
        prefix = toolchain.runner("aarch64")
    except toolchain.ToolchainError as e:
        raise CountError(str(e)) from None
    if prefix:
        return prefix
    found = shutil.which(os.environ.get(toolchain.EMULATOR_ENV) or "qemu-aarch64")
    if not found:
        raise CountError(f"counting instructions needs qemu-aarch64, also on aarch64: apt-get install qemu-user, "
                         f"or set {toolchain.EMULATOR_ENV}=/path/to/qemu-aarch64")
    return [found, "-cpu", "max"]


def build_plugin() -> Path:
    """The counting plugin, built with the host compiler once per source version (cached)."""
    source = PLUGIN_SOURCE.read_bytes()
    try:
        cc = toolchain.find_compiler("cc")
    except toolchain.ToolchainError as e:
        raise CountError(str(e)) from None
    out = toolchain.cache_root() / "arm_qemu_count" / f"insn_count_{hashlib.sha256(source).hexdigest()[:16]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror",
                               str(PLUGIN_SOURCE), "-o", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise CountError(f"building the qemu plugin failed:\n{proc.stderr.strip()}")
        os.replace(tmp, out)   # atomic: a concurrent build writes the same bytes
    return out


def _nm() -> str:
    for name in ("aarch64-linux-gnu-nm", "nm"):
        if found := shutil.which(name):
            return found
    raise CountError("no nm to read symbols (apt-get install binutils-aarch64-linux-gnu)")


def function_ranges(exe: str | Path, pattern: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of the sized text symbols of `exe` whose name matches regex `pattern`."""
    proc = subprocess.run([_nm(), "-S", "--defined-only", str(exe)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CountError(f"nm {exe}: {proc.stderr.strip()}")
    regex, found = re.compile(pattern), []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW" and regex.search(parts[3]):
            start = int(parts[0], 16)
            found.append((parts[3], start, start + int(parts[1], 16)))
    return found


def _check_not_pie(exe: Path) -> None:
    """Symbol addresses are guest addresses only in a position-dependent executable."""
    header = exe.read_bytes()[:18]
    if header[:4] != b"\x7fELF":
        raise CountError(f"{exe} is not an ELF file")
    if int.from_bytes(header[16:18], "little") != 2:   # ET_EXEC
        raise CountError(f"{exe} is position-independent (static-pie or dynamic): per-function counts need "
                         f"a plain -static link (-no-pie), whose symbol addresses are the run's addresses")


def count_instructions(exe: str | Path, args: Sequence[str] = (),
                       groups: Mapping[str, Iterable[tuple[int, int]]] | None = None, *,
                       cwd: str | Path | None = None, timeout: float | None = None,
                       status: int = 0) -> InsnCount:
    """Run `exe args` under qemu with the counting plugin; `groups` maps a name to address ranges
    [start, end) (e.g. from function_ranges). Raises CountError if the program exits with another
    status than `status` (a run meant to stop early, e.g. after loading, expects its error status)."""
    exe = Path(exe).resolve()
    groups = {name: list(ranges) for name, ranges in (groups or {}).items()}
    for name in groups:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
            raise CountError(f"group name {name!r}: letters, digits and _.:- only")
    if any(groups.values()):
        _check_not_pie(exe)
    plugin = build_plugin()
    with tempfile.TemporaryDirectory(prefix="qc_insn_count_") as d:
        gfile, ofile = Path(d) / "groups.txt", Path(d) / "counts.txt"
        gfile.write_text("".join(f"{name} {s:x} {e:x}\n" for name, rs in groups.items() for s, e in rs))
        # qemu splits -plugin's argument at commas: the paths must have none
        if "," in str(plugin) + d:
            raise CountError(f"a comma in {plugin} or {d}: qemu's -plugin option cannot carry it")
        cmd = [*emulator(), "-plugin", f"{plugin},groups={gfile},out={ofile}", str(exe), *map(str, args)]
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CountError(f"{exe.name} ran past {timeout} s under qemu") from None
        if proc.returncode != status:
            raise CountError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.strip()[-2000:]}")
        if not ofile.exists():
            raise CountError(f"the plugin wrote no counts (qemu: {proc.stderr.strip()[-500:]})")
        counts = dict(ln.split() for ln in ofile.read_text().splitlines())
    return InsnCount(int(counts.pop("total")), {name: int(counts.get(name, 0)) for name in groups})


def count_by_symbols(exe: str | Path, args: Sequence[str], patterns: Mapping[str, str], **kw) -> InsnCount:
    """count_instructions with each group given as a regex over function names (first match wins)."""
    groups, taken = {}, set()
    for name, pattern in patterns.items():
        fns = [f for f in function_ranges(exe, pattern) if f[0] not in taken]
        if not fns:
            raise CountError(f"group {name}: no function of {exe} matches {pattern!r}")
        taken.update(f[0] for f in fns)
        groups[name] = [(s, e) for _, s, e in fns]
    return count_instructions(exe, args, groups, **kw)


LIBC_MEM = r"^__(memcpy|memmove|memset)_\w+$"   # static glibc's variants (the GEMM's A packing calls them)
GEMM_SYMBOLS = r"^(qc_arm_gemm_|\w*_tile_\d+x\d+$|tile_\d+x\d+$)"   # GEMM entries and their static tiles
#: the rest of a compiled model's GEMM path: the ARM glue (argument checks, the M split over
#: threads, the blocked convolution's per-block GEMM) and the shared runtime's im2col
GEMM_GLUE_SYMBOLS = r"^(qc_arm_rt_|qc_arm_block_gemm$)"
IM2COL_SYMBOLS = r"^(qc_rt_im2col|qc_im2col_|qc_rt_conv_blocked$|qc_conv_block$)"


def count_model(exe: str | Path, args: Sequence[str], macs: int, *, gemm_pattern: str = GEMM_SYMBOLS,
                timeout: float | None = None) -> dict:
    """The whole-model figure: run a compiled model (`qc_model_main run weights.bin inputs.bin
    outputs.bin [int] [threads]`) and return its instructions in total, in GEMM kernel code, in
    libc's memcpy/memset (which the GEMMs' A packing and other copies call), in the GEMM glue
    and in im2col, each also per MAC of the model."""
    c = count_by_symbols(exe, args, {"gemm": gemm_pattern, "mem": LIBC_MEM, "glue": GEMM_GLUE_SYMBOLS,
                                     "im2col": IM2COL_SYMBOLS}, timeout=timeout)
    return {"instructions": c.total, "gemm_instructions": c.groups["gemm"], "mem_instructions": c.groups["mem"],
            "glue_instructions": c.groups["glue"], "im2col_instructions": c.groups["im2col"],
            "macs": macs, "per_mac": c.total / macs, "gemm_per_mac": c.groups["gemm"] / macs}


def count_model_load(exe: str | Path, weights: str | Path, *, timeout: float | None = None) -> dict:
    """What a `qc_model_main run` spends before inference: libc start-up, reading the weights and
    qc_model_init's one copy of them (counted on a run given an empty inputs file, which stops
    with status 1 right after loading); its total and its libc memcpy/memset instructions."""
    with tempfile.TemporaryDirectory(prefix="qc_load_") as d:
        empty = Path(d) / "empty.bin"
        empty.write_bytes(b"")
        c = count_by_symbols(exe, ["run", weights, empty, Path(d) / "out.bin"], {"mem": LIBC_MEM},
                             timeout=timeout, status=1)
    return {"instructions": c.total, "mem_instructions": c.groups["mem"]}


def graph_macs(gm, *inputs) -> int:
    """Multiply-accumulates of a quantized graph (qcompiler.quantize(...).graph_module) on
    ``inputs``: every convolution (output elements x input channels per group x taps, depthwise
    included), linear layer and integer matmul, from the reference interpreter's values."""
    from qcompiler.core.integer_ops import QConv, QLinear
    from qcompiler.core.reference import run_reference
    from qcompiler.core.transformer_ops import QMatMul

    _, values = run_reference(gm, *inputs, capture=True)
    macs = 0
    for node in gm.graph.nodes:
        op = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(op, (QConv, QLinear)):          # weight [out, in / groups, *taps] or [out, in]
            macs += values[node.name].numel() * op.weight[0].numel()
        elif isinstance(op, QMatMul):                 # [..., m, k] @ [..., k, n]
            macs += values[node.name].numel() * values[node.args[0].name].shape[-1]
    return macs


# ---- ResNet-18's convolutions as GEMMs, per level ----

def resnet18_gemms(size: int = 224) -> list[tuple[str, int, int, int]]:
    """(layer, M, N, K) of every convolution of torchvision's resnet18 at batch 1 as an im2col GEMM
    (M = oh*ow, N = cout, K = kh*kw*cin), and the classifier (M = 1). Depthwise: none in ResNet."""
    out = []

    def conv(name, hw, cin, cout, k, stride):
        o = (hw + 2 * (k // 2) - k) // stride + 1
        out.append((name, o * o, cout, k * k * cin))
        return o

    hw = conv("conv1", size, 3, 64, 7, 2)
    hw = (hw + 2 - 3) // 2 + 1   # max pool 3x3 s2 p1
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            name = f"layer{stage}.{block}"
            o = conv(f"{name}.conv1", hw, cin, cout, 3, stride)
            conv(f"{name}.conv2", o, cout, cout, 3, 1)
            if stride != 1 or cin != cout:
                conv(f"{name}.downsample", hw, cin, cout, 1, stride)
            hw, cin = o, cout
    out.append(("fc", 1, 1000, 512))
    return out


def build_resnet_driver(level: str, workdir: Path) -> Path:
    """Static aarch64 program running the GEMMs given on its command line through one level."""
    try:
        cc = toolchain.find_compiler("aarch64")
    except toolchain.ToolchainError as e:
        raise CountError(str(e)) from None
    flags = ["-O3", "-Wall", "-Wextra", "-Werror", f"-march={MARCH[level]}", f"-I{RUNTIME}", f"-I{KERNELS}"]
    objs = []
    for src in (KERNELS / f"qc_arm_gemm_{level}.c", RESNET_DRIVER):
        obj = workdir / f"{level}_{src.stem}.o"
        proc = subprocess.run([cc, *flags, f"-DQC_LEVEL={level}", "-c", str(src), "-o", str(obj)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise CountError(f"compiling {src.name} for {level} failed:\n{proc.stderr.strip()}")
        objs.append(str(obj))
    exe = workdir / f"resnet18_gemms_{level}"
    proc = subprocess.run([cc, "-static", "-no-pie", *objs, "-o", str(exe)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CountError(f"linking {exe.name} failed:\n{proc.stderr.strip()}")
    return exe


def resnet18_counts(levels: Sequence[str], size: int = 224) -> list[dict]:
    """Per level: instructions in the GEMM kernel code ("gemm"), in libc memcpy/memset called by
    the GEMMs ("gemm_mem": the difference from a --no-gemm run, since weight packing calls them
    too), in weight packing with its libc calls (once per model at load), and the rest of the
    driver (data generation, libc start-up)."""
    shapes = resnet18_gemms(size)
    macs = sum(m * n * k for _, m, n, k in shapes)
    args = [f"{m},{n},{k}" for _, m, n, k in shapes]
    rows = []
    with tempfile.TemporaryDirectory(prefix="qc_resnet_gemms_") as d:
        for level in levels:
            exe = build_resnet_driver(level, Path(d))
            patterns = {"gemm": rf"^qc_arm_gemm_{level}$|_tile_\d+x\d+$|^tile_\d+x\d+$", "mem": LIBC_MEM,
                        "pack_weights": rf"^qc_arm_pack_{level}$"}
            full = count_by_symbols(exe, args, patterns)
            base = count_by_symbols(exe, ["--no-gemm", *args], patterns)
            if base.groups["gemm"] != 0 or base.groups["pack_weights"] != full.groups["pack_weights"]:
                raise CountError(f"{level}: the --no-gemm run differs outside the GEMMs: {base} vs {full}")
            gemm_mem = full.groups["mem"] - base.groups["mem"]
            pack = full.groups["pack_weights"] + base.groups["mem"]   # the driver itself copies nothing
            rows.append({"level": level, "macs": macs, "total": full.total, "gemm": full.groups["gemm"],
                         "gemm_mem": gemm_mem, "pack_weights": pack,
                         "rest": full.total - full.groups["gemm"] - gemm_mem - pack})
    return rows


def reference_ints(qm, *inputs):
    """The integers the reference interpreter's final Dequantize reads: what the compiled model's
    `qc_model_main run ... int` writes."""
    from qcompiler.core.integer_ops import Dequantize
    from qcompiler.core.reference import run_reference

    gm = qm.graph_module
    _, values = run_reference(gm, *inputs, capture=True)
    dq, = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Dequantize)]
    return values[dq.args[0].name]


def resnet18_model_counts(levels: Sequence[str], size: int = 224, threads: int = 1) -> list[dict]:
    """The zoo's ResNet-18 (torchvision's layout, random weights, BatchNorm re-estimated on 2
    images), quantized once (int8_narrow weights, min/max uint8 activations, fp32 requantization)
    and compiled by qcompiler for each ARM target; one run of each compiled program (its
    artifact: the model's C, the target's runtime and qc_model_main, static, -O2 / -O3) counted,
    its integer outputs checked against the reference interpreter's."""
    import warnings

    import torch

    import qcompiler
    from qcompiler import QConfig, TensorSpec
    from qcompiler.zoo import prepare_random_model, smooth_random_images

    targets = {"neon": "arm", "dotprod": "arm+dotprod", "i8mm": "arm+i8mm"}
    x = smooth_random_images(1, size=size, seed=3)
    model = prepare_random_model("resnet18", calib_images=2, size=size)
    config = QConfig(activation=TensorSpec("uint8", symmetric=False, observer="minmax"))
    qm = qcompiler.quantize(model, [(x,)], config=config, target="arm", progress=False)
    macs = graph_macs(qm.graph_module, x)
    expected = reference_ints(qm, x)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qc_resnet_model_") as d:
        inputs, outputs = Path(d) / "in.bin", Path(d) / "out.bin"
        inputs.write_bytes(x.numpy().tobytes())
        for level in levels:
            with warnings.catch_warnings():      # quantized for the baseline, compiled for every level
                warnings.filterwarnings("ignore", message=r"compile\(\): the model was quantized for")
                compiled = qcompiler.compile(qm, target=targets[level], pytorch_fallback=False)
            if compiled.artifact.runner is None:
                raise CountError("on an aarch64 host the compiled model is a shared library: count a bundle's "
                                 "program instead (compiled.save(dir); make -C dir qc_model_main)")
            weights = Path(d) / f"weights_{level}.bin"
            weights.write_bytes(compiled.native.weights)
            row = count_model(compiled.artifact.path, ["run", weights, inputs, outputs, "int", threads], macs)
            got = torch.frombuffer(bytearray(outputs.read_bytes()), dtype=expected.dtype).reshape(expected.shape)
            if not torch.equal(got, expected):
                raise CountError(f"{targets[level]}: the counted run's outputs differ from the reference")
            load = count_model_load(compiled.artifact.path, weights)
            rows.append({"level": level, "target": targets[level], **row, "load_instructions": load["instructions"],
                         "load_mem_instructions": load["mem_instructions"]})
    return rows


def _print_model_rows(rows: list[dict], size: int, markdown: bool) -> None:
    """Per target: the whole run, its load part, and the inference (run − load) per MAC and split
    by code: GEMM kernels, libc memcpy/memset, GEMM glue, im2col, the rest (quantize, pooling,
    residual adds, dequantize), each as a share of the inference."""
    head = ("target", "run", "load", "inference", "per MAC", "GEMM kernels", "per MAC", "share", "libc memcpy/set",
            "GEMM glue", "im2col", "rest")
    print(f"{_versions()}; qcompiler's ResNet-18 {size}x{size}, batch 1, 1 thread: {rows[0]['macs']:,} MACs "
          "(convolutions + fc)\n")
    if markdown:
        print("| " + " | ".join(head) + " |\n| --- |" + " ---: |" * (len(head) - 1))
    for r in rows:
        macs, load = r["macs"], r["load_instructions"]
        run = r["instructions"] - load
        mem = r["mem_instructions"] - r["load_mem_instructions"]
        named = r["gemm_instructions"] + mem + r["glue_instructions"] + r["im2col_instructions"]
        share = lambda n: f"{n / run:.1%}"   # noqa: E731
        cells = (r["target"], f"{r['instructions']:,}", f"{load:,}", f"{run:,}", f"{run / macs:.4f}",
                 f"{r['gemm_instructions']:,}", f"{r['gemm_per_mac']:.4f}", share(r["gemm_instructions"]), share(mem),
                 share(r["glue_instructions"]), share(r["im2col_instructions"]), share(run - named))
        print("| " + " | ".join(cells) + " |" if markdown else "  ".join(f"{h}: {c}" for h, c in zip(head, cells)))


def _versions() -> str:
    qemu = subprocess.run([emulator()[0], "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    cc = subprocess.run([toolchain.find_compiler("aarch64"), "--version"], capture_output=True,
                        text=True).stdout.splitlines()[0]
    return f"{qemu}; {cc}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="count a program's instructions: run [--group NAME=REGEX]... -- EXE ARGS")
    run.add_argument("--group", action="append", default=[], metavar="NAME=REGEX",
                     help="instructions in functions whose name matches REGEX (repeatable)")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    res = sub.add_parser("resnet18", help="ResNet-18's convolutions as GEMMs through each level")
    res.add_argument("--levels", default="neon,dotprod,i8mm")
    res.add_argument("--size", type=int, default=224, help="input height = width (224)")
    res.add_argument("--markdown", action="store_true")
    whole = sub.add_parser("resnet18-model", help="the whole ResNet-18 compiled for each ARM target")
    whole.add_argument("--levels", default="neon,dotprod,i8mm")
    whole.add_argument("--size", type=int, default=224, help="input height = width (224)")
    whole.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    try:
        if args.cmd == "run":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not argv:
                ap.error("run: give the executable (and its arguments) after --")
            patterns = dict(g.split("=", 1) for g in args.group)
            c = count_by_symbols(argv[0], argv[1:], patterns) if patterns else count_instructions(argv[0], argv[1:])
            print(f"total {c.total}")
            for name, n in c.groups.items():
                print(f"{name} {n}")
            if c.groups:
                print(f"rest {c.rest}")
            return
        levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
        bad = [lv for lv in levels if lv not in MARCH]
        if bad:
            ap.error(f"unknown level(s) {bad}: choose from {list(MARCH)}")
        if args.cmd == "resnet18-model":
            _print_model_rows(resnet18_model_counts(levels, args.size), args.size, args.markdown)
            return
        rows = resnet18_counts(levels, args.size)
    except CountError as e:
        sys.exit(f"arm_qemu_count: {e}")
    print(f"{_versions()} -O3; ResNet-18 {args.size}x{args.size}, batch 1: "
          f"{len(resnet18_gemms(args.size))} GEMMs, {rows[0]['macs']:,} MACs\n")
    head = ("level", "GEMM kernel instrs", "per MAC", "+ its memcpy/memset", "per MAC", "MACs per instr",
            "weight packing", "rest")
    if args.markdown:
        print("| " + " | ".join(head) + " |\n| --- |" + " ---: |" * (len(head) - 1))
    for r in rows:
        gemm, both = r["gemm"] / r["macs"], (r["gemm"] + r["gemm_mem"]) / r["macs"]
        cells = (r["level"], f"{r['gemm']:,}", f"{gemm:.4f}", f"{r['gemm'] + r['gemm_mem']:,}", f"{both:.4f}",
                 f"{1 / both:.1f}", f"{r['pack_weights']:,}", f"{r['rest']:,}")
        print("| " + " | ".join(cells) + " |" if args.markdown else
              "  ".join(f"{h}: {c}" for h, c in zip(head, cells)))

if __name__ == "__main__":
    main()
