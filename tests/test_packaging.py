"""Packaging: the wheel holds every module and data file; a missing extra is named with its fix.

`.ci/run` also builds the wheel, installs it in a fresh environment and runs the CLI from outside
the source tree; the check here is the fast one that names what pyproject.toml leaves out.
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lto_core.data import load_dataset
from lto_export.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _setuptools_table() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_folders(table: dict) -> dict[str, Path]:
    """Import name -> folder of every package in the source tree, under the package-dir mapping."""
    found = {}
    for top, folder in table["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder)
            found[".".join((top, *relative.parts))] = init.parent
    return found


def test_every_package_with_modules_is_listed():
    table = _setuptools_table()
    folders = _package_folders(table)
    missing = sorted(set(folders) - set(table["packages"]))
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}: the wheel would not hold them"
    for top, folder in table["package-dir"].items():
        for module in (ROOT / folder).rglob("*.py"):
            assert module.parent in folders.values(), f"{module} is in a folder without __init__.py, so no wheel holds it"


def test_every_data_file_is_in_package_data():
    table = _setuptools_table()
    folders = _package_folders(table)
    owner = {folder: name for name, folder in folders.items()}
    for top, top_folder in table["package-dir"].items():
        for path in (ROOT / top_folder).rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            folder = next(f for f in path.parents if f in owner)  # the package the file lies in
            name = owner[folder]
            patterns = table.get("package-data", {}).get(name, [])
            relative = path.relative_to(folder).as_posix()
            assert any(fnmatch.fnmatch(relative, p) for p in patterns), (
                f"{path.relative_to(ROOT)} is not matched by package-data {name} = {patterns}: the wheel would not hold it"
            )


@pytest.fixture
def without_mnist1d(monkeypatch):
    """Make ``import mnist1d`` fail as it does when the ``bench`` extra is not installed."""
    for name in [m for m in sys.modules if m == "mnist1d" or m.startswith("mnist1d.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mnist1d", None)


def test_mnist1d_without_its_package_names_the_extra(without_mnist1d):
    with pytest.raises(ModuleNotFoundError, match=r"mnist1d data needs the mnist1d package.*pip install 'lto\[bench\]'"):
        load_dataset("mnist1d")


def test_bench_with_mnist1d_without_its_package_is_a_usage_error(without_mnist1d, tmp_path):
    result = CliRunner().invoke(main, ["bench", "cl", "--quick", "--data", "mnist1d", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "--data" in result.output and "pip install 'lto[bench]'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "results.json").exists()
