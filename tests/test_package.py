"""The package's shape: every package is in the wheel's list, nothing imports upward in a circle,
only the CLI touches Hydra, and the linter passes."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import tomllib

from conftest import REPO

PACKAGE = REPO / "ls_bench"


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path) -> set[str]:
    """The ls_bench modules a file imports, at any level (module, function, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from ls_bench.evaluate import figures`
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("ls_bench")}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(p) if m in modules and m != name} for name, p in modules.items()}


def test_every_package_is_listed_for_the_wheel() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {module_name(p) for p in PACKAGE.rglob("__init__.py")} | {"ls_bench._configs"}
    assert listed == on_disk


def test_no_import_circles() -> None:
    """Nothing below imports upward: the import graph has no cycle (Tarjan-free: a depth-first
    search that meets a module still on its stack has found one)."""
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_the_circle_finder_finds_a_circle(tmp_path, monkeypatch) -> None:
    """The check above can fail: two modules importing each other (one only for a type) are a cycle."""
    pkg = tmp_path / "ls_bench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from ls_bench.b import f\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ls_bench.a import g\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(AssertionError, match="ls_bench.a"):
        test_no_import_circles()


def test_only_the_cli_imports_hydra() -> None:
    """Hydra stops at the door (STYLE habit 1): library modules take typed dataclasses."""
    users = sorted(module_name(p) for p in PACKAGE.rglob("*.py")
                   if any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                          any(name.split(".")[0] == "hydra" for name in
                              ([n.module or ""] if isinstance(n, ast.ImportFrom) else [a.name for a in n.names]))
                          for n in ast.walk(ast.parse(p.read_text()))))
    assert users == ["ls_bench.cli"]


def test_ruff_passes() -> None:
    """The linter of the dev extra, with the rules in pyproject.toml, on the package, tests and scripts."""
    # The venv's own ruff (python -m ruff), found whether or not the venv is activated.
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "ls_bench", "tests", "scripts"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


SCREEN = 50  # lines: a function longer than this is split by idea (STYLE habit 4)


def long_functions(paths) -> list[str]:
    return [f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in paths for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > SCREEN]


def test_no_function_passes_a_screen() -> None:
    paths = [p for d in ("ls_bench", "scripts", "tests") for p in sorted((REPO / d).rglob("*.py"))]
    assert not long_functions(paths)


def test_the_screen_check_finds_a_long_function(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    fits, too_long = tmp_path / "fits.py", tmp_path / "too_long.py"
    fits.write_text("def f():\n" + "    x = 1\n" * (SCREEN - 1))
    too_long.write_text("def g():\n" + "    x = 1\n" * SCREEN)
    assert long_functions([fits, too_long]) == [f"too_long.py:1 g ({SCREEN + 1} lines)"]
