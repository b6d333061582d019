"""What a run's own process reads about its backends before any cell starts (run.json's versions,
bench.run.provenance; which backends share one program, for the cells' order) imports no engine."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Read the versions in a fresh process, note which engines it imported (arviz_base registers JAX
# and NumPyro as lazy modules, not imported until used: they do not count), then import the
# engines and ask them.
SCRIPT = """
import importlib.util, json, re, sys
from pathlib import Path
from bench.run.provenance import environment
from backends import BACKENDS, backend_class, shares_program
versions = environment(["numpyro", "pymc", "stan"])["versions"]
shared = {{name: shares_program(name) for name in BACKENDS}}
loaded = sorted(name for name, module in list(sys.modules.items())
                if name in {engines!r} and not isinstance(module, importlib.util._LazyModule))
import httpstan, jax, numpyro
shared_truth = {{name: backend_class(name).shared_program for name in BACKENDS}}
header = (Path(httpstan.__file__).parent / "include" / "stan" / "version.hpp").read_text()
stan = ".".join(dict(re.findall(r"#define STAN_(MAJOR|MINOR|PATCH) (\\d+)", header))[part]
                for part in ("MAJOR", "MINOR", "PATCH"))
print("RESULT " + json.dumps({{"versions": versions, "loaded": loaded,
                               "truth": {{"jax": jax.__version__, "numpyro": numpyro.__version__, "stan": stan}},
                               "shared": shared, "shared_truth": shared_truth}}))
"""


def test_versions_and_shared_programs_import_no_engine_and_match_the_backends():
    engines = ("pymc", "pytensor", "jax", "jaxlib", "numpyro", "blackjax", "nutpie", "numba", "httpstan", "stan")
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(engines=engines)], cwd=ROOT, capture_output=True,
                          text=True)
    line = [text for text in done.stdout.splitlines() if text.startswith("RESULT ")]
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(line[-1][len("RESULT "):])
    assert result["loaded"] == []
    assert result["shared"] == result["shared_truth"] and result["shared"]["stan"] is True
    versions, truth = result["versions"], result["truth"]
    assert versions["jax"] == truth["jax"] and versions["numpyro"] == truth["numpyro"]
    assert versions["stan (httpstan)"] == truth["stan"]
    assert {"pymc", "pytensor", "nutpie", "cmdstanpy", "pystan", "httpstan", "cmdstan", "cmdstan path",
            "mixbench", "numpy"} <= set(versions)
