"""Package discovery (everything else is in pyproject.toml).

The import package ``qcompiler`` is assembled from three source folders (pyproject's
``package-dir``): qcompiler/, passes/ (``qcompiler.passes``) and backends/
(``qcompiler.backends``). setuptools' ``find`` cannot walk such a mapping, so it runs here once
per folder; every ``.c``/``.h`` under a package's non-package subfolders (backends/c_runtime,
backends/x86/kernels, ...) ships as that package's data, since the backends compile them at run
time. tests/test_wheel.py checks the wheel against the source tree.
"""
from pathlib import Path

from setuptools import setup

ROOTS = {"qcompiler": "qcompiler", "qcompiler.passes": "passes", "qcompiler.backends": "backends"}
C_FILES = (".c", ".h")


def is_package(folder: Path) -> bool:
    # Any folder with Python modules, __init__.py or not (qcompiler/core is a namespace package).
    return folder.name != "__pycache__" and any(folder.glob("*.py"))


def package_folders() -> dict[str, Path]:
    folders = {}
    for package, root in ROOTS.items():
        for folder in [Path(root), *sorted(Path(root).rglob("*"))]:
            if folder.is_dir() and is_package(folder):
                folders[".".join([package, *folder.relative_to(root).parts])] = folder
    return folders


def c_sources(folder: Path) -> list[str]:
    """C files under ``folder`` that belong to it, not to one of its subpackages."""
    def in_subpackage(rel: Path) -> bool:
        return any(is_package(folder / d) for d in rel.parents if d != Path("."))
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.suffix in C_FILES and not in_subpackage(p.relative_to(folder)))


FOLDERS = package_folders()
setup(packages=sorted(FOLDERS),
      package_data={package: files for package, folder in FOLDERS.items() if (files := c_sources(folder))})
