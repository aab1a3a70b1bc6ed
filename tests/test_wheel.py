"""The wheel, as a user gets it: built from the source tree, installed into a fresh virtual
environment, imported and used from a folder outside the checkout (an editable install hides
a package missing from the wheel; this does not)."""
from __future__ import annotations

import ast
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
#: import package -> source folder (pyproject.toml's package-dir)
ROOTS = {"qcompiler": "qcompiler", "qcompiler/passes": "passes", "qcompiler/backends": "backends"}
#: distribution name -> import name, where they differ
IMPORT_NAMES = {"scikit-learn": "sklearn"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a clean copy of the tree (building in place would write build/ into the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
    for folder in set(ROOTS.values()):
        shutil.copytree(REPO / folder, src / folder, ignore=junk)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", dist, src])
    (built,) = dist.glob("qcompiler-*.whl")
    return built


def run(command, **kwargs) -> str:
    proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{command[:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def source_files() -> dict[str, Path]:
    """Every file the wheel must hold, by its path in the wheel: the Python modules and the C
    sources and headers the backends compile at run time."""
    files = {}
    for package, folder in ROOTS.items():
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".c", ".h") and "__pycache__" not in path.parts:
                files[f"{package}/{path.relative_to(REPO / folder).as_posix()}"] = path
    return files


def test_wheel_holds_every_module_and_c_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(set(source_files()) - names)
    assert not missing, f"missing from the wheel: {missing}"
    assert "qcompiler/backends/c_emitter/__init__.py" in names   # the package the hand-written list missed


def test_declared_dependencies_are_imported(wheel):
    """Each requirement in the wheel's metadata is imported by some module of the package."""
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        imported = set()
        for name in z.namelist():
            if name.endswith(".py"):
                for node in ast.walk(ast.parse(z.read(name))):
                    if isinstance(node, ast.Import):
                        imported |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        imported.add(node.module.split(".")[0])
    requirements = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    dists = [req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("~")[0]
             .strip() for req in requirements]
    assert "torch" in dists
    unused = [d for d in dists if IMPORT_NAMES.get(d, d).replace("-", "_") not in imported]
    assert not unused, f"declared but never imported: {unused}"


# Runs in the fresh environment, from a folder outside the checkout.
USER_SCRIPT = r"""
import json, os, sys, importlib.metadata as md
import torch, torch.nn as nn
import qcompiler
from qcompiler.backends.c_emitter import lowering           # noqa: F401  (the package once left out)
from qcompiler.backends import c_target

venv = os.path.realpath(sys.prefix)
unmet = []
for req in md.requires("qcompiler") or []:
    if "extra ==" not in req:
        name = req.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip()
        try:
            md.version(name)
        except md.PackageNotFoundError:
            unmet.append(name)
result = {"file": os.path.realpath(qcompiler.__file__), "venv": venv, "unmet": unmet,
          "runtime_dir": os.path.realpath(c_target.C_RUNTIME_DIR), "cwd": os.getcwd()}
ok, why = qcompiler.available_targets()["x86"]
result["x86"] = why if not ok else None
if ok:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(32, 10)).eval()
    x = torch.randn(2, 3, 12, 12)
    qm = qcompiler.quantize(model, [x], progress=False)
    compiled = qcompiler.compile(qm, target="x86")
    result["exact"] = torch.equal(compiled(x), qm(x))
    result["library"] = str(compiled.native.path)
print(json.dumps(result))
"""


def test_wheel_installs_and_compiles_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel])
    # The dependencies (torch, ...) come from this interpreter's site-packages as a plain path
    # line: .pth files inside it (the editable install's finder among them) are not processed.
    site_dir = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    deps = [str(Path(torch.__file__).resolve().parent.parent), sysconfig.get_paths()["purelib"],
            *site.getsitepackages(), site.getusersitepackages()]
    (site_dir / "outer-deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    result = json.loads(run([python, "-c", USER_SCRIPT], cwd=elsewhere, env=env).strip().splitlines()[-1])
    venv_real = os.path.realpath(venv)
    assert result["file"].startswith(venv_real + os.sep), f"imported {result['file']}, not the wheel's copy"
    assert result["runtime_dir"].startswith(venv_real + os.sep)     # C sources read from the install too
    assert not result["unmet"], f"requirements not installed: {result['unmet']}"
    if result["x86"] is not None:
        pytest.skip(f"installed and imported; x86 target unavailable here: {result['x86']}")
    assert result["exact"], "the installed package's x86 build differs from the reference"
