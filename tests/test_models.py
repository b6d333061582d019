"""The model implementations side by side (models/pymc_model.py, models/numpyro_model.py,
models/stan_model.py with stan/mixture.stan), each against the NumPy oracle (models/oracle.py)
directly, without a backend: log density at random points of many specs, and each one's
canonical <-> native parameter map as a round trip. (The backends' log densities, Stan's through
its engines, are checked in tests/test_log_density.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from models import MixbenchError, log_density, random_point
from models.spec import LIKELIHOODS
from tests.conftest import MODEL_SPECS, make_data

N_POINTS = 5


def _points(spec, n=N_POINTS, seed=3):
    rng = np.random.default_rng(seed)
    return [random_point(spec, rng) for _ in range(n)]


def _assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name], float), np.asarray(b[name], float), err_msg=name)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_pymc_model_is_the_oracle(model_spec, likelihood):
    import pytensor
    from pytensor.graph.replace import graph_replace

    from models.pymc_model import build_model, model_values

    if likelihood != "mixture" and (model_spec.errors != "normal" or model_spec.shared != "none"
                                    or model_spec.weights != "dirichlet"):
        with pytest.raises(MixbenchError, match="replays the forum's normal mixture"):
            model_spec.with_(likelihood=likelihood)
        return
    spec = model_spec.with_(likelihood=likelihood)
    x, y = make_data(spec, n=60)
    model = build_model(spec, x, y)
    # The density as a function of the constrained free variables: each value variable replaced
    # by the forward transform of a constrained input (PyMC's own transforms).
    inputs, replace = [], {}
    for rv in model.free_RVs:
        point = rv.type(name=rv.name)
        transform = model.rvs_to_transforms.get(rv)
        replace[model.rvs_to_values[rv]] = transform.forward(point, *rv.owner.inputs) if transform else point
        inputs.append(point)
    logp = pytensor.function(inputs, graph_replace(model.logp(jacobian=False), replace, strict=False),
                             on_unused_input="ignore")
    for point in _points(spec):
        values = model_values(spec, point)
        got = logp(*[values[rv.name] for rv in model.free_RVs])
        assert float(got) == pytest.approx(log_density(spec, x, y, point), rel=1e-9, abs=1e-9)


def test_pymc_parameter_map_round_trips(model_spec):
    from models.pymc_model import canonical_values, model_values

    for point in _points(model_spec):
        native = model_values(model_spec, point)
        if (model_spec.ordering == "slope" or model_spec.shared == "slopes") and model_spec.D:
            native["w"] = point["w"]  # the model's Deterministic, from w_first and w_rest or w_shared
        if model_spec.shared == "intercepts":
            native["b"] = point["b"]  # the model's Deterministic, from b_shared
        if model_spec.softmax_weights:
            native["gamma"] = point["gamma"]  # the model's Deterministic, gamma_free and the zero row
        _assert_same(canonical_values(model_spec, native, ()), model_spec.check_params(point))


def test_numpyro_model_is_the_oracle(model_spec):
    from numpyro.infer.util import log_density as numpyro_log_density

    from backends.jax_setup import configure
    from models.numpyro_model import mixture_model, site_values

    configure()  # 64-bit JAX, as every worker has it
    spec = model_spec
    x, y = make_data(spec, n=60)
    for point in _points(spec):
        sites = site_values(spec, spec.check_params(point))
        got, _ = numpyro_log_density(mixture_model, (spec, x, y), {}, sites)
        assert float(got) == pytest.approx(log_density(spec, x, y, point), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("form", ["mixture_same_family", "logsumexp_factor"])
def test_numpyro_model_leaves_the_data_unchecked(model_spec, form):
    """No support check of y in the log density: with the data a program's argument (the stored
    NUTS programs), its isfinite(y) select stays in every gradient and keeps XLA from fusing
    the log-sum-exp's log into its vectorised kernel (1.4x per NUTS step at N = 1e5)."""
    import jax
    from jax.extend.core import Literal
    from numpyro.infer.util import log_density as numpyro_log_density

    from backends.jax_setup import configure
    from models.numpyro_model import mixture_model, site_values

    configure()
    x, y = make_data(model_spec, n=60)
    sites = site_values(model_spec, model_spec.check_params(_points(model_spec, n=1)[0]))
    jaxpr = jax.make_jaxpr(lambda x, y: numpyro_log_density(mixture_model, (model_spec, x, y), {"form": form},
                                                            sites)[0])(x, y).jaxpr
    y_like = {jaxpr.invars[1]}  # y, and y only reshaped or broadcast
    checks = []
    for eqn in jaxpr.eqns:
        reads_y = any(v in y_like for v in eqn.invars if not isinstance(v, Literal))
        if reads_y and eqn.primitive.name in ("broadcast_in_dim", "reshape", "convert_element_type"):
            y_like.update(eqn.outvars)
        elif reads_y and eqn.primitive.name in ("eq", "ne", "is_finite", "lt", "gt", "le", "ge"):
            checks.append(str(eqn))
    assert checks == []


def test_numpyro_parameter_map_round_trips(model_spec):
    from models.numpyro_model import canonical_values, site_values

    for point in _points(model_spec):
        checked = model_spec.check_params(point)
        sites = site_values(model_spec, checked)
        _assert_same(canonical_values(model_spec, sites, ()), checked)


def test_stan_parameter_maps_round_trip_in_either_engines_spelling(model_spec):
    """Canonical -> Stan's output columns (as CmdStan or pystan name them, any order) -> canonical."""
    from models.stan_model import STAN_NAMES, flat_to_canonical

    spec = model_spec
    rng = np.random.default_rng(0)
    for point in _points(spec):
        p = spec.check_params(point)
        shapes = {"w": (spec.K, spec.D), "b": (spec.K,), "sigma": (spec.n_sigma,), "nu": (1,), "pi": (spec.K,),
                  "gamma": (spec.K, spec.D + 1)}
        for style in ("brackets", "dots"):
            columns, values = [], []
            for name in spec.param_shapes():
                array = np.asarray(p[name], float).reshape(shapes[name])
                for index in np.ndindex(*shapes[name]):
                    one = [i + 1 for i in index]
                    suffix = (f"[{','.join(map(str, one))}]" if style == "brackets"
                              else "".join(f".{i}" for i in one))
                    columns.append(STAN_NAMES[name] + suffix)
                    values.append(array[index])
            order = rng.permutation(len(columns))
            back = flat_to_canonical(spec, [columns[i] for i in order], np.asarray(values)[order][None, None])
            _assert_same({k: v[0, 0] for k, v in back.items()}, p)


def test_every_model_implements_every_likelihood_its_backend_declares():
    """The PyMC model writes the forum replay likelihoods; NumPyro's and Stan's the mixture only:
    the backends' likelihood declarations must not claim more than their models hold."""
    from backends import BACKENDS, get_backend

    declared = {name: set(get_backend(name).likelihoods) for name in BACKENDS}
    assert declared["pymc"] == set(LIKELIHOODS)
    assert declared["numpyro"] == declared["stan"] == {"mixture"}


assert MODEL_SPECS  # the specs swept by the model_spec fixture (tests/conftest.py)
