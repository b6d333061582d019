"""The PyMC backend's model object: the full-data PyMC model of a spec and the functions compiled
from it (constrain and unconstrain, log density with and without the Jacobian, gradient and
Hessian objectives, jittered initial points, nutpie's model), built on first use and cached per
(spec, data size, precision); the full-data functions are kept on disk by
backends/pytensor_store.py and nutpie's by backends/nutpie_cache.py.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numba.core.event
import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import graph_replace

from backends.timing import note_compile, record_compile
from backends.pytensor_store import load_or_build, set_shared
from models.data import Dataset
from models.pymc_model import build_model
from models.pymc_model import model_values as _model_values
from models.spec import MixtureSpec

# Numba is PyTensor's default linker: loading its dispatch modules (and Numba) belongs to this
# import, not to the first compile that would otherwise load them.
import pytensor.link.numba.dispatch  # noqa: E402,F401  isort: skip


class _NumbaCompiles(numba.core.event.Listener):
    """Reports every span from a request of Numba's compiler lock to its release (compiling, or
    loading machine code from a cache) as compile time (``backends.timing.record_compile``):
    PyTensor's Numba functions compile on their first call, wherever that call is timed."""

    def __init__(self):
        self._starts = threading.local()

    def on_start(self, event):
        self._starts.__dict__.setdefault("stack", []).append(time.perf_counter())

    def on_end(self, event):
        stack = getattr(self._starts, "stack", None)
        if stack:  # empty: the lock was taken before this listener was registered
            record_compile(stack.pop(), time.perf_counter())


numba.core.event.register("numba:compiler_lock", _NumbaCompiles())


# --------------------------------------------------------------------------------------------
# Compiled functions, cached per (spec, data, precision)
# --------------------------------------------------------------------------------------------

@contextmanager
def _precision(precision: str):
    with pytensor.config.change_flags(floatX=precision):
        yield


@dataclass
class _Compiled:
    """A full-data model and the functions compiled from it, built on first use.

    The data live in pm.Data (shared variables): every compiled function reads the current
    values, so one entry serves every data set of the same size, set by ``use``.
    """

    spec: MixtureSpec
    model: pm.Model
    precision: str
    _fns: dict = field(default_factory=dict)
    compile_seconds: dict = field(default_factory=dict)
    # Functions loaded from disk hold their own copies of the data (backends/pytensor_store.py).
    _stored: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    data_key: str = ""

    def use(self, dataset: Dataset) -> "_Compiled":
        key = dataset.digest()
        if key != self.data_key:
            dtype = pytensor.config.floatX if self.precision == "float32" else "float64"
            self.data = {"y": dataset.y.astype(dtype)}
            if self.spec.D:
                self.data["x"] = dataset.x.astype(dtype)
            pm.set_data(self.data, model=self.model)
            for function in self._stored:
                set_shared(function, self.data)
            self.data_key = key
        return self

    @property
    def free_names(self) -> list[str]:
        return [rv.name for rv in self.model.free_RVs]

    def description(self, **extra) -> dict:
        """What every function compiled from this entry depends on, for the stores' keys."""
        return {"spec": self.spec.to_dict(), "precision": self.precision,
                "data_shapes": {k: list(v.shape) for k, v in self.data.items()}, **extra}

    def _get(self, name, build, stored: bool = True):
        """The function ``name``, built once per process, the build reported as compile time
        (``record_compile``). ``stored``: a PyTensor function (or PyMC's ValueGradFunction) kept
        on disk after its rewrites and loaded in later processes (backends/pytensor_store.py), its
        data then set to this entry's."""
        if name not in self._fns:
            note_compile("cold")
            start = time.perf_counter()
            with _precision(self.precision):
                if stored:
                    function, loaded = load_or_build(self.description(function=name), build)
                    if loaded:
                        inner = getattr(function, "_pytensor_function", function)
                        set_shared(inner, self.data)
                        self._stored.append(inner)
                    self._fns[name] = function
                else:
                    self._fns[name] = build()
            end = time.perf_counter()
            self.compile_seconds[name] = end - start
            record_compile(start, end)
        return self._fns[name]

    def constrained_logp(self):
        """f(*constrained values in free_RVs order) -> log density, no Jacobian."""
        def build():
            model = self.model
            inputs, replace = [], {}
            for rv in model.free_RVs:
                value = model.rvs_to_values[rv]
                point = rv.type(name=rv.name)
                transform = model.rvs_to_transforms.get(rv)
                replace[value] = transform.forward(point, *rv.owner.inputs) if transform else point
                inputs.append(point)
            logp = graph_replace(model.logp(jacobian=False), replace, strict=False)
            return pytensor.function(inputs, logp, on_unused_input="ignore")
        return self._get("constrained_logp", build)

    def constrain(self):
        """f(*value vars) -> the canonical outputs: w (when D > 0), b, sigma, nu (a parameter), pi (when K > 1)."""
        def build():
            outs = self.model.replace_rvs_by_values([self.model[n] for n in self.output_names])
            return pytensor.function(self.model.value_vars, outs, on_unused_input="ignore")
        return self._get("constrain", build)

    def _log_jacobian(self):
        """The graph of log |Jacobian| of the value variables' transforms (no data in it)."""
        model = self.model
        jacobian = pt.constant(0.0)
        for rv in model.free_RVs:
            transform = model.rvs_to_transforms.get(rv)
            if transform is not None:
                value = model.rvs_to_values[rv]
                jacobian = jacobian + pt.sum(transform.log_jac_det(value, *rv.owner.inputs))
        return jacobian

    def log_p_jacobian(self):
        """f(*value vars) -> (log density with the Jacobian, log |Jacobian| of the transforms)."""
        def build():
            return pytensor.function(self.model.value_vars, [self.model.logp(jacobian=True), self._log_jacobian()],
                                     on_unused_input="ignore")
        return self._get("log_p_jacobian", build)

    def constrain_jacobian(self):
        """f(*value vars) -> [*the canonical outputs (``constrain``'s), log |Jacobian|]: what a
        draw needs when the engine already gave its log density. The data are not read."""
        def build():
            outs = self.model.replace_rvs_by_values([self.model[n] for n in self.output_names])
            return pytensor.function(self.model.value_vars, [*outs, self._log_jacobian()], on_unused_input="ignore")
        return self._get("constrain_jacobian", build)

    def unconstrain(self):
        """f(*constrained values in free_RVs order) -> the value variables (unconstrained)."""
        def build():
            model = self.model
            inputs, outputs = [], []
            for rv in model.free_RVs:
                point = rv.type(name=rv.name)
                transform = model.rvs_to_transforms.get(rv)
                inputs.append(point)
                outputs.append(transform.forward(point, *rv.owner.inputs) if transform else point)
            return pytensor.function(inputs, outputs, on_unused_input="ignore")
        return self._get("unconstrain", build)

    def unconstrained_point(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """A canonical constrained point -> the flat unconstrained vector every sampler uses
        (value variables in free_RVs order, each raveled)."""
        values = _model_values(self.spec, params)
        dtype = pytensor.config.floatX
        parts = self.unconstrain()(*[np.asarray(values[n], dtype=dtype) for n in self.free_names])
        return np.concatenate([np.ravel(p) for p in parts]).astype(np.float64)

    @property
    def output_names(self) -> list[str]:
        names = ["w"] if self.spec.D else []
        names += ["b"] if self.spec.intercept else []
        names += ["sigma"]
        names += ["nu"] if self.spec.nu_is_parameter else []
        names += ["gamma"] if self.spec.softmax_weights else (["pi"] if self.spec.K > 1 else [])
        return names

    def logp_dlogp(self):
        """PyMC's ValueGradFunction for its own NUTS (ravelled inputs)."""
        function = self._get("logp_dlogp", lambda: self.model.logp_dlogp_function(ravel_inputs=True))
        function.trust_input = True
        return function

    def _scipy_objective(self, name: str, jacobian: bool, hessian: bool):
        """pymc-extras' ``scipy_optimize_funcs_from_loss`` on -log density (with or without the
        Jacobian): the fused f(flat value vars) -> (loss, gradient[, Hessian]) that its
        ``find_MAP`` and ``fit_laplace`` compile. Built once per entry, so every start of a
        multi-start search runs on it. The flat vector is the value variables in
        ``model.value_vars`` order, each raveled."""
        def build():
            from pymc_extras.inference.laplace_approx.scipy_interface import scipy_optimize_funcs_from_loss

            model = self.model
            start = model.initial_point()
            f_fused, _ = scipy_optimize_funcs_from_loss(
                loss=-model.logp(jacobian=jacobian), inputs=model.value_vars,
                initial_point_dict={v.name: start[v.name] for v in model.value_vars},
                use_grad=True, use_hess=hessian, use_hessp=False)
            return f_fused
        return self._get(name, build)

    def jittered_start(self):
        """f(seed) -> {value variable name: value}: PyMC's initial point jittered in the
        unconstrained space, as NUTS starts (the plain initial point puts every unordered
        component at the same place, a saddle that a gradient method never leaves)."""
        from pymc.initial_point import make_initial_point_fn

        return self._get("jittered_start", lambda: make_initial_point_fn(
            model=self.model, jitter_rvs=set(self.model.free_RVs), return_transformed=True), stored=False)

    def map_objective(self):
        """f(flat value vars) -> (-log density without the Jacobian, its gradient): what
        ``pm.find_MAP`` minimises (the constrained-space mode, searched on the unconstrained
        space), compiled once instead of inside every ``find_MAP`` call."""
        return self._scipy_objective("map_objective", jacobian=False, hessian=False)

    def laplace_objective(self):
        """f(flat value vars) -> (-log density with the Jacobian, its gradient, its Hessian).

        Given the log density *with* the Jacobian: pymc-extras' ``fit_laplace`` itself maximises
        ``model.logp(jacobian=False)``, the constrained-space MAP, not the unconstrained mode a
        Laplace approximation on the unconstrained space is centred at.
        """
        return self._scipy_objective("laplace_objective", jacobian=True, hessian=True)

    def nutpie(self):
        """nutpie's compiled model, holding the current data (nutpie copies shared data in)."""
        from backends.nutpie_cache import compile_nutpie_model

        compiled_model = self._get("nutpie", lambda: compile_nutpie_model(self.model, self.description(), self.data),
                                   stored=False)  # nutpie_cache keeps its own
        return compiled_model.with_data(**self.data)


_CACHE: OrderedDict[tuple, _Compiled] = OrderedDict()
_CACHE_SIZE = 16


def compiled(spec: MixtureSpec, dataset: Dataset, precision: str = "float64") -> _Compiled:
    """The cached full-data model of ``spec`` for data of this size, holding ``dataset``."""
    key = (spec, dataset.N, precision)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        note_compile("warm")
        return _CACHE[key].use(dataset)
    note_compile("cold")
    with _precision(precision):
        model = build_model(spec, dataset.x, dataset.y)
    entry = _Compiled(spec=spec, model=model, precision=precision)
    _CACHE[key] = entry
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry.use(dataset)
