"""The documentation site builds, offline and warning-free, and its API reference covers every module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_docstrings import MODULES

ROOT = Path(__file__).resolve().parents[1]


def _documented_modules() -> set[str]:
    """Objects named by a ``::: name`` directive in the API reference pages."""
    names = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        names.update(re.findall(r"^:::\s+([\w.]+)\s*$", page.read_text(), flags=re.MULTILINE))
    return names


def test_reference_covers_every_module():
    """A new module gets a ``::: module`` entry in docs/reference/, or the test names it."""
    missing = sorted(m for m, _ in MODULES if m not in _documented_modules() and m != "lto_adapters")
    assert not missing, f"modules missing from docs/reference/*.md (add a '::: name' line): {missing}"


def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict`` succeeds: no broken link, no docstring the renderer warns about."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    mkdocs = shutil.which("mkdocs")
    command = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "ORT_DISABLE_TELEMETRY": "1"}
    result = subprocess.run(
        [*command, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "reference" / "adapters-torch" / "index.html").is_file()
