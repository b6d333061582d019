"""backends.jax_setup: JAX's process-wide settings, without importing JAX where it is not loaded."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A fresh process as a worker or the command's own is: arviz_base imported (it registers an
# unloaded placeholder for JAX in sys.modules), JAX's environment variables unset.
CHECK = """
import json, os, sys
import arviz_base
from backends.jax_setup import configure
before = type(sys.modules.get("jax")).__name__
configure()
after = type(sys.modules.get("jax")).__name__
flags, x64 = os.environ.get("XLA_FLAGS", ""), os.environ.get("JAX_ENABLE_X64")
import jax.numpy as jnp  # JAX loads now, and reads what configure set
print("RESULT " + json.dumps([before, after, flags, x64, str(jnp.zeros(1).dtype), len(jnp.ones(1).devices())]))
"""


def test_configure_leaves_an_unloaded_jax_unloaded_and_sets_what_it_reads():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True)
    line = [text for text in done.stdout.splitlines() if text.startswith("RESULT ")]
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    before, after, flags, x64, dtype, _ = json.loads(line[-1][len("RESULT "):])
    assert before == "_LazyModule"  # the case that matters is there
    assert after == "_LazyModule"  # configure did not load JAX
    assert flags == f"--xla_force_host_platform_device_count={os.cpu_count() or 1}"
    assert x64 == "1" and dtype == "float64"
