import importlib
import os

import numpy as np
import pytest

from models import MixtureSpec, NormalPrior, SigmaPrior


class lazy_module:  # noqa: N801  (used like a module, named like one)
    """The module ``name``, imported on the first access to one of its attributes, not here.

    For a test module's engine-bound imports (JAX, a backend module that imports its engine):
    collecting the tests imports no engine (tests/test_imports.py), a test that uses one pays
    for it when it runs. A plain object, not a module: pytest inspects every global of a test
    module (``__class__``, ``__test__``), which would load a ``importlib.util.LazyLoader`` module.
    Public names only; set attributes on the real module (``importlib.import_module``), not on
    this stand-in.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        # Public names only: pytest probes every global for private and dunder ones
        # (``_mock_name``, ``__test__``), which must not import the engine.
        if attr.startswith("_"):
            raise AttributeError(f"{attr}: lazy_module gives public names only; import {self._name} for it")
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"lazy_module({self._name!r})"

# Specs the log-density agreement tests sweep: K = 1, 2, 3; D = 0, 1, 2; shared and
# per-component sigma; with and without intercepts; every ordering; both sigma priors.
AGREEMENT_SPECS = {
    "K1-D1-shared": MixtureSpec(K=1, D=1),
    "K2-D1-forum": MixtureSpec(K=2, D=1),
    "K2-D0-gmm": MixtureSpec(K=2, D=0, intercept=True, intercept_prior=NormalPrior(1.0, 3.0)),
    "K3-D2-percomp-intercept": MixtureSpec(K=3, D=2, intercept=True, sigma="per-component",
                                           sigma_prior=SigmaPrior("halfnormal", 0.7), pi_alpha=(1.0, 2.0, 3.5)),
    "K2-D2-order-intercept": MixtureSpec(K=2, D=2, intercept=True, ordering="intercept",
                                         slope_prior=NormalPrior(0.5, 1.5)),
    "K3-D1-order-slope": MixtureSpec(K=3, D=1, sigma="per-component", ordering="slope", pi_alpha=2.0),
    "K3-D0-order-intercept": MixtureSpec(K=3, D=0, intercept=True, ordering="intercept",
                                         sigma_prior=SigmaPrior("uniform", 2.5)),
}

# The zero-avoiding and boundary-avoiding sigma priors (models/spec.py SigmaPrior), swept with the
# agreement specs by the model_spec fixture (tests/test_models.py, tests/test_log_density.py).
SCALE_PRIOR_SPECS = {
    "K2-D1-gamma": MixtureSpec(K=2, D=1, sigma_prior=SigmaPrior("gamma", 0.5)),
    "K3-D2-percomp-gamma3": MixtureSpec(K=3, D=2, intercept=True, sigma="per-component",
                                        sigma_prior=SigmaPrior("gamma", 0.8, 3.0)),
    "K2-D0-percomp-invgamma": MixtureSpec(K=2, D=0, intercept=True, sigma="per-component",
                                          sigma_prior=SigmaPrior("invgamma", 1.5, 3.0)),
    "K2-D1-order-slope-lognormal": MixtureSpec(K=2, D=1, intercept=True, sigma="per-component", ordering="slope",
                                               sigma_prior=SigmaPrior("lognormal", 0.6, 0.8)),
}
# Student-t errors (nu fixed and with its Gamma prior) and shared slopes (models/spec.py), with
# and without intercepts, ordering and per-component sigma.
VARIANT_SPECS = {
    "K2-D1-t-nu4": MixtureSpec(K=2, D=1, errors="student-t", nu=4.0),
    "K3-D2-percomp-intercept-t-prior": MixtureSpec(K=3, D=2, intercept=True, sigma="per-component",
                                                   errors="student-t", sigma_prior=SigmaPrior("gamma", 0.8, 3.0)),
    "K2-D0-order-intercept-t-prior37": MixtureSpec(K=2, D=0, intercept=True, ordering="intercept",
                                                   errors="student-t", nu={"shape": 3.0, "rate": 0.7}),
    "K2-D1-shared-slopes": MixtureSpec(K=2, D=1, intercept=True, sigma="per-component", shared="slopes"),
    "K3-D2-shared-slopes-order-intercept-t": MixtureSpec(K=3, D=2, intercept=True, sigma="per-component",
                                                         shared="slopes", ordering="intercept",
                                                         errors="student-t", nu=2.5,
                                                         slope_prior=NormalPrior(0.5, 1.5)),
    "K2-D2-shared-slopes-t-prior": MixtureSpec(K=2, D=2, intercept=True, shared="slopes", errors="student-t"),
    # Shared intercepts and softmax weights (a mixture of experts), with every sigma prior family,
    # nu fixed and with its prior, the default and a non-default gamma prior.
    "K3-D2-shared-intercepts-halfnormal": MixtureSpec(K=3, D=2, intercept=True, sigma="per-component",
                                                     shared="intercepts", sigma_prior=SigmaPrior("halfnormal", 0.7)),
    "K2-D1-shared-intercepts-order-slope-t4": MixtureSpec(K=2, D=1, intercept=True, shared="intercepts",
                                                          ordering="slope", errors="student-t", nu=4.0),
    "K2-D1-softmax": MixtureSpec(K=2, D=1, weights="softmax"),
    "K3-D2-softmax-percomp-intercept-gamma": MixtureSpec(K=3, D=2, intercept=True, sigma="per-component",
                                                         weights="softmax", gamma_prior=NormalPrior(0.3, 1.5),
                                                         sigma_prior=SigmaPrior("gamma", 0.8, 3.0)),
    "K2-D0-softmax-order-intercept-invgamma": MixtureSpec(K=2, D=0, intercept=True, ordering="intercept",
                                                          weights="softmax", sigma="per-component",
                                                          sigma_prior=SigmaPrior("invgamma", 1.5, 3.0)),
    "K3-D1-softmax-shared-slopes-t-prior-lognormal": MixtureSpec(K=3, D=1, intercept=True, shared="slopes",
                                                                 weights="softmax", errors="student-t",
                                                                 sigma_prior=SigmaPrior("lognormal", 0.6, 0.8)),
    "K2-D1-softmax-shared-intercepts-t4": MixtureSpec(K=2, D=1, intercept=True, shared="intercepts",
                                                      weights="softmax", errors="student-t", nu=4.0,
                                                      gamma_prior=NormalPrior(-0.5, 1.0)),
}
MODEL_SPECS = {**AGREEMENT_SPECS, **SCALE_PRIOR_SPECS, **VARIANT_SPECS}


def pytest_configure(config):
    # Cell processes import the engines: without bytecode each would compile them from source.
    from bench.run.bytecode import ensure_bytecode

    ensure_bytecode()


def make_data(spec: MixtureSpec, n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, spec.D))
    y = rng.normal(0.0, 1.5, size=n)
    return x, y


@pytest.fixture(scope="module")
def backend(request):
    """The backend named by the test module's BACKEND constant, one instance per module."""
    from backends import get_backend

    return get_backend(request.module.BACKEND)


@pytest.fixture(params=list(AGREEMENT_SPECS), ids=list(AGREEMENT_SPECS))
def agreement_spec(request) -> MixtureSpec:
    return AGREEMENT_SPECS[request.param]


@pytest.fixture(params=list(MODEL_SPECS), ids=list(MODEL_SPECS))
def model_spec(request) -> MixtureSpec:
    return MODEL_SPECS[request.param]


def assert_canonical_draws(draws, spec: MixtureSpec, chains: int, n_draws: int) -> None:
    """The canonical DataTree of docs/architecture.md: names, dims and shapes from the spec."""
    post = draws["posterior"]
    assert set(post.data_vars) == set(spec.param_shapes())
    for name, dims in spec.param_dims().items():
        assert post[name].dims == ("chain", "draw", *dims)
        assert post[name].shape == (chains, n_draws, *spec.param_shapes()[name])
    assert list(post["component"].values) == list(range(spec.K))
    np.testing.assert_allclose(post["pi"].sum("component"), 1.0, atol=1e-12)
    assert float(post["sigma"].min()) > 0


# CI sets MIXBENCH_REQUIRE_CMDSTAN=1 after unpacking a CmdStan (.ci/run): a cmdstan test that
# skips there is a failure, so the cmdstanpy engine cannot silently go untested.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MIXBENCH_REQUIRE_CMDSTAN") == "1" and "cmdstan" in item.keywords:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: skipped although MIXBENCH_REQUIRE_CMDSTAN=1 ({report.longrepr})"
