"""The wheel carries the whole package: every subpackage and the data the benchmarks and tests read.

``pyproject.toml`` lists the packages by hand (the repo root *is* ``accelc``, so setuptools'
discovery cannot be pointed at it); an editable install hides a missing entry, a wheel does not
(``accelc.targets.cuda`` and ``accelc.schedules.cuda`` were missing from it until 2026-12-06).
"""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".venv", ".git", "build", "dist"}


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_dirs():
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and (rel.parts[0] in SKIP or rel.parts[0].startswith(".") or rel.parts[0].endswith(".egg-info")):
            continue
        yield ".".join(("accelc",) + rel.parts)


def test_every_subpackage_is_listed():
    listed = set(_config()["packages"])
    found = set(_package_dirs())
    assert "accelc.schedules.cuda" in found and "accelc.targets.cuda" in found
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"packages listed but not in the tree: {sorted(listed - found)}"


def test_data_folders_ship_with_their_package():
    data = _config().get("package-data", {})
    for folder in sorted(p for p in ROOT.rglob("data") if p.is_dir() and not set(p.relative_to(ROOT).parts) & SKIP
                         and not p.relative_to(ROOT).parts[0].startswith(".")):
        owner = ".".join(("accelc",) + folder.parent.relative_to(ROOT).parts)
        assert "data/**/*" in data.get(owner, []), f"{folder.relative_to(ROOT)} is not package data of {owner}"
