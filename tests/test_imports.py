"""The import graph: no cycle among the project's modules at any level (function-level imports
included), and collecting the tests imports no engine (docs/architecture.md, "Imports").

An engine costs seconds to import (JAX, PyTensor, Stan's interfaces); a test that needs one
imports it when it runs (tests/conftest.py ``lazy_module``), so ``pytest --collect-only`` and a
run of the engine-free tests never pay for it. A module that ``arviz_base`` registers lazily
(it does so for JAX and NumPyro) is not imported until used, and does not count.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("pymc", "pytensor", "jax", "numpyro", "stan", "httpstan", "cmdstanpy", "nutpie", "bridgestan")

COLLECT = f"""
import importlib.util, json, sys
import pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", {str(ROOT / "tests")!r}])
loaded = sorted(name for name, module in list(sys.modules.items())
                if name in {ENGINES!r} and not isinstance(module, importlib.util._LazyModule))
print("ENGINES " + json.dumps({{"code": int(code), "engines": loaded}}))
"""


def test_collecting_the_tests_imports_no_engine():
    done = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, capture_output=True, text=True)
    line = [text for text in done.stdout.splitlines() if text.startswith("ENGINES ")]
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(line[-1][len("ENGINES "):])
    assert result == {"code": 0, "engines": []}


def import_cycles(root: Path, packages=("backends", "bench", "models")) -> list[list[str]]:
    """The strongly connected components of more than one module in the graph of every import
    statement (module level or inside a function) between the modules of ``packages`` under
    ``root``; a package's ``__init__`` is the package's own node (Tarjan's algorithm)."""
    modules = {}
    for path in root.glob("**/*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] in packages and ".venv" not in parts:
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_at_any_level():
    assert import_cycles(ROOT) == []


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "a.py").write_text("from bench.b import g\n")
    (tmp_path / "bench" / "b.py").write_text("def g():\n    from bench.a import f\n")
    (tmp_path / "bench" / "c.py").write_text("import bench.a\n")
    assert import_cycles(tmp_path) == [["bench.a", "bench.b"]]
