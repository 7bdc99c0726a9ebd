"""Every public name of the documented packages has a docstring (the API reference is built from them).

Public means: in the module's ``__all__`` when it has one, else any top-level name not starting with
``_``; for classes also their public methods and properties. A constant counts as documented by a
``#:`` comment right above it or a string literal right below it (both render in the API reference).
The check reads the source with ``ast``, so it needs no framework installed (Keras is checked when
its adapter file exists).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path

import pytest

#: Packages whose every module is documented, with ``lto_core`` only through its public modules.
PACKAGES = ("lto_adapters", "lto_runtime", "lto_export", "lto_core")


def _package_modules() -> list[tuple[str, Path]]:
    """``(dotted name, source file)`` of every non-private module and subpackage of :data:`PACKAGES`."""
    found = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, f"package {package} is not installed (pip install -e .)"
        found.extend(_walk(package, Path(next(iter(spec.submodule_search_locations)))))
    return found


def _walk(name: str, root: Path) -> list[tuple[str, Path]]:
    """The package at ``root`` and its non-private modules and subpackages, recursively."""
    found = [(name, root / "__init__.py")]
    for info in pkgutil.iter_modules([str(root)]):
        if info.name.startswith("_"):
            continue
        if info.ispkg:
            found.extend(_walk(f"{name}.{info.name}", root / info.name))
        else:
            found.append((f"{name}.{info.name}", root / f"{info.name}.py"))
    return found


MODULES = _package_modules()


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                return [ast.literal_eval(e) for e in node.value.elts]
    return None


def _assigned_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _has_comment_doc(lines: list[str], node: ast.stmt) -> bool:
    """A ``#:`` comment on the line above the statement (Sphinx's convention for data)."""
    above = node.lineno - 2
    return above >= 0 and lines[above].strip().startswith("#:")


def _has_string_after(body: list[ast.stmt], index: int) -> bool:
    nxt = body[index + 1] if index + 1 < len(body) else None
    return isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)


def _is_setter_or_overload(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in node.decorator_list:
        if isinstance(dec, ast.Attribute) and dec.attr in ("setter", "deleter"):
            return True
        if isinstance(dec, ast.Name) and dec.id == "overload":
            return True
    return False


def undocumented(module: str, path: Path) -> list[str]:
    """Dotted names of the public objects in ``path`` that have no docstring."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    missing = [] if ast.get_docstring(tree) else [f"{module} (module docstring)"]
    declared = _declared_all(tree)

    def public(name: str) -> bool:
        return name in declared if declared is not None else not name.startswith("_")

    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not public(node.name):
                continue
            if not ast.get_docstring(node):
                missing.append(f"{module}.{node.name}")
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if (
                        isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and not member.name.startswith("_")
                        and not _is_setter_or_overload(member)
                        and not ast.get_docstring(member)
                    ):
                        missing.append(f"{module}.{node.name}.{member.name}")
        for name in _assigned_names(node):
            if name != "__all__" and public(name) and not (_has_comment_doc(lines, node) or _has_string_after(tree.body, i)):
                missing.append(f"{module}.{name}")
    return missing


def test_documented_modules_found():
    names = {m for m, _ in MODULES}
    for required in ("lto_adapters.torch", "lto_adapters.numpy", "lto_runtime", "lto_export", "lto_core.step"):
        assert required in names


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_public_names_have_docstrings(module, path):
    missing = undocumented(module, path)
    assert not missing, "public names without a docstring (the API reference needs one):\n  " + "\n  ".join(missing)


def test_reexported_names_have_docstrings():
    """Names a package re-exports in ``__all__`` (classes and functions) carry a docstring."""
    missing = []
    for package in PACKAGES:
        mod = importlib.import_module(package)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
                missing.append(f"{package}.{name}")
    assert not missing, f"re-exported names without a docstring: {missing}"

