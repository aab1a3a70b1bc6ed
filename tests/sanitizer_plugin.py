"""pytest plugin for the sanitized runs of tests/test_sanitizers.py (loaded with ``-p``, in the
child process): at the end of the session, lists the qcompiler-built libraries this process has
mapped (a build cache entry: a manifest.json beside the .so) in ``$QC_SANITIZER_LOADED``, so the
parent can check that every one of them was built sanitized."""
import json
import os
from pathlib import Path


def pytest_sessionfinish(session, exitstatus):
    report = os.environ.get("QC_SANITIZER_LOADED")
    if not report:
        return
    libraries = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = Path(line.split(maxsplit=5)[-1]) if line.count(" ") >= 5 else None
        if path is not None and path.suffix == ".so" and (path.parent / "manifest.json").is_file():
            manifest = json.loads((path.parent / "manifest.json").read_text())
            libraries[str(path)] = manifest.get("flags", [])
    Path(report).write_text(json.dumps(libraries))
