"""Simulation-based calibration (SBC): data sets simulated from the prior, one fit each, and the
ranks of label-invariant test quantities of the truth among the fit's draws.

Talts, Betancourt, Simpson, Vehtari & Gelman (2018), "Validating Bayesian inference algorithms
with simulation-based calibration"; Modrák, Moon, Kim, Bürkner, Huurre, Faltejsková, Gelman &
Vehtari (2023), "Simulation-based calibration checking for Bayesian computation: the choice of
test quantities shapes sensitivity". If a fit draws from the exact posterior, the truth is one
more draw from it, so the rank of f(truth) among L thinned, nearly independent draws f(theta_i) is
uniform on {0, ..., L} for any function f.

A cell (``SbcCell``) is one data set x backend x method line, run by the harness's executors
like any cell (isolated process, row written as it finishes, resume, time limit, warm workers,
Dask). Inside it:

1. **The truth** is drawn from the model's prior (the scenario's spec with the line's overrides):
   w ~ Normal, b ~ Normal, sigma ~ the sigma prior, pi ~ Dirichlet(alpha), nu ~ Gamma when it is a
   parameter; ordered when the spec orders. Priors that allow collapsed or label-ambiguous draws
   (two lines on top of each other, an empty component) are handled by a **region**: the draw is
   repeated until its separation (models.families.separation) lies in [sep_min, sep_max) and every
   weight is at least weight_min. That is the prior truncated to the region, and the posterior
   under a truncated prior is the untruncated posterior restricted to the region and renormalised
   (p(theta | y, R) ∝ p(theta | y) 1[theta in R]), so the fit's draws outside the region are
   dropped before ranking: the ranks are exact for the truncated model, with no approximation.
   The region is label-invariant, so this drops no draw for its labels. The share of draws kept is
   in the row (``sbc_kept``).
2. **The data**: N points from that truth as the scenarios simulate them (x ~ U(-1, 1)^D).
3. **The fit**: ``Backend.fit`` with the line's method, scored by bench.score.metrics like any fit
   against the truth (landing ``mode``, health ``flags``), so a failed or flagged fit is counted.
4. **Thinning**: the bulk and tail ESS (arviz-stats) of the cheap quantities (sorted slopes,
   sorted weights, the sigma near x*) over all draws; the draws are thinned along each chain to
   about min(ESS, ``max_draws``) (Talts et al. 2018, section 4.1: autocorrelated draws make
   the rank histogram U-shaped without thinning).
5. **Ranks** of ``quantities_of`` of the truth among the thinned draws in the region, as PIT
   values u = (#{f_i < f*} + V (#{f_i = f*} + 1)) / (L + 1), V ~ U(0, 1): ties (a constant
   quantity, a point fit, resampled Pathfinder draws) are broken at random, and data sets of
   different L pool as continuous U(0, 1) values.

Test quantities (every one a function of the parameters alone, the same for every labelling):
``loglik`` (log p(y | theta) of the simulated data, models.oracle), ``slope (k-th smallest)`` (the
first slope, or the intercept when D = 0), ``weight (k-th smallest)``, ``sigma near x*`` (the sigma
of the component whose mean at x* = (1, ..., 1) lies nearest y = 0), ``y_pred at x*`` (one
predictive draw at x* per parameter draw, and one from the truth). Where sigma is per component,
``sigma[k] relabelled`` is the sigma of each true component after relabelling every draw to the
simulated truth (bench.score.relabel); relabelling to the truth pulls draws towards it, so near label
ambiguity this quantity's ranks bunch in the middle (a conservative bias, stated in the report).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from arviz_stats.base import array_stats

from backends import get_backend
from backends.base import METHODS, FitSettings
from bench.run.harness import check_fit_size
from bench.run.preflight import check_backend_name, check_engine_names
from bench.run.sweep import parse_method_line
from bench.score.metrics import score_fit
from bench.score.relabel import posterior_dataset, relabel
from models.errors import MixbenchError
from models.families import separation
from models.oracle import log_likelihood, sigma_prior_distribution
from models.priors import check_spec_fields
from models.scenarios import Scenario, get_scenario

REGION_TRIES = 100_000  # prior draws tried before a region is called (nearly) empty
X_STAR_Y = 0.0  # the y whose nearest component's sigma is a test quantity
TIME_FIELDS = ("t_compile", "t_warmup", "t_sampling", "t_optimisation", "t_warmup_and_sampling", "t_extraction")
SCORE_FIELDS = ("mode", "flags", "khat", "rhat_max", "ess_bulk_min", "divergences", "n_chains", "n_draws",
                "w_err_max", "engine", "reason")


@dataclass(frozen=True)
class Region:
    """Where in the prior the data sets are drawn: separation in [sep_min, sep_max), every weight
    at least weight_min. The default is the whole prior."""

    sep_min: float = 0.0
    sep_max: float = math.inf
    weight_min: float = 0.0

    def __post_init__(self):
        if not (0 <= self.sep_min < self.sep_max):
            raise MixbenchError(f"sbc region: needs 0 <= sep_min < sep_max, got [{self.sep_min:g}, {self.sep_max:g})")
        if not 0 <= self.weight_min < 1:
            raise MixbenchError(f"sbc region: weight_min must lie in [0, 1), got {self.weight_min:g}")

    @property
    def label(self) -> str:
        return f"sep[{self.sep_min:g},{self.sep_max:g})-wmin{self.weight_min:g}"

    def contains(self, params: dict, D: int) -> bool:
        pi = np.asarray(params["pi"], float)
        if pi.min() < self.weight_min:
            return False
        if pi.size < 2 or (self.sep_min == 0 and math.isinf(self.sep_max)):
            return True
        sep = separation(params, D) if D > 0 else _intercept_separation(params)
        return self.sep_min <= sep < self.sep_max


def _intercept_separation(params: dict) -> float:
    b = np.asarray(params["b"], float)
    sigma = np.broadcast_to(np.asarray(params["sigma"], float), b.shape)
    order = np.argsort(b)
    return float(min(abs(b[k] - b[j]) / math.sqrt((sigma[j] ** 2 + sigma[k] ** 2) / 2)
                     for j, k in zip(order[:-1], order[1:])))


def check_sbc_spec(spec) -> None:
    """Raise MixbenchError when data simulated by the scenarios' generator would not come from
    ``spec``'s model: SBC needs the fitted model to be the simulating one."""
    if spec.likelihood != "mixture":
        raise MixbenchError(f"sbc: likelihood {spec.likelihood!r} is not the model the data are simulated from; "
                            "use likelihood=mixture")
    if spec.errors != "normal":
        raise MixbenchError("sbc: data are simulated with normal errors; student-t errors are not supported")


@functools.lru_cache(maxsize=16)
def _sigma_distribution(prior):
    return sigma_prior_distribution(prior)  # building a frozen SciPy distribution costs more than a draw


def draw_prior(spec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One draw of the parameters from ``spec``'s prior (models.spec; the oracle's densities).

    Returns the canonical parameters in their shapes (``MixtureSpec.param_shapes``). An ordered
    spec sorts its components (the ordered prior is the unordered one restricted to the order,
    times K!, i.e. the order statistics of exchangeable draws).
    """
    K, D = spec.K, spec.D
    slope = spec.slope_prior
    w = rng.normal(slope.mu, slope.sigma, size=(1 if spec.shared == "slopes" else K, D))
    point = {"w": np.broadcast_to(w, (K, D)).copy()}
    if spec.intercept:
        point["b"] = rng.normal(spec.intercept_prior.mu, spec.intercept_prior.sigma, size=K)
    size = () if spec.sigma == "shared" else (K,)
    point["sigma"] = np.asarray(_sigma_distribution(spec.sigma_prior).rvs(size=size, random_state=rng), float)
    if spec.nu_is_parameter:
        point["nu"] = np.asarray(rng.gamma(spec.nu.shape, 1.0 / spec.nu.rate))
    alpha = np.broadcast_to(np.asarray(spec.pi_alpha, float), (K,))
    point["pi"] = rng.dirichlet(alpha)
    if spec.ordering != "none":
        key = point["b"] if spec.ordering == "intercept" else point["w"][:, 0]
        order = np.argsort(key)
        for name in ("w", "b", "pi") + (("sigma",) if spec.sigma != "shared" else ()):
            if name in point:
                point[name] = point[name][order]
    return point


def draw_in_region(spec, region: Region, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
    """(a prior draw inside ``region``, how many draws it took). Raises MixbenchError when none
    of REGION_TRIES draws falls inside (a region of the prior too small to sample)."""
    for tries in range(1, REGION_TRIES + 1):
        point = draw_prior(spec, rng)
        if region.contains(point, spec.D):
            return point, tries
    raise MixbenchError(f"sbc region {region.label}: none of {REGION_TRIES} prior draws fell inside it")


def simulate_data(spec, truth: dict, N: int, seed: int):
    """N observations from ``truth`` as every scenario simulates them (models.scenarios)."""
    return Scenario("sbc", "a prior draw", N, spec, truth).simulate(seed, N)


# ---------------------------------------------------------------------------------------------
# Test quantities


def _params_at(ds: xr.Dataset, chain: int, draw: int) -> dict[str, np.ndarray]:
    return {name: np.asarray(ds[name].values[chain, draw], float) for name in ds.data_vars}


def x_star(spec) -> np.ndarray:
    return np.ones(spec.D)


def _component_means_at_x_star(spec, params: dict) -> np.ndarray:
    mean = np.asarray(params["w"], float).reshape(-1, spec.D) @ x_star(spec)
    return mean + (np.asarray(params["b"], float) if "b" in params else 0.0)


def cheap_quantities(spec, params: dict) -> dict[str, float]:
    """The quantities that need no data (sorted locations, sorted weights, the sigma near x*)."""
    K = spec.K
    location = np.asarray(params["w"], float).reshape(K, -1)[:, 0] if spec.D > 0 else np.asarray(params["b"], float)
    out = {f"slope ({k + 1}. smallest)" if spec.D > 0 else f"intercept ({k + 1}. smallest)": v
           for k, v in enumerate(np.sort(location))}
    if K > 1:
        out.update({f"weight ({k + 1}. smallest)": v for k, v in enumerate(np.sort(np.asarray(params["pi"], float)))})
    nearest = int(np.argmin(np.abs(_component_means_at_x_star(spec, params) - X_STAR_Y)))
    out["sigma near x*"] = float(np.broadcast_to(np.asarray(params["sigma"], float), (K,))[nearest])
    return {k: float(v) for k, v in out.items()}


def predictive_draw(spec, params: dict, rng: np.random.Generator) -> float:
    """One y ~ p(y | params, x*) (normal errors, check_sbc_spec)."""
    k = rng.choice(spec.K, p=np.asarray(params["pi"], float) / np.sum(params["pi"]))
    sigma = np.broadcast_to(np.asarray(params["sigma"], float), (spec.K,))[k]
    return float(_component_means_at_x_star(spec, params)[k] + sigma * rng.standard_normal())


def quantities_of(spec, dataset, params: dict, rng: np.random.Generator) -> dict[str, float]:
    """Every label-invariant test quantity of one parameter point (module docstring)."""
    out = {"loglik": float(log_likelihood(spec, dataset.x, dataset.y, params))}
    out.update(cheap_quantities(spec, params))
    out["y_pred at x*"] = predictive_draw(spec, params, rng)
    return out


def pit_value(truth_value: float, values: np.ndarray, rng: np.random.Generator) -> float:
    """The randomised PIT of ``truth_value`` among ``values`` (module docstring, step 5)."""
    values = np.asarray(values, float)
    less = int(np.sum(values < truth_value))
    equal = int(np.sum(values == truth_value))
    return (less + rng.uniform() * (equal + 1)) / (values.size + 1)


def thinning_step(ds: xr.Dataset, spec, max_draws: int) -> tuple[int, float]:
    """(the step along each chain, the smallest bulk or tail ESS of the cheap quantities; NaN when
    it cannot be computed: fewer than 4 draws per chain, or every quantity constant)."""
    chains, draws = ds.sizes["chain"], ds.sizes["draw"]
    ess = math.nan
    if draws >= 4:
        series: dict[str, np.ndarray] = {}
        for c in range(chains):
            for d in range(draws):
                for name, value in cheap_quantities(spec, _params_at(ds, c, d)).items():
                    series.setdefault(name, np.empty((chains, draws)))[c, d] = value
        values = [float(array_stats.ess(v, chain_axis=0, draw_axis=1, method=m, prob=p))
                  for v in series.values() for m, p in (("bulk", None), ("tail", 0.1))]
        finite = [v for v in values if math.isfinite(v)]
        ess = min(finite) if finite else math.nan
    target = min(max_draws, ess) if math.isfinite(ess) else max_draws
    return max(1, math.ceil(chains * draws / max(target, 1.0))), ess


def sbc_ranks(spec, dataset, truth: dict, draws: xr.DataTree, region: Region, seed: int,
              max_draws: int) -> dict[str, Any]:
    """The SBC fields of one fit: ``sbc_pit`` (quantity -> PIT value), ``sbc_L`` (draws ranked),
    ``sbc_kept`` (share of thinned draws inside the region), ``sbc_ess`` and ``sbc_step``.

    ``draws``: the fit's canonical DataTree (posterior group, (chain, draw, ...)). With no draw in
    the region, ``sbc_pit`` is empty.
    """
    rng = np.random.default_rng([seed, 20181022])
    ds = posterior_dataset(draws)
    step, ess = thinning_step(ds, spec, max_draws)
    thinned = draws.isel(draw=slice(None, None, step)) if "draw" in draws["posterior"].dims else draws
    tds = posterior_dataset(thinned)
    points = [_params_at(tds, c, d) for c in range(tds.sizes["chain"]) for d in range(tds.sizes["draw"])]
    inside = np.array([region.contains(p, spec.D) for p in points], bool)
    out: dict[str, Any] = {"sbc_step": step, "sbc_ess": ess, "sbc_kept": float(inside.mean()) if len(points) else 0.0,
                           "sbc_L": int(inside.sum()), "sbc_pit": {}}
    if not inside.any():
        return out
    values = [quantities_of(spec, dataset, p, rng) for p, keep in zip(points, inside) if keep]
    truth_values = quantities_of(spec, dataset, truth, rng)
    if spec.sigma != "shared" and spec.K > 1:
        sigma = posterior_dataset(relabel(thinned, truth).draws)["sigma"].values.reshape(-1, spec.K)[inside]
        for k in range(spec.K):
            name = f"sigma[{k}] relabelled"
            truth_values[name] = float(truth["sigma"][k])
            for row, value in zip(values, sigma[:, k]):
                row[name] = float(value)
    out["sbc_pit"] = {name: pit_value(value, np.array([v[name] for v in values]), rng)
                      for name, value in truth_values.items()}
    return out


# ---------------------------------------------------------------------------------------------
# The cell


@dataclass(frozen=True)
class SbcCell:
    """One SBC data set x backend x method line: what the executors run (bench.run.executors)."""

    scenario: str  # a built-in scenario or family point: its spec is the model and its prior
    backend: str
    method: str
    sim: int  # the data set's index: seeds its prior draw, its data and the fit
    n: int = 100
    region: dict[str, float] = field(default_factory=dict)  # Region fields
    settings: dict[str, Any] = field(default_factory=dict)  # FitSettings fields
    spec: dict[str, Any] = field(default_factory=dict)  # the line's spec overrides
    max_draws: int = 1000  # most draws ranked per data set

    @property
    def line(self) -> str:
        return " ".join([self.method, *(f"{k}={v}" for k, v in sorted(self.spec.items()))])

    @property
    def variant(self) -> str:
        parts = {k: v for k, v in asdict(self).items() if k not in ("backend", "method", "sim")}
        return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @property
    def id(self) -> str:
        return f"sbc.{self.scenario}.{self.backend}.{self.method}.d{self.sim}.{self.variant}"

    @property
    def shape(self) -> str:
        return f"sbc.{self.scenario}.{self.backend}.{self.method}.{self.variant}"

    def ids(self) -> dict[str, Any]:
        region = Region(**self.region)
        return {"scenario": self.scenario, "backend": self.backend, "method": self.method, "line": self.line,
                "seed": self.sim, "sim": self.sim, "N": self.n, "variant": self.variant, "region": region.label,
                "sep_min": region.sep_min, "sep_max": region.sep_max, "weight_min": region.weight_min,
                "cell": asdict(self)}

    def files(self) -> dict[str, bytes]:
        return {}  # everything is simulated from the cell's description

    def execute_with_files(self, files: dict[str, bytes], out_dir: Path, save_draws: bool = False) -> dict[str, Any]:
        return self.execute(out_dir, save_draws)

    def execute(self, out_dir: Path | None = None, save_draws: bool = False) -> dict[str, Any]:
        """Simulate, fit, score and rank; never raises: an error is a failed row with it."""
        start = time.perf_counter()
        row: dict[str, Any] = {"cell_id": self.id, **self.ids(), "status": "failed", "compile": "none"}
        try:
            self._run(row)
        except MixbenchError as exc:
            row.update(status="failed", error=str(exc))
        except Exception as exc:  # the cell fails, the run goes on
            first = (str(exc).strip().splitlines() or [""])[0]
            row.update(status="failed", error=f"{type(exc).__name__}: {first}", traceback=traceback.format_exc(limit=8))
        row["time_cell"] = time.perf_counter() - start
        return row

    def _run(self, row: dict[str, Any]) -> None:
        spec = get_scenario(self.scenario).spec.overridden(self.spec)
        check_sbc_spec(spec)
        region = Region(**self.region)
        truth, tries = draw_in_region(spec, region, np.random.default_rng([self.sim, 2018]))
        dataset = simulate_data(spec, truth, self.n, seed=self.sim)
        row.update(prior_tries=tries, truth={k: np.asarray(v).tolist() for k, v in truth.items()})
        fit = get_backend(self.backend).fit(spec, dataset, self.method, FitSettings.from_dict(self.settings),
                                            seed=self.sim)
        row["compile"] = fit.compile or "none"
        scored, _ = score_fit(fit, truth=truth)
        row.update({k: scored.get(k) for k in ("status", *SCORE_FIELDS, *TIME_FIELDS)})
        if fit.ok and fit.draws is not None:
            row.update(sbc_ranks(spec, dataset, truth, fit.draws, region, self.sim, self.max_draws))


def plan_sbc_cells(scenario: str, regions: list[Region], backends: list[str], lines: list, sims: list[int], n: int,
                   settings: dict[str, Any], spec: dict[str, Any], max_draws: int) -> list[SbcCell]:
    """One cell per region x backend x method line (bench.run.sweep.MethodLine) x data set. Every
    line fits the same data sets (data set ``sim`` of a region is the same truth and data for
    every line whose spec shares the prior)."""
    return [SbcCell(scenario=scenario, backend=b, method=line.method, sim=int(s), n=n, region=asdict(r),
                    settings=dict(settings), spec={**spec, **line.spec}, max_draws=max_draws)
            for r in regions for b in backends for line in lines for s in sims]


DEFAULT_SCENARIO = "lines-K2-D1-sep4-wmin0.5-sr1"
"""Two lines, no intercepts, shared sigma ~ Uniform(0, 10): the model whose prior ``mixbench sbc`` draws from by default."""


def _edges(text: str) -> list[float]:
    try:
        edges = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MixbenchError(f"--sep-bands: expected numbers like 1,2,4,inf, got {text!r}") from None
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0 or any(map(math.isnan, edges)):
        raise MixbenchError(f"--sep-bands: give at least two increasing edges >= 0 (e.g. 2,inf), got {text!r}")
    return edges


def _spec_field(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise MixbenchError(f"--spec: expected FIELD=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value.strip()


def sbc_cells(options) -> list:
    """The SBC cells ``mixbench sbc`` asks for, every option checked before any runs.

    Parameters
    ----------
    options : argparse.Namespace
        ``backends``, ``methods`` (method lines, bench.run.sweep.parse_method_line), ``sbc_spec``
        (FIELD=VALUE texts), ``scenario``, ``sep_bands`` (edges text), ``min_weight``, ``sims``,
        ``N``, ``max_draws`` and the fit settings as ``set_<field>``.

    Returns
    -------
    list of SbcCell

    Raises
    ------
    MixbenchError
        One line naming the option: an unknown backend or method, a repeated line, a spec field or
        fit setting refused, an empty region, or a model SBC cannot simulate from.
    """
    for name in options.backends:
        check_backend_name(name)
    lines = [parse_method_line(text, METHODS) for text in options.methods]
    if len({line.label for line in lines}) != len(lines):
        raise MixbenchError("--methods: a method line is repeated")
    spec = check_spec_fields(dict(_spec_field(text) for text in options.sbc_spec), "--spec")
    settings = {name[4:]: value for name, value in vars(options).items() if name.startswith("set_") and value is not None}
    fit_settings = FitSettings.from_dict(settings)
    check_engine_names(options.backends, settings)
    base = get_scenario(options.scenario).spec
    edges = _edges(options.sep_bands)
    regions = [Region(lo, hi, options.min_weight) for lo, hi in zip(edges, edges[1:])]
    for line in lines:
        try:
            fitted = base.overridden({**spec, **line.spec})
        except MixbenchError as exc:
            raise MixbenchError(f"--spec/--methods {line.label}: {exc}") from None
        check_sbc_spec(fitted)
        if options.min_weight * fitted.K > 1:
            raise MixbenchError(f"--min-weight: {fitted.K} weights of at least {options.min_weight:g} sum to more than 1")
        check_fit_size(fitted.K, options.N, line.method, fit_settings)
        for region in regions:  # an empty region fails here, not in every cell
            draw_in_region(fitted, region, np.random.default_rng(0))
    return plan_sbc_cells(options.scenario, regions, options.backends, lines, options.sims, options.N, settings, spec,
                          options.max_draws)
