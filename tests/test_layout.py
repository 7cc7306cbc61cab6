"""The package layout: no module of tops is hidden behind a same-named attribute of its
package, no module reaches into another module's (or Triton's) ``_`` names, the tests use
only public names of tops, and ``-m tpu`` selects what ``-k tpu`` does (conftest.py)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tops import backends

ROOT = Path(__file__).resolve().parent.parent

# Triton has no public name for the combine functions that its interpreter runs as one
# NumPy call (tops/gpu/reduce.py says why); that module is the one place importing them.
ALLOWED_PRIVATE = {
    ("tops/gpu/reduce.py", "triton.language.standard._elementwise_max"),
    ("tops/gpu/reduce.py", "triton.language.standard._elementwise_min"),
    ("tops/gpu/reduce.py", "triton.language.standard._sum_combine"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tops_modules() -> list[str]:
    """Every module of tops; ``tops.gpu`` only where its packages are installed, and not
    ``__main__`` (importing it runs the command)."""
    names = [_module_name(path) for path in sorted((ROOT / "tops").rglob("*.py"))]
    names = [name for name in names if not name.endswith("__main__")]
    if not backends.gpu_available():
        names = [name for name in names if not name.startswith("tops.gpu")]
    return names


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        root = _dotted(node.value)
        return None if root is None else f"{root}.{node.attr}"
    return None


def private_uses(path: Path, prefix: str = "") -> list[str]:
    """``file:line: module._name`` for every ``_`` name of another module that ``path``
    imports or reads through a module alias, counting only modules whose name starts
    with ``prefix`` (all of them by default)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    aliases: dict[str, str] = {}  # local name -> the module it is bound to
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.partition(".")[0]
                aliases[alias.asname or root] = alias.name if alias.asname else root
                if any(_is_private(part) for part in alias.name.split(".")):
                    found.add((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            module = node.module or ""
            if node.level:
                module = importlib.util.resolve_name("." * node.level + module, package)
            if any(_is_private(part) for part in module.split(".")):
                found.add((node.lineno, module))
            for alias in node.names:
                if _is_private(alias.name):
                    found.add((node.lineno, f"{module}.{alias.name}"))
                elif _is_module(f"{module}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain = _dotted(node.value)
            root, _, rest = (chain or "").partition(".")
            if root in aliases:
                module = ".".join(filter(None, (aliases[root], rest)))
                found.add((node.lineno, f"{module}.{node.attr}"))
    where = str(path.relative_to(ROOT))
    return sorted(
        f"{where}:{line}: {name}"
        for line, name in found
        if name.startswith(prefix) and (where, name) not in ALLOWED_PRIVATE
    )


@pytest.mark.parametrize("name", _tops_modules())
def test_no_module_is_shadowed_by_an_attribute_of_its_package(name):
    module = importlib.import_module(name)
    package, _, attribute = name.rpartition(".")
    if package:
        assert getattr(importlib.import_module(package), attribute) is module


def test_the_op_functions_stay_callable():
    import tops.ops

    for name in tops.ops.__all__:
        assert callable(getattr(tops.ops, name)), name


def test_tops_uses_no_private_name_of_another_module():
    found = [use for path in sorted((ROOT / "tops").rglob("*.py")) for use in private_uses(path)]
    assert not found, "\n".join(found)


def test_tests_use_no_private_name_of_tops():
    paths = [ROOT / "conftest.py", *sorted((ROOT / "tests").rglob("*.py"))]
    found = [use for path in paths for use in private_uses(path, prefix="tops.")]
    assert not found, "\n".join(found)


def _collected(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_the_tpu_mark_selects_what_the_tpu_keyword_does():
    # -m on the command line replaces addopts' -m 'not slow': -m "" keeps both sides whole.
    marked = _collected("-m", "tpu", "tests/ops/topk")
    named = _collected("-m", "", "-k", "tpu", "tests/ops/topk")
    assert marked and all("tpu" in test.rpartition("::")[2] for test in marked)
    assert sorted(marked) == sorted(named)
