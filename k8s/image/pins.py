"""The stack's requirement lines, read from pyproject.toml, the one place they are pinned; the
Makefile and the image's Dockerfile install from what this prints.

    python pins.py PYPROJECT torch        the torch pin (installed first, from PyTorch's CPU index on CPU)
    python pins.py PYPROJECT cpu|gpu|dev  the project's dependencies and those of that extra, one per line
    python pins.py PYPROJECT no-deps      what goes in with `pip install --no-deps` on CPU (torchrec: its
                                          metadata asks for the CUDA fbgemm-gpu, which fails without a driver)
"""

from __future__ import annotations

import sys

import tomllib


def pins(pyproject: str, what: str) -> list[str]:
    with open(pyproject, "rb") as f:
        meta = tomllib.load(f)
    project, extras = meta["project"], meta["project"]["optional-dependencies"]
    no_deps = meta["tool"]["argus"]["no-deps"]
    if what == "torch":
        return [d for d in project["dependencies"] if d.startswith("torch==")]
    if what == "no-deps":
        return list(no_deps)
    if what == "gpu":  # on CUDA machines torchrec keeps its dependencies (the pinned CUDA fbgemm-gpu)
        return project["dependencies"] + extras["gpu"] + no_deps
    if what in extras:
        return project["dependencies"] + extras[what]
    raise SystemExit(f"pins.py: unknown set {what!r}; use torch, no-deps or one of {sorted(extras)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print("\n".join(pins(sys.argv[1], sys.argv[2])))
