"""The package's layering: library / runner / reports, each importing only from the layers beneath it.

Imports are read from the source (``ast``), lazy imports inside functions included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "odenet"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names; ``from pkg import sub`` resolves to ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{alias.name}" for alias in node.names}
            found = {s for s in subs if s in MODULES}
            out |= found if found else {target}
            if found != subs:
                out.add(target)
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> str:
    if name.startswith("odenet.reports") or name == "odenet.report":
        return "reports"
    if name.startswith("odenet.runner") or name == "odenet.run":
        return "runner"
    if name.startswith("odenet.conf"):
        return "conf"
    return "library"


RANK = {"library": 0, "runner": 1, "reports": 2}


def _third_party(name: str) -> set[str]:
    return {m.split(".")[0] for m in IMPORTS[name] if not m.startswith("odenet")}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) != "conf"))
def test_each_module_imports_only_its_own_layer_or_below(name):
    mine = RANK[layer(name)]
    above = sorted(m for m in IMPORTS[name] if m.startswith("odenet.") and m in MODULES
                   and layer(m) in RANK and RANK[layer(m)] > mine)
    assert not above, f"{name} ({layer(name)}) imports higher layers: {above}"


def test_matplotlib_only_in_reports():
    offenders = sorted(n for n in MODULES if "matplotlib" in _third_party(n) and layer(n) != "reports")
    assert not offenders


def test_library_imports_no_hydra_omegaconf_matplotlib():
    offenders = {n: sorted(_third_party(n) & {"hydra", "omegaconf", "matplotlib", "yaml"})
                 for n in MODULES if layer(n) == "library"}
    assert not {n: v for n, v in offenders.items() if v}


def test_no_import_cycles():
    graph = {n: {m for m in IMPORTS[n] if m in MODULES and m != n} for n in MODULES}
    # A package's __init__ that re-exports its submodules is imported by them only as their parent, which Python
    # runs first; an edge child -> parent package counts only when the child imports a name from the parent.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_no_module_over_the_line_limit():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}


def test_import_odenet_loads_no_hydra_omegaconf_matplotlib():
    code = ("import sys, odenet, odenet.analysis, odenet.data, odenet.integrator; "
            "print(sorted(m for m in ('hydra', 'omegaconf', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]"


def test_runner_never_loads_reports():
    code = ("import sys, odenet.runner.train, odenet.runner.rundir; "
            "print(sorted(m for m in sys.modules if m.startswith('odenet.report') or m == 'matplotlib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]"
