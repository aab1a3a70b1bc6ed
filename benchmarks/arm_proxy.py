"""Performance proxy of the ARM kernels (issue 11): llvm-mca on each level's hot loop.

No ARM hardware here, so: compile each kernel file with aarch64-linux-gnu-gcc -O3 -S for its
-march with QC_ARM_MCA_MARKERS (asm comments around the hot loop), cut out the innermost loop
(label .. backward branch) between the markers, and give it to llvm-mca for several cores.
Reported: cycles per iteration, cycles per MAC, and the ratio to the ideal of the level's MAC
instruction, measured the same way: a loop of 16 independent MAC instructions (sdot 16 MACs,
smmla 32, smull/smlal2 8 each for the baseline, whose sadalp is counted as overhead) on the
same core model. Goal (issue 11): GEMM inner loop within 1.3x of ideal at every level.
Cores: CPUS below; the scheduling tables llvm-mca really used are read from its report and
shown (an older LLVM silently gives N1 and V1 other cores' tables: LLVM 19 has both).

    python benchmarks/arm_proxy.py [--markdown] [--show-loops] [--mca llvm-mca-19]
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS, RUNTIME = ROOT / "backends" / "arm" / "kernels", ROOT / "backends" / "c_runtime"
ITERATIONS = 1000

# loop name -> (source, -march, ideal MAC instruction kind); MACs per iteration are counted
# from the extracted loop (MAC_RE), so unrolling shows up as it should
LOOPS = {
    "neon": ("qc_arm_gemm_neon.c", "armv8-a", "smull/smlal2"),
    "dotprod": ("qc_arm_gemm_dotprod.c", "armv8.2-a+dotprod", "sdot"),
    "i8mm": ("qc_arm_gemm_i8mm.c", "armv8.6-a+i8mm", "smmla"),
    "depthwise": ("qc_arm_depthwise_neon.c", "armv8-a", "smlal/smlal2 (16-bit)"),
}
MAC_RE = {"neon": (r"(smull|smlal2)\s+v\d+\.8h", 8), "dotprod": (r"sdot\s", 16), "i8mm": (r"smmla\s", 32),
          "depthwise": (r"smlal2?\s+v\d+\.4s", 4)}


def macs_per_iteration(name, body):
    pattern, per = MAC_RE[name]
    return per * sum(1 for ln in body if re.match(pattern, ln))
# the synthetic ideal: 16 independent accumulators, one MAC instruction each (MACs per instruction)
IDEAL = {
    "smull/smlal2": ([f"smlal2 v{i}.8h, v30.16b, v31.16b" if i % 2 else f"smull v{i}.8h, v30.8b, v31.8b"
                      for i in range(16)], 8),
    "sdot": ([f"sdot v{i}.4s, v30.16b, v31.4b[{i % 4}]" for i in range(16)], 16),
    "smmla": ([f"smmla v{i}.4s, v30.16b, v31.16b" for i in range(16)], 32),
    "smlal/smlal2 (16-bit)": ([f"smlal{'2' if i % 2 else ''} v{i}.4s, v30.{'8h' if i % 2 else '4h'}, "
                               f"v31.{'8h' if i % 2 else '4h'}" for i in range(16)], 4),
}
# 14 independent chains of the baseline's full step (v30 / v31 the shared operands), each
# stage of all chains in turn so that an in-order core does not wait on a chain either
SCHEME_FLOOR = ([f"smull v{i}.8h, v30.8b, v31.8b" for i in range(14)]
                + [f"smlal2 v{i}.8h, v30.16b, v31.16b" for i in range(14)]
                + [f"sadalp v{14 + i}.4s, v{i}.8h" for i in range(14)])
# cores, and the levels each has beyond the baseline. N1 and V1 are issue 11's named cores
# (their own tables: in LLVM 19, not in 16); N2 a second 2-pipe core; A57 (= A72 class) and the in-order A55
# are the kind of core that runs the baseline level in practice (A57 lacks dotprod).
CPUS = {"neoverse-n1": {"dotprod"}, "neoverse-v1": {"dotprod", "i8mm"}, "neoverse-n2": {"dotprod", "i8mm"},
        "cortex-a57": set(), "cortex-a55": {"dotprod"}}
# the scheduling model each -mcpu should get (resource-name prefix); anything else is an older
# LLVM's fallback (llvm-mca 16: A57's tables for N1, N2's for V1), flagged in the output
EXPECTED_TABLES = {"neoverse-n1": "N1", "neoverse-v1": "V1", "neoverse-n2": "N2", "cortex-a57": "A57",
                   "cortex-a55": "CortexA55"}


def tools(mca_path=None):
    cc = shutil.which("aarch64-linux-gnu-gcc") or (shutil.which("gcc") if _is_arm() else None)
    # the newest installed: LLVM 19 has N1 and V1 tables, 16 has neither (Debian bookworm: llvm-19)
    mca = mca_path or next((p for v in range(25, 13, -1) if (p := shutil.which(f"llvm-mca-{v}"))), None) \
        or shutil.which("llvm-mca")
    if cc is None or mca is None:
        sys.exit("needs aarch64-linux-gnu-gcc and llvm-mca (Debian: gcc-aarch64-linux-gnu llvm-19)")
    return cc, mca


def _is_arm():
    import platform
    return platform.machine() in ("aarch64", "arm64")


def hot_loop(cc, name, src, march, tmp):
    """The instructions of the innermost loop between the markers of `name`."""
    asm = tmp / f"{name}.s"
    subprocess.run([cc, "-O3", "-S", "-DQC_ARM_MCA_MARKERS", f"-march={march}", f"-I{RUNTIME}",
                    str(KERNELS / src), "-o", str(asm)], check=True)
    text = asm.read_text()
    region = re.search(rf"LLVM-MCA-BEGIN {name}\n(.*?)LLVM-MCA-END {name}", text, re.S)
    if region is None:
        raise RuntimeError(f"{name}: markers not found in {asm}")
    lines = region.group(1).splitlines()
    loops = []
    for i, ln in enumerate(lines):   # backward branches: label at j < i
        m = re.match(r"\s*(b\.?\w*|cbn?z|tbn?z)\s+(?:.*,\s*)?(\.L\w+)\s*$", ln)
        if m:
            labels = [j for j in range(i) if lines[j].strip() == f"{m.group(2)}:"]
            if labels:
                loops.append(lines[labels[-1] + 1:i + 1])
    if not loops:
        raise RuntimeError(f"{name}: no loop between the markers")
    # the innermost loop without calls (gcc versions some loops: a tail copy through memcpy)
    loops = [lp for lp in loops if not any(re.match(r"\s*bl\s", ln) for ln in lp)] or loops
    body = min(loops, key=len)
    return [ln.strip() for ln in body if ln.strip() and not ln.strip().startswith((".", "//", "#"))]


def mca(mcabin, cpu, instrs, tmp, march_attr):
    f = tmp / "mca.s"
    f.write_text("\n".join(instrs) + "\n")
    out = subprocess.run([mcabin, "-mtriple=aarch64", f"-mcpu={cpu}", f"-mattr={march_attr}",
                          f"-iterations={ITERATIONS}", str(f)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[0] if out.stderr else "llvm-mca failed")
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", out.stdout).group(1))
    return cycles / ITERATIONS, _model(out.stdout)


def _model(report):
    """The scheduling model actually used, from its resource names (e.g. A57UnitX -> A57)."""
    names = re.findall(r"^\[[\d.]+\]\s+-\s+(\w+)", report, re.M)
    prefixes = {re.match(r"[A-Za-z]+\d*", n).group(0) for n in names} if names else set()
    return "/".join(sorted(prefixes)) or "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--show-loops", action="store_true", help="print each extracted loop")
    ap.add_argument("--mca", help="llvm-mca binary (default: the newest llvm-mca-N on PATH)")
    args = ap.parse_args()
    cc, mcabin = tools(args.mca)
    rows, fallbacks = [], set()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bodies = {name: hot_loop(cc, name, *spec[:2], tmp) for name, spec in LOOPS.items()}
        extra = {}   # the baseline scheme's own floor: smull + smlal2 + sadalp per 16 MACs
        for cpu in CPUS:
            cyc = mca(mcabin, cpu, SCHEME_FLOOR, tmp, "+dotprod,+i8mm")[0]
            extra[cpu] = cyc / (len(SCHEME_FLOOR) // 3 * 16)
        if args.show_loops:
            for name, body in bodies.items():
                print(f"--- {name} ({len(body)} instructions)\n" + "\n".join(body))
        for name, (src, march, kind) in LOOPS.items():
            ideal_instrs, ideal_macs = IDEAL[kind]
            macs = macs_per_iteration(name, bodies[name])
            for cpu, features in CPUS.items():
                if name in ("dotprod", "i8mm") and name not in features:
                    rows.append((name, cpu, len(bodies[name]), macs, None, None, None, f"core lacks {name}"))
                    continue
                attr = "+dotprod,+i8mm"
                per_iter, model = mca(mcabin, cpu, bodies[name], tmp, attr)
                if model != EXPECTED_TABLES[cpu]:
                    fallbacks.add(f"{cpu} -> {model}")
                ideal = mca(mcabin, cpu, ideal_instrs, tmp, attr)[0] / (len(ideal_instrs) * ideal_macs)
                rows.append((name, cpu, len(bodies[name]), macs, per_iter, per_iter / macs,
                             per_iter / macs / ideal, model))
    version = subprocess.run([mcabin, "--version"], capture_output=True, text=True).stdout
    version = next((ln.strip() for ln in version.splitlines() if "version" in ln.lower()), "?")

    def floor(name, cpu, cpm):   # the baseline against its own scheme's floor
        return f"{cpm / extra[cpu]:.2f}" if name == "neon" and cpm is not None else "–"

    if fallbacks:
        print(f"NOTE: this llvm-mca lacks some cores' own tables ({', '.join(sorted(fallbacks))}); "
              f"LLVM 19 has N1 and V1 tables (Debian: apt-get install llvm-19)\n")
    if args.markdown:
        print(f"llvm-mca: {version}; {ITERATIONS} iterations\n")
        print("| loop | -mcpu (tables used) | instrs/iter | MACs/iter | cycles/iter | cycles/MAC | × ideal "
              "| × scheme floor |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, cpu, n, macs, it, cpm, ratio, note in rows:
            if it is None:
                print(f"| {name} | {cpu} | {n} | {macs} | – | – | {note} | – |")
            else:
                print(f"| {name} | {cpu} ({note}) | {n} | {macs} | {it:.2f} | {cpm:.4f} | {ratio:.2f} "
                      f"| {floor(name, cpu, cpm)} |")
    else:
        print(f"llvm-mca {version}")
        for name, cpu, n, macs, it, cpm, ratio, note in rows:
            print(f"{name:10s} {cpu:12s} {n:3d} instrs {macs:4d} MACs " +
                  (note if it is None else f"{it:7.2f} cyc/iter {cpm:.4f} cyc/MAC {ratio:5.2f}x ideal "
                   f"(floor {floor(name, cpu, cpm)})  tables {note}"))

if __name__ == "__main__":
    main()
