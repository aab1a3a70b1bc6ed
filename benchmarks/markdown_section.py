"""Write a benchmark's results into its own section of a markdown file (docs/benchmarks.md)."""
from __future__ import annotations

import os


def replace_section(path: str, title: str, text: str) -> None:
    """Replace the section headed ``title`` (a ``## `` line, up to the next one) with ``text``
    (which starts with that heading), or append it; the file is created if needed and replaced
    atomically."""
    old = open(path).read() if os.path.exists(path) else ""
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == title), None)
    text = text if text.endswith("\n") else text + "\n"
    if start is None:
        sep = "" if not old or old.endswith("\n\n") else ("\n" if old.endswith("\n") else "\n\n")
        new = old + sep + text
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)
