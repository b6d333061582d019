"""Each kind of bad input gets one clear, one-line error naming the problem."""

import numpy as np
import pytest

from backends import FitSettings, get_backend
from models import Dataset, MixbenchError, MixtureSpec, NormalPrior, SigmaPrior, get_scenario, load_csv


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(MixbenchError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("changes, match", [
    ({"K": 0}, "K: must be at least 1"),
    ({"K": -3}, "K: must be at least 1"),
    ({"K": 2.5}, "K: must be an integer"),
    ({"D": -1}, "D: must be at least 0"),
    ({"D": 0, "intercept": False}, "intercept: required when D = 0"),
    ({"sigma": "each"}, "sigma: must be one of"),
    ({"ordering": "intercept"}, "ordering: 'intercept' needs intercepts: --intercept, or intercept = true in a spec file"),
    ({"D": 0, "intercept": True, "ordering": "slope"}, "ordering: 'slope' needs at least one covariate"),
    ({"ordering": "weight"}, "ordering: must be one of"),
    ({"pi_alpha": 0.0}, "pi_alpha: must be a positive"),
    ({"pi_alpha": (1.0, 2.0, 3.0)}, "pi_alpha: has 3 concentrations but K = 2"),
    ({"likelihood": "poisson"}, "likelihood: must be one of"),
    ({"errors": "cauchy"}, "errors: must be one of normal, student-t"),
    ({"nu": 4.0}, "nu: only for errors = 'student-t'"),
    ({"errors": "student-t", "nu": 0.0}, "nu: must be a positive finite number"),
    ({"errors": "student-t", "nu": {"shape": 2.0, "scale": 1.0}}, "nu: unknown key"),
    ({"errors": "student-t", "nu": {"shape": 2.0, "rate": -1.0}}, "nu prior rate: must be a positive"),
    ({"shared": "both"}, "shared: must be one of none, slopes, intercepts"),
    ({"shared": "intercepts"}, "shared: 'intercepts' needs intercepts: --intercept, or intercept = true in a spec file"),
    ({"weights": "logistic"}, "weights: must be one of dirichlet, softmax"),
    ({"weights": "softmax", "likelihood": "forum-batch-lse"}, "replays the forum's normal mixture"),
    ({"D": 0, "intercept": True, "shared": "slopes"}, "shared: 'slopes' needs at least one covariate"),
    ({"shared": "slopes", "ordering": "slope"}, "ordering: 'slope' cannot order components that share"),
    ({"errors": "student-t", "likelihood": "forum-original"}, "replays the forum's normal mixture"),
])
def test_spec_errors(changes, match):
    one_line_error(MixtureSpec, **changes, match=match)


def test_prior_errors():
    one_line_error(NormalPrior, 0.0, -1.0, match="Normal prior sigma: must be a positive")
    one_line_error(NormalPrior, float("nan"), 1.0, match="Normal prior mu: must be finite")
    one_line_error(SigmaPrior, "weibull", 1.0, match="sigma prior family")
    one_line_error(SigmaPrior, "lognormal", 1.0, match="sigma prior shape: required")
    one_line_error(SigmaPrior, "uniform", float("inf"), match="sigma prior scale")


def test_dataset_shape_errors():
    one_line_error(Dataset, np.zeros((5, 1)), np.zeros(4), match="x and y: shapes disagree")
    one_line_error(Dataset, np.zeros(5), np.zeros(5), match="x: must be 2-D")
    one_line_error(Dataset, np.zeros((5, 1)), np.zeros((5, 1)), match="y: must be 1-D")


def test_dataset_nan_and_inf():
    x = np.zeros((4, 1))
    one_line_error(Dataset, x, np.array([0.0, np.nan, 1.0, 2.0]), match="y: contains NaN")
    one_line_error(Dataset, np.array([[0.0], [np.inf], [1.0], [2.0]]), np.zeros(4), match="x: contains inf")


def test_dataset_covariates_disagree_with_spec():
    data = Dataset(np.zeros((4, 2)), np.zeros(4))
    one_line_error(data.check_against, MixtureSpec(K=2, D=1), match="x: has 2 covariate columns but the spec has D = 1")


def test_unknown_backend_scenario_and_method():
    one_line_error(get_backend, "tensorflow", match="backend: unknown 'tensorflow'")
    one_line_error(get_scenario, "nope", match="scenario: unknown 'nope'")


def test_unknown_method_is_an_error_before_any_backend_work():
    from backends.base import METHODS, Backend

    class Dummy(Backend):
        name = "dummy"
        def versions(self): return {}
        methods = dict.fromkeys(METHODS, "_run_any")
        def log_density(self, spec, dataset, params): return 0.0
        def _run_any(self, spec, dataset, method, settings, seed): raise AssertionError("must not run")

    spec = MixtureSpec()
    data = Dataset(np.zeros((3, 1)), np.zeros(3))
    one_line_error(Dummy().fit, spec, data, "gibbs", match="method: unknown 'gibbs'")


@pytest.mark.parametrize("changes, match", [
    ({"chains": 0}, "settings.chains: must be a positive integer"),
    ({"draws": -5}, "settings.draws"),
    ({"warmup": -1}, "settings.warmup: must be a non-negative"),
    ({"target_accept": 1.5}, "settings.target_accept: must be in"),
    ({"precision": "float16"}, "settings.precision"),
    ({"learning_rate": 0.0}, "settings.learning_rate"),
    ({"batch_size": 0}, "settings.batch_size"),
])
def test_impossible_settings(changes, match):
    one_line_error(FitSettings, **changes, match=match)


def test_simulate_rejects_empty():
    one_line_error(get_scenario("forum").simulate, 0, N=0, match="N: must be at least 1")


@pytest.mark.parametrize("content, kwargs, match", [
    ("", {}, "is empty"),
    ("x,y\n", {}, "has a header but no rows"),
    ('x,y\n1,2\n"3,4\n', {}, "malformed CSV"),
    ("x,y\n1,2,3,4\n5,6\n", {}, "malformed CSV"),
    ("x,z\n1,2\n", {}, "no response column 'y'"),
    ("x,y\n1,2\n", {"covariates": ["x", "x2"]}, "missing covariate column"),
    ("x,y\n1,2\n", {"covariates": ["x", "x"]}, "x given more than once"),
    ("x,y\n1,2\nabc,3\n", {}, "column 'x' has a non-numeric value 'abc' at data row 2"),
    ("x,y\n1,2\n3,\n", {}, "column 'y' has a missing/NaN value at data row 2"),
    ("x,y\n1,2\n3,nan\n", {}, "column 'y' has a missing/NaN value"),
    ("x,y\n1,2\ninf,3\n", {}, "column 'x' has an infinite value"),
])
def test_malformed_data_files(tmp_path, content, kwargs, match):
    path = tmp_path / "data.csv"
    path.write_text(content)
    one_line_error(load_csv, path, **kwargs, match=match)


def test_missing_data_file(tmp_path):
    one_line_error(load_csv, tmp_path / "absent.csv", match="not found")


def test_good_data_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,y\n1,2,3\n4,5,6\n")
    data = load_csv(path, covariates=["b", "a"])
    assert data.x.tolist() == [[2.0, 1.0], [5.0, 4.0]]
    assert data.y.tolist() == [3.0, 6.0]
    assert data.covariates == ("b", "a") and data.truth is None


def test_unreadable_data_file(tmp_path, monkeypatch):
    import errno
    import os
    import pathlib

    path = tmp_path / "data.csv"
    path.write_text("x,y\n1,2\n")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: refuse as the kernel would refuse anyone else
        real = pathlib.Path.read_bytes

        def read_bytes(self):
            if self == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real(self)

        monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    message = one_line_error(load_csv, path, match="cannot be read")
    assert message == f"data file {path}: cannot be read (Permission denied)"


class _AnyMethod:
    """A plug-in backend that would run any method (and must not be reached here)."""

    @staticmethod
    def make():
        from backends.base import METHODS, Backend

        class Plugin(Backend):
            name = "plugin"
            def versions(self): return {}
            methods = dict.fromkeys(METHODS, "_run_any")
            def log_density(self, spec, dataset, params): return 0.0
            def _run_any(self, spec, dataset, method, settings, seed): raise AssertionError("must not run")

        return Plugin()


@pytest.mark.parametrize("name", ["pymc", "numpyro", "plugin"])
def test_minibatch_larger_than_the_data_is_refused_the_same_way_by_every_backend(name):
    # Before, NumPyro refused it in words of its own and PyMC fitted it silently.
    backend = _AnyMethod.make() if name == "plugin" else get_backend(name)
    sc = get_scenario("forum")
    data = sc.simulate(0, N=50)
    settings = FitSettings(batch_size=100, vi_iterations=20, vi_draws=10)
    for method in ("advi-minibatch-meanfield", "advi-minibatch-fullrank"):
        message = one_line_error(backend.fit, sc.spec, data, method, settings, match="batch_size")
        assert message == "settings.batch_size: 100 is larger than the data (N = 50)"


def test_a_batch_as_large_as_the_data_is_allowed():
    from backends.base import check_batch_size

    check_batch_size("advi-minibatch-meanfield", FitSettings(batch_size=50), 50)
    check_batch_size("advi-meanfield", FitSettings(batch_size=500), 50)  # only minibatch methods batch
    one_line_error(check_batch_size, "advi-minibatch-fullrank", FitSettings(batch_size=51), 50, match="N = 50")
