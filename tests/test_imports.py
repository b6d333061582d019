"""The import graph: collecting the tests imports no engine (docs/architecture.md, "Imports").

An engine costs seconds to import (JAX, PyTensor, Stan's interfaces); a test that needs one
imports it when it runs (tests/conftest.py ``lazy_module``), so ``pytest --collect-only`` and a
run of the engine-free tests never pay for it. A module that ``arviz_base`` registers lazily
(it does so for JAX and NumPyro) is not imported until used, and does not count.
"""

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
