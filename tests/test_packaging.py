"""Packaging: every package folder is listed in pyproject (a non-editable install needs the list)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"alignkit": "core", "alignkit.kernels": "kernels", "alignkit.plugins": "plugins", "alignkit.conf": "conf"}


def test_every_package_folder_is_listed():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    assert project["tool"]["setuptools"]["package-dir"] == ROOTS
    on_disk = set()
    for package, folder in ROOTS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            name = ".".join([package, *relative.parts]) if relative.parts else package
            if not any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                on_disk.add(name)
    assert on_disk == listed, f"missing from pyproject: {sorted(on_disk - listed)}; stale: {sorted(listed - on_disk)}"
