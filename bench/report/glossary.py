"""What every column and every word of the report means, for people reading it.

``COLUMNS`` covers the columns of the per-fit tables (bench.report.tables) and of the cost sections
(bench.report.costs); ``PATTERNS`` covers families of columns named by their values (``K=2 N=1e3 ms``);
``WORDS`` the vocabulary the cells hold (modes, statuses, k-hat labels, relabelling targets,
flags). Where a row column is defined in ``bench.score.columns.ROW_FIELDS`` (and the flags in
``bench.score.health.FLAGS``) the entry quotes it, so the two cannot drift apart.
"""

from __future__ import annotations

import re

from backends.methods import METHODS
from bench.report.tables import ESS_LIMIT, ESS_TARGET, KHAT_BAD, RHAT_LIMIT
from bench.score.columns import ROW_FIELDS
from bench.score.health import FLAGS
from bench.report.mode_share_table import COLUMNS as MODE_SHARE_COLUMNS


def _row(field: str, fallback: str) -> str:
    return ROW_FIELDS.get(field, fallback)


def _family(kind: str, family: str, label: str) -> tuple[str, str]:
    if kind == "err":
        return (f"{label} err", f"median over seeds of: {_row(f'{family}_err_max', 'max |posterior mean - truth|')}")
    if kind == "w1_floor":
        return (f"{label} W1 floor", f"median over seeds of: {_row(f'{family}_w1_floor', 'the W1 noise floor')}")
    if kind == "w1_mode":
        return (f"{label} W1 own mode", f"median over seeds of: {_row(f'{family}_w1_mode', 'W1 to the own mode')}")
    if kind == "cover":
        return (f"{label} cover", f"mean over seeds of: {_row(f'{family}_coverage', 'coverage of the truth')}")
    return (f"{label} W1", f"median over seeds of: {_row(f'{family}_w1_max', '1-Wasserstein distance to the reference')}")


_FAMILIES = {"w": "slope", "b": "intercept", "sigma": "sigma", "pi": "weight", "nu": "nu", "gamma": "gate"}

COLUMNS: dict[str, str] = {
    # identity
    "fit": "the fit's id: one backend x method on one setup over its seeds; the same id in every table, "
           "figure and finding",
    "scenario": "the built-in scenario, or the data file's name",
    "setup": "what the cells changed from the scenario's defaults (N, spec, settings); default: nothing",
    "backend": "the probabilistic programming backend: pymc, numpyro or stan (or a plug-in)",
    "method": f"the inference method: {', '.join(METHODS)}",
    "engine": "what ran the method inside the backend (nutpie, pymc, numpyro, pystan, cmdstanpy, ...)",
    "precision": "floating-point precision of the fit",
    "N": "observations in the data set",
    "K": "mixture components",
    "seeds ok": "seeds whose cell produced draws, of the seeds run",
    "target": "what the draws were relabelled against and scored with: truth when the data were simulated, "
              "otherwise a reference point (see target words)",
    "seed": "the inference seed of the cell",
    "status": "the cell's outcome (see status words)",
    "why": "the reason a cell did not produce draws: the engine's error or why the pair is unsupported",
    # recovery
    "on target": "seeds that landed in the target's mode (truth or reference), of the seeds ok",
    **dict(_family("err", f, label) for f, label in _FAMILIES.items()),
    **dict(_family("cover", f, label) for f, label in _FAMILIES.items()),
    **dict(_family("w1", f, label) for f, label in _FAMILIES.items()),
    **dict(_family("w1_floor", f, label) for f, label in _FAMILIES.items()),
    **dict(_family("w1_mode", f, label) for f, label in _FAMILIES.items()),
    # SMC and stacking (bench.report.mode_share_table): each label quotes its row field
    **{label: _row(field, label) for field, label in MODE_SHARE_COLUMNS.items()},
    # modes
    **{f"landed {m}": f"seeds whose fit landed in mode '{m}' (see mode words)" for m in
       ("truth", "reference", "collapsed", "other", "mixed")},
    "lp gap max": "the largest over seeds of lp_gap, nats: " + _row("lp_gap", "the reference posterior's log "
                                                                          "density minus the fit's"),
    "distance max sd": "the largest over seeds of: " + _row("ref_distance_sd", "distance to the reference mean "
                                                                              "in reference sds"),
    "seeds poorer mode": "seeds with at least one chain in a poorer mode: " + _row("chains_below", "a mode far "
                                                                                   "below the reference"),
    "reference modes": "where the fit's chains (a point, a VI fit: one each; over seeds) landed among the "
                       "reference's modes (bench.score.modes): 'k of n chains in mode A (mass m)', modes named A, B, ... "
                       "by posterior mass; nats lower: the mode's mean log density below the best mode's; 'moved "
                       "between modes mid-run (mode A, then mode B)': a Markov chain whose quarters landed in "
                       "different modes ('no mode': in none); 'spread over modes A 0.50, B 0.50': a population "
                       "without run order (VI, Pathfinder, SMC, a stacked mixture) with at least 0.1 of its draws "
                       "in each, their shares beside; mass "
                       "covered: the mass of the modes the chains reached",
    "mass (bridge)": "a reference mode's posterior mass by bridge sampling (Meng & Wong 1996), +- its standard error",
    "mass (IS)": "a reference mode's posterior mass by importance sampling from a Student-t fitted to it, +- its "
                 "standard error: an estimate independent of the bridge one",
    "data set": "the data set the reference posterior belongs to",
    "reference mode": "a mode of the reference posterior, named A, B, ... by posterior mass",
    "mode status": "weighted: sampled and weighted into the reference by its mass; degenerate: a sigma collapsed "
                   "on tied points, the posterior improper there, no mass; unstable: chains started in it left it for "
                   "no mode found. Modes that chains cross between are both weighted, 'sampled as one region' (their "
                   "pooled draws' shares split the region's mass) or, crossing rarely, each by the chains that "
                   "stayed in it",
    "mode mean lp": "the mean log density of a reference mode's draws (log prior + log likelihood, nats)",
    "mode location": "the posterior mean of a reference mode's parameters, in the canonical labelling",
    "how found": "how many of the exploration chains found the mode, by how they were started (from prior draws, "
                 "at a MAP optimum, at a Pathfinder fit), and notes",
    "nats below": "a reference mode's mean log density below the best mode's",
    "poor": "a mode of posterior mass below 0.05: a poor mode, whatever its log density",
    "labellings": "majority labellings reached and on how many seeds: 'j0,j1 x2' means fit component j_k plays "
                  "target component k, on 2 seeds; 0,1 is the target's own order",
    "chains disagree": "seeds whose chains' majority labellings differ (between-chain label switching; the "
                       "relabelled summaries are unaffected, raw R-hat is not)",
    "switches": "label switches within chains that persist 20 or more draws, summed over seeds and chains",
    "off majority": "share of draws whose labelling differs from their chain's majority, mean over seeds",
    # cost
    "compile s": "seconds compiling the model (median)",
    "compile s min": "the shortest compile over seeds, seconds: usually a seed that found the compiled model cached",
    "compile s max": "the longest compile over seeds, seconds: usually the first seed, which compiled from scratch "
                     "unless an earlier run had cached it",
    "warm-up s": "seconds of NUTS warm-up (adaptation), all chains (median over seeds)",
    "sampling s": "seconds of NUTS sampling after warm-up, all chains (median over seeds)",
    "optimise s": "seconds of VI or MAP optimisation (median over seeds)",
    "s to fit": "warm-up + sampling + optimisation seconds as run, compile apart (median over seeds)",
    f"s to {ESS_TARGET} ESS": f"warm-up + the sampling seconds {ESS_TARGET} bulk-effective draws of the slowest "
                              "parameter take at the measured rate, compile apart (median over seeds; NUTS only)",
    "grad evals": "gradient evaluations of the log density reported by the engine (median over seeds)",
    "ESS bulk": "bulk effective sample size of the slowest parameter, relabelled draws (median over seeds)",
    "ESS bulk/s": "bulk ESS of the slowest parameter per second of sampling (median over seeds)",
    "ESS tail/s": "tail ESS of the slowest parameter per second of sampling (median over seeds)",
    "ESS bulk/grad": "bulk ESS of the slowest parameter per gradient evaluation (median over seeds)",
    # health
    "R-hat max": f"largest rank-normalised split R-hat over parameters and seeds, relabelled draws; above "
                 f"{RHAT_LIMIT} flags the fit",
    "divergences": "divergent NUTS transitions, summed over seeds",
    "converged": "seeds whose optimiser reported convergence, of those that report it",
    "flags": "health flags and how many seeds raised each (see flag words); '-' none",
    # approximation quality
    "k-hat": "PSIS Pareto k-hat of log p - log q over the approximation's draws (median over seeds): below 0.5 "
             f"good, below {KHAT_BAD} usable with care, {KHAT_BAD} or more the draws are not the posterior",
    "k-hat worst": "the largest k-hat over seeds",
    "seeds k-hat bad": f"seeds with k-hat {KHAT_BAD} or more",
    "elpd_loo": "median over seeds of: " + _row("elpd_loo", "PSIS-LOO expected log predictive density, nats"),
    "elpd_loo se": "median over seeds of: " + _row("elpd_loo_se", "standard error of elpd_loo"),
    "LOO observations": "where elpd_loo is a subsample's estimate: 'm of N', the observations Pareto-smoothed "
                        "(median over seeds) of the data's N; the others enter through their lpd, the difference "
                        "estimator of Magnusson et al. 2020 (arviz-stats' loo_subsample); '-' all of them",
    "subsampling se": "median over seeds of: " + _row("elpd_loo_subsample_se",
                                                      "standard error of elpd_loo due to subsampling observations"),
    "elpd_loo - best": "elpd_loo minus the largest elpd_loo of the fits of the same data (never one with a "
                       "degenerate component nor a +stacked row, whose elpd is optimistic: its weights were "
                       "fitted on the same LOO densities, Yao et al. 2022), nats: 0 for the best, negative for "
                       "the others (a +stacked row's may be positive)",
    "se of the difference": "standard error of 'elpd_loo - best' from the paired pointwise differences, "
                            "sqrt(n var(elpd_i - best_i)) (Vehtari, Gelman & Gabry 2017; arviz-stats compare's dse), "
                            "on each fit's median seed; where both fits subsampled the same observations, plus the "
                            "subsampling variance of the paired differences (Magnusson et al. 2020, as arviz-stats' "
                            "compare's subsampling_dse); a difference within about 2 of it is noise",
    # flagged fits (one row per seed)
    "mode": _row("mode", "where the chains landed"),
    "lp gap nats": _row("lp_gap", "the reference posterior's log density minus the fit's, nats"),
    "distance sd": _row("ref_distance_sd", "distance to the reference mean in reference sds"),
    "at a bound": _row("bound_params", "parameters piling at a prior bound"),
    "reference": "the reference posterior the fits were scored against, where one was used (mixbench reference)",
    # cost sections (bench.report.costs)
    "fits": "cells summarised in the row",
    "warm-up + sampling s": "seconds of NUTS warm-up and sampling (median over seeds)",
    "ms/grad in NUTS": "milliseconds per gradient inside NUTS: (warm-up + sampling) / gradient evaluations",
    "cold compile s": "seconds compiling in a fresh process with empty caches",
    "warm compile s": "seconds compiling in a fresh process with the caches the cold run left",
    "cold process s": "the whole cold process, seconds (imports, compile, a short fit)",
    "warm process s": "the whole warm process, seconds",
    "runs": "measurements summarised (median)",
    "total s": "the cell's whole cost seen from the parent process, seconds",
    "fit s": "the backend's fit call less its conversion of the draws, seconds",
    "startup s": "starting the cell's process and its imports, seconds",
    "backend import s": "importing the backend module, seconds",
    "data s": "simulating or loading the data, seconds",
    "conversion s": "turning the engine's output into draws, seconds",
    "waiting for a build s": "waiting for another process's build of the same program (not compile, not counted against --time-limit), seconds",
    "metrics s": "computing the metrics row, seconds",
    "hand-over s": "handing the row back to the parent, seconds",
    "in fit, unattributed s": "backend-call seconds outside the timed phases (the engine's own bookkeeping)",
    "overhead s": "total less fit: what the suite adds around the fit, seconds",
    "overhead %": "overhead as a percentage of the fit",
    # sweeps (bench.run.sweep, bench.report.frequencies): shares of seeds as 'k/n share [Wilson 90% interval]'
    "line": "a method line of a sweep: the method and the spec fields its cells override (nuts ordering=slope)",
    "D": "covariates",
    "sep": "separation of a family point: the smallest RMS gap between neighbouring component lines over their "
           "pooled sigma (models.families)",
    "w_min": "the smallest mixing weight of a family point",
    "sigma_ratio": "largest over smallest per-component sigma of a family point",
    "outliers": "share of a family point's observations replaced by gross outliers y ~ U(8, 12)",
    "gate": "weight-regression strength of a family point: the softmax weights' slope on x_1 of component 0 "
            "against the last (0: constant weights)",
    "seeds": "cells counted at the sweep point (unsupported cells excluded)",
    "truth": "seeds landing in the truth's mode (truth_mode; rows without it: mode truth, or reference with a "
             "reference posterior): k/n, share, Wilson 90% interval",
    "other": "seeds landing in another mode: k/n, share, Wilson 90% interval",
    "collapsed": "seeds whose components coincided or one emptied: k/n, share, Wilson 90% interval",
    "mixed": "seeds whose chains landed in different modes: k/n, share, Wilson 90% interval",
    "biased": "seeds in the reference posterior's mode but off in location or scale (mode biased): k/n, share, "
              "Wilson 90% interval",
    "failed": "seeds without draws (failed, crashed, timed out): k/n, share, Wilson 90% interval",
    "switch": "NUTS fits with a label switch within a chain (label_switches > 0): k/n, share, Wilson 90% interval",
    "disagree": "fits of two chains or more whose chains hold different labellings: k/n, share, Wilson 90% interval",
    "posterior": "seeds landing in the reference posterior's mode (mode reference: the method matches the "
                 "posterior), of the ok fits a reference placed: k/n, share, Wilson 90% interval",
    "truth's mode mass": "the reference posterior's share of draws in the truth's mode (ref_truth_mass), median "
                         "over the point's data sets",
    "reference made": "the sweep line's reference posteriors: made (every one accepted), none (--reference none), or "
                      "the settings where one was provisional (failed its checks) or could not be made: those "
                      "count against the truth only",
    "identified there": "the data sets whose reference posterior holds at least half its draws in the truth's mode, "
                        "at the hardest setting where 90% did: k/n, share, Wilson 90% interval, and the median mass",
    "identified at stop": "the same at the first setting where fewer than 90% of data sets' posteriors identified "
                          "the truth",
    "matched there": "the seeds in the reference's mode at the hardest setting where 90% were: k/n, share, Wilson "
                     "90% interval",
    "matched at miss": "the same at the first setting where fewer than 90% were (the method misses the posterior)",
    "truth there": "the truth share at the hardest setting held: k/n, share, Wilson 90% interval",
    "truth at break": "the truth share at the first setting below 90%: k/n, share, Wilson 90% interval",
    # environment
    "what": "a machine property or a package",
    "version / value": "its version or value",
}

PATTERNS: list[tuple[str, str, str]] = [  # (regex, how the glossary names the family, meaning)
    (r"hardest \S+ held", "hardest AXIS held",
     "walking the axis from easiest to hardest, the hardest setting where at least 90% of seeds landed in the "
     "truth's mode before the first below 90% (none: the easiest already fell below)"),
    (r"truth identified to \S+", "truth identified to AXIS",
     "walking the axis from easiest to hardest, the hardest setting where at least 90% of data sets' reference "
     "posteriors held at least half their draws in the truth's mode (the data identify the truth)"),
    (r"not identified at \S+", "not identified at AXIS",
     "the first setting where fewer than 90% of data sets' reference posteriors did (the data's information ends)"),
    (r"posterior matched to \S+", "posterior matched to AXIS",
     "the hardest setting where at least 90% of seeds landed in the reference posterior's mode"),
    (r"misses posterior at \S+", "misses posterior at AXIS",
     "the first setting where fewer than 90% of seeds landed in the reference posterior's mode (the method's "
     "failure, apart from the data's)"),
    (r"broke at \S+", "broke at AXIS", "the first setting, walking from easiest to hardest, where fewer than 90% of "
     "seeds landed in the truth's mode (never: none did)"),
    (r"K=\d+ N=\S+ ms", "K=k N=n ms",
     "milliseconds per log density + gradient at K components and N observations (median over pytest-benchmark "
     "rounds)"),
    (r"(w|b|sigma|pi)(\[[\d,]+\])?", "w[k,d], b[k], sigma[k], pi[k]",
     "a relabelled posterior mean (the truth in the truth row): w[k,d] slope of component k on covariate d, b[k] "
     "intercept, sigma or sigma[k] noise sd, pi[k] weight, on the data's scale"),
]

WORDS: dict[str, dict[str, str]] = {
    "mode words": {
        "truth": "every chain (or the VI / MAP fit) sits at the true parameters up to relabelling",
        "reference": "with a reference posterior: its mode (bench.score.landing); without one, every chain sits at the "
                     "reference point the draws were relabelled against",
        "collapsed": "two components coincide or one has emptied out (weight below 0.02)",
        "other": "a distinct mode that is neither the target nor collapsed",
        "mixed": "chains of one fit landed in different modes",
    },
    "status words": {
        "ok": "the fit produced draws (or a MAP point)",
        "unsupported": "the backend does not offer this method here; the reason says why",
        "failed": "the fit raised an error",
        "timeout": "the cell ran past the time limit and was stopped",
        "crashed": "the cell's process died before it wrote its row",
    },
    "target words": {
        "truth": "the true parameters of a simulated data set",
        "pivot": "a point given by the user",
        "map": "the fit's own highest-density draw",
        "chain0": "the mean of the fit's chain 0",
        "reference": "the reference posterior's mean in its canonical labelling, shared by every fit of the data "
                     "set (mixbench reference)",
        "provisional reference": "a reference posterior that failed its checks (R-hat, ESS, divergences), used "
                                 "as the labelling target and to measure W1 and landings against: no fit is said to have reached it; "
                                 "the findings say why it failed and what would fix it",
        "reference-map, reference-chain0": "a pivot taken from reference draws given without their log densities",
    },
    "k-hat words": {
        "good": "k-hat below 0.5: the draws can stand for the posterior",
        "ok": f"k-hat from 0.5 to {KHAT_BAD}: usable with care",
        "bad": f"k-hat {KHAT_BAD} or more: the approximation is not the posterior",
    },
    # bench.score.health's flags; rows written before it get the first ones from bench.report.tables.row_flags,
    # with rhat above 1.01 and ess below 400.
    "flag words": {**FLAGS, "rhat": f"{FLAGS.get('rhat', 'R-hat too high')} (rows without flags: above {RHAT_LIMIT})",
                   "ess": f"{FLAGS.get('ess', 'ESS too low')} (rows without flags: bulk ESS below {ESS_LIMIT})"},
}


def describe(column: str) -> str | None:
    """The glossary text of a column label, or None when it has none."""
    if column in COLUMNS:
        return COLUMNS[column]
    for pattern, _, text in PATTERNS:
        if re.fullmatch(pattern, column):
            return text
    return None


def glossary_for(columns: list[str]) -> list[tuple[str, str]]:
    """(label, meaning) for the given column labels, in first-seen order; a family of pattern
    columns appears once, under its pattern."""
    seen, out = set(), []
    for column in columns:
        key, text = column, COLUMNS.get(column)
        if text is None:
            for pattern, name, pattern_text in PATTERNS:
                if re.fullmatch(pattern, column):
                    key, text = name, pattern_text
        if text is None or key in seen:
            continue
        seen.add(key)
        out.append((key, text))
    return out
