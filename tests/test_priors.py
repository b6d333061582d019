"""Priors from the command line and from a spec file (TOML or JSON), and their one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli import build_parser
from bench.run.plan import run_cells
from bench.run.harness import load_cell_data
from models import MixbenchError, MixtureSpec, NormalPrior, SigmaPrior
from models.oracle import log_prior
from models.priors import load_spec_file, normal_prior_text, pi_alpha_text, sigma_prior_text

ROOT = Path(__file__).resolve().parents[1]

# posteriordb's low_dim_gauss_mix: ordered mu ~ Normal(0, 2), sigma ~ Normal(0, 2) truncated at 0
# (HalfNormal(2)), theta ~ Beta(5, 5) (Dirichlet(5, 5) on (theta, 1 - theta)).
LOW_DIM_GAUSS_MIX = """
K = 2
intercept = true
sigma = "per-component"
ordering = "intercept"
pi_alpha = 5.0
intercept_prior = { mu = 0.0, sigma = 2.0 }
sigma_prior = { family = "halfnormal", scale = 2.0 }
"""


def test_low_dim_gauss_mix_from_a_toml_spec_file(tmp_path):
    path = tmp_path / "ldgm.toml"
    path.write_text(LOW_DIM_GAUSS_MIX)
    fields = load_spec_file(path)
    spec = MixtureSpec.from_dict({"D": 0, **fields})
    assert spec.sigma_prior == SigmaPrior("halfnormal", 2.0) and spec.intercept_prior == NormalPrior(0.0, 2.0)
    assert spec.ordering == "intercept" and spec.sigma == "per-component"
    # Its log prior is posteriordb's: Beta(5, 5), two Normal(0, 2) ordered means (+log 2!: the
    # ordered region holds 1/2 of the iid prior), two HalfNormal(2) sds.
    from scipy import stats

    point = {"w": np.zeros((2, 0)), "b": np.array([-0.7, 1.9]), "sigma": np.array([0.8, 1.3]),
             "pi": np.array([0.35, 0.65])}
    expected = (stats.beta.logpdf(0.35, 5, 5) + stats.norm.logpdf(point["b"], 0, 2).sum() + np.log(2)
                + stats.halfnorm.logpdf(point["sigma"], scale=2).sum())
    assert log_prior(spec, point) == pytest.approx(expected, rel=1e-12)
    # The same as JSON.
    json_path = tmp_path / "ldgm.json"
    json_path.write_text(json.dumps(fields))
    assert load_spec_file(json_path) == fields


@pytest.mark.parametrize("content, suffix, needle", [
    ("K = ", ".toml", "malformed TOML"),
    ("{", ".json", "malformed JSON"),
    ("K = 2\ncomponents = 3\n", ".toml", "unknown spec field(s) components"),
    ("sigma_prior = { family = 'weibull', scale = 1.0 }", ".toml", "sigma prior family"),
    ("sigma_prior = { family = 'invgamma', scale = 1.0 }", ".toml", "sigma prior shape: required for a invgamma"),
    ("sigma_prior = { family = 'halfnormal', scale = 1.0, shape = 2.0 }", ".toml", "a halfnormal prior has none"),
    ("sigma_prior = { family = 'lognormal', scale = 1.0, shape = -1.0 }", ".toml", "sigma prior shape: must be a positive"),
    ("slope_prior = { mu = 0.0, sd = 1.0 }", ".toml", "slope_prior has unknown key(s) sd"),
    ("slope_prior = 3", ".toml", "slope_prior must be a table"),
    ("K = 2", ".yaml", "expected a .toml or .json file"),
])
def test_bad_spec_files_are_one_line_errors(tmp_path, content, suffix, needle):
    path = tmp_path / f"spec{suffix}"
    path.write_text(content)
    with pytest.raises(MixbenchError) as exc:
        load_spec_file(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_prior_options_parse_and_check():
    assert normal_prior_text("--slope-prior", "0, 10") == {"mu": 0.0, "sigma": 10.0}
    assert sigma_prior_text("--sigma-prior", "Uniform:50") == {"family": "uniform", "scale": 50.0}
    assert pi_alpha_text("--pi-alpha", "5") == 5.0 and pi_alpha_text("--pi-alpha", "1,2,3") == [1.0, 2.0, 3.0]
    for call, text, needle in ((normal_prior_text, "0", "expected MU,SD"),
                               (normal_prior_text, "0,-1", "must be a positive"),
                               (sigma_prior_text, "50", "expected uniform:UPPER"),
                               (sigma_prior_text, "weibull:2", "sigma prior family"),
                               (sigma_prior_text, "invgamma:3", "expected uniform:UPPER"),
                               (sigma_prior_text, "gamma:1,2,3", "expected uniform:UPPER"),
                               (sigma_prior_text, "gamma:0", "gamma rate must be a positive"),
                               (sigma_prior_text, "lognormal:800,1", "lognormal MU must be finite"),
                               (pi_alpha_text, "0", "must be positive")):
        with pytest.raises(MixbenchError, match=needle):
            call("--opt", text)


@pytest.mark.parametrize("text, table, prior", [
    ("gamma:0.5", "{ family = 'gamma', scale = 2.0 }", SigmaPrior("gamma", 2.0, 2.0)),
    ("gamma:3,4", "{ family = 'gamma', shape = 3.0, scale = 0.25 }", SigmaPrior("gamma", 0.25, 3.0)),
    ("invgamma:3,1.5", "{ family = 'invgamma', shape = 3.0, scale = 1.5 }", SigmaPrior("invgamma", 1.5, 3.0)),
    ("lognormal:0,0.5", "{ family = 'lognormal', shape = 0.5, scale = 1.0 }", SigmaPrior("lognormal", 1.0, 0.5)),
])
def test_zero_avoiding_sigma_priors_from_the_option_and_from_a_spec_file(tmp_path, text, table, prior):
    """The option takes textbook parameters (Gamma rate, InverseGamma (a, b), LogNormal (mu, s));
    the spec file SigmaPrior's (shape, scale): both give the same prior."""
    assert SigmaPrior(**sigma_prior_text("--sigma-prior", text)) == prior
    path = tmp_path / "spec.toml"
    path.write_text(f"sigma_prior = {table}\n")
    assert MixtureSpec.from_dict(load_spec_file(path)) == MixtureSpec(sigma_prior=prior)


def test_cli_priors_override_the_spec_file_and_reach_the_cell(tmp_path):
    data = tmp_path / "y.csv"
    data.write_text("y\n" + "\n".join(str(v) for v in np.random.default_rng(0).normal(size=40)) + "\n")
    spec_file = tmp_path / "ldgm.toml"
    spec_file.write_text(LOW_DIM_GAUSS_MIX)
    args = build_parser().parse_args(["run", "--data", str(data), "--spec", str(spec_file), "--sigma-prior",
                                      "halfnormal:3", "--backends", "numpyro", "--standardize"])
    cells, _ = run_cells(args)
    spec, dataset = load_cell_data(cells[0])
    assert spec.D == 0 and spec.sigma_prior == SigmaPrior("halfnormal", 3.0) and spec.pi_alpha == 5.0
    assert cells[0].standardize and "standardize" in cells[0].setup
    assert dataset.truth is None


@pytest.mark.parametrize("args, needle", [
    (["--slope-prior", "0"], "--slope-prior: expected MU,SD"),
    (["--sigma-prior", "beta:2"], "sigma prior family"),
    (["--pi-alpha", "1,2,3"], "pi_alpha: has 3 concentrations but K = 2"),
    (["--spec", "absent.toml"], "spec file absent.toml: not found"),
    (["--pathfinder-resampling", "maybe"], "settings.pathfinder_resampling"),
    (["--reference", "no/such/path"], "--reference: no/such/path is neither"),
])
def test_bad_prior_options_exit_with_one_line(args, needle):
    result = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--backends", "numpyro", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    err = result.stderr.strip()
    assert result.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert needle in err, err


def test_variant_fields_from_a_spec_file_and_the_cli_text(tmp_path):
    """errors, nu and shared: the same names in a spec file and on the command line."""
    from models.priors import nu_text
    from models.spec import GammaPrior

    path = tmp_path / "robust.toml"
    path.write_text('K = 2\nD = 1\nintercept = true\nerrors = "student-t"\nnu = { shape = 3.0, rate = 0.2 }\n'
                    'shared = "slopes"\n')
    spec = MixtureSpec.from_dict(load_spec_file(path))
    assert spec.errors == "student-t" and spec.nu == GammaPrior(3.0, 0.2) and spec.shared == "slopes"
    assert spec.param_shapes() == {"w": (2, 1), "b": (2,), "sigma": (), "nu": (), "pi": (2,)}
    assert MixtureSpec.from_dict(spec.to_dict()) == spec
    assert nu_text("--nu", "gamma:3,0.2") == {"shape": 3.0, "rate": 0.2}
    assert nu_text("--nu", "4") == 4.0
    assert MixtureSpec(errors="student-t").nu == GammaPrior(2.0, 0.1)  # Juárez & Steel (2010)
    # Defaults stay out of the dict, so the specs of older runs keep their identity.
    assert set(MixtureSpec().to_dict()) == {"K", "D", "intercept", "sigma", "pi_alpha", "slope_prior",
                                            "intercept_prior", "sigma_prior", "ordering", "likelihood"}
    # Switching the errors of a Student-t spec to normal drops its nu; and back, nu is the default.
    t4 = MixtureSpec(errors="student-t", nu=4.0)
    assert t4.overridden({"errors": "normal"}) == MixtureSpec()
    assert MixtureSpec().overridden({"errors": "student-t", "nu": 4.0}) == t4
