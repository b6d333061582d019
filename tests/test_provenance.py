"""run.json's versions (bench.run.provenance) are read without importing any backend's engine."""

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
versions = environment(["numpyro", "pymc", "stan"])["versions"]
loaded = sorted(name for name, module in list(sys.modules.items())
                if name in {engines!r} and not isinstance(module, importlib.util._LazyModule))
import httpstan, jax, numpyro
header = (Path(httpstan.__file__).parent / "include" / "stan" / "version.hpp").read_text()
stan = ".".join(dict(re.findall(r"#define STAN_(MAJOR|MINOR|PATCH) (\\d+)", header))[part]
                for part in ("MAJOR", "MINOR", "PATCH"))
print("RESULT " + json.dumps({{"versions": versions, "loaded": loaded,
                               "truth": {{"jax": jax.__version__, "numpyro": numpyro.__version__, "stan": stan}}}}))
"""


def test_run_json_versions_import_no_engine_and_match_the_engines():
    engines = ("pymc", "pytensor", "jax", "jaxlib", "numpyro", "blackjax", "nutpie", "numba", "httpstan", "stan")
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(engines=engines)], cwd=ROOT, capture_output=True,
                          text=True)
    line = [text for text in done.stdout.splitlines() if text.startswith("RESULT ")]
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(line[-1][len("RESULT "):])
    assert result["loaded"] == []
    versions, truth = result["versions"], result["truth"]
    assert versions["jax"] == truth["jax"] and versions["numpyro"] == truth["numpyro"]
    assert versions["stan (httpstan)"] == truth["stan"]
    assert {"pymc", "pytensor", "nutpie", "cmdstanpy", "pystan", "httpstan", "cmdstan", "cmdstan path",
            "mixbench", "numpy"} <= set(versions)
