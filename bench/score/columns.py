"""The columns of a fit's row (bench.score.metrics.score_fit), each described for the glossary
(bench.report.glossary) and the tests that check every row has them all.
"""

from __future__ import annotations

from bench.score.health import HEALTH_FIELDS
from bench.score.landing import LANDING_FIELDS
from bench.score.modes import MODE_FIELDS
from bench.score.particles import PARTICLE_FIELDS
from bench.score.predictive import LOO_FIELDS
from bench.score.stacking import STACKING_FIELDS

# nu: Student-t degrees of freedom when a parameter; gamma: softmax weights' coefficients (models/spec.py).
FAMILIES = ("w", "b", "sigma", "pi", "nu", "gamma")


def _family_fields(template: str, description: str) -> dict[str, str]:
    names = {"w": "slopes", "b": "intercepts", "sigma": "sigma(s)", "pi": "weights",
             "nu": "Student-t degrees of freedom nu (when a parameter)",
             "gamma": "softmax weights' coefficients gamma (relabelled and re-referenced to the last component)"}
    return {template.format(f=f): description.format(name=names[f]) for f in FAMILIES}


ROW_FIELDS: dict[str, str] = {
    # What was fitted
    "status": "the fit's status: ok, unsupported or failed",
    "reason": "why the fit is not ok (NaN when ok)",
    "traceback": "a failed fit: the engine's traceback (NaN otherwise)",
    "backend": "backend name (pymc, numpyro, stan)",
    "engine": "engine that ran the method (e.g. nutpie, numpyro, pystan)",
    "method": "method name from the shared vocabulary (nuts, advi-meanfield, ...)",
    "seed": "the fit's seed",
    "precision": "floating-point precision of the fit (float64, float32)",
    "n_chains": "chains in the draws (1 for VI and MAP)",
    "n_draws": "draws per chain",
    "t_compile": "seconds compiling the model (NaN when the engine does not separate it)",
    "t_compile_wait": "seconds waiting for another process's build of the same program (not compile; not "
                      "counted against --time-limit)",
    "t_warmup": "seconds of NUTS warm-up (NaN when absent or not separated)",
    "t_sampling": "seconds of NUTS sampling after warm-up (NaN when absent or not separated)",
    "t_warmup_and_sampling": "seconds of NUTS warm-up and sampling where the engine times them only "
                             "together (PyMC's numpyro sampler; NaN otherwise)",
    "t_optimisation": "seconds of VI / MAP optimisation (NaN for NUTS)",
    "t_extraction": "seconds turning the engine's output into draws",
    "t_overhead": "seconds of the engine call outside every chain's own clock (start-up, the engine's "
                  "trace conversion; NaN when not measured)",
    "grad_evals": "gradient evaluations reported by the engine (NaN when unknown)",
    "divergences": "divergent transitions (the fit's count, else summed from sample_stats.diverging)",
    "converged": "the engine's own convergence flag (NaN when it gives none)",
    "iterations": "optimisation iterations run (VI / MAP; MAP: summed over its starts)",
    "map_starts": "MAP / Laplace mode search: how many seeded optimisation starts ran",
    "map_starts_at_best": "how many of those starts ended within 0.01 nats of the best log density",
    "at_bound": "coordinates of the MAP / mode on a bound of the prior's support (sigma at its Uniform "
                "upper bound or 0, a weight at 0, tied ordered components); empty when interior",
    "nonfinite_draws": "draws with a NaN or infinite component parameter (left unrelabelled)",
    "relabel_converged": "whether the relabelling's scale refinement settled within relabel_max_iter",
    # Relabelling and mode
    "reference_source": "the labelling target every component was relabelled to: truth; reference (the "
                        "reference posterior's mean, in its canonical labelling; every fit of the data set "
                        "shares it); pivot (a point given); map or chain0 (the fit's own draws: components "
                        "do not line up across fits); reference-map or reference-chain0 (a pivot taken "
                        "from reference draws given without their log densities)",
    "mode": "where the chains landed: with a reference posterior, reference (its mode, see bench.score.landing), "
            "biased (its mode, but off in location or scale), collapsed or other; without one, truth (or reference: the pivot) when every chain matches it, "
            "collapsed or other likewise; mixed when chains land in different modes. Against a modes reference, "
            "from where the draws are (bench.score.modes.fit_landing): mixed for chains in different modes, else "
            "other beyond the lp gap tolerance or with under half the draws in weighted modes of mass >= 0.05, "
            "reference "
            "with >= 0.9 of the draws there and W1 to the own mode <= 1 mode sd, else biased",
    "truth_mode": "where the chains landed against the truth (truth, collapsed, other or mixed; the truth "
                  "tolerances of mode), also when a reference posterior placed mode; NaN without a truth",
    "ref_truth_mass": "the reference posterior's own landing: the share of its draws in the truth's mode (its "
                      "modes weighted by their masses, else its chains alike, each relabelled to the truth and "
                      "held to the truth tolerances of mode); NaN without a reference or a truth",
    "permutation": "overall majority labelling, 'j0,j1,...': fit component j_k plays the target's k",
    "chains_on_target": "chains in the reference posterior's mode (without one: the truth's, or the pivot's)",
    "chains_collapsed": "chains with coinciding components or an emptied component",
    "chains_other": "chains in neither",
    # Label switching
    "label_switches": "switches of labelling within chains, persisting >= switch_min_draws draws, "
                      "summed over chains (NaN for non-MCMC methods)",
    "chains_switching": "chains with at least one switch (NaN for non-MCMC methods)",
    "off_majority_frac": "fraction of draws whose labelling differs from their chain's majority",
    "chains_off_majority": "chains whose majority labelling is not the overall majority labelling",
    "chains_disagree": "whether chains' majority labellings differ (between-chain label disagreement)",
    # Recovery against the truth (NaN without a truth)
    **_family_fields("{f}_err_max", "max over the {name} of |posterior mean - truth|, relabelled"),
    **_family_fields("{f}_err_max_raw", "the same on the raw (not relabelled) draws"),
    **_family_fields("{f}_rmse", "root mean squared error of the {name} over all draws, relabelled"),
    **_family_fields("{f}_rmse_raw", "the same on the raw draws"),
    **_family_fields("{f}_coverage", "fraction of the true {name} inside the central interval "
                                     "(interval_prob), relabelled; NaN for a single draw"),
    **_family_fields("{f}_coverage_raw", "the same on the raw draws"),
    # Sampling efficiency (MCMC only; relabelled draws unless marked raw)
    "ess_bulk_min": "min bulk ESS over every scalar parameter",
    "ess_tail_min": "min tail ESS over every scalar parameter",
    "ess_bulk_min_raw": "min bulk ESS on the raw draws",
    "ess_bulk_per_s": "ess_bulk_min / t_sampling",
    "ess_tail_per_s": "ess_tail_min / t_sampling",
    "ess_bulk_per_grad": "ess_bulk_min / grad_evals",
    "ess_tail_per_grad": "ess_tail_min / grad_evals",
    **_family_fields("{f}_ess_bulk", "min bulk ESS over the {name}"),
    **_family_fields("{f}_ess_tail", "min tail ESS over the {name}"),
    **_family_fields("{f}_ess_bulk_per_s", "min bulk ESS over the {name} / t_sampling"),
    **_family_fields("{f}_ess_tail_per_s", "min tail ESS over the {name} / t_sampling"),
    "rhat_max": "max rank-normalised split R-hat over every scalar, relabelled (NaN for one chain)",
    "rhat_max_raw": "the same on the raw draws",
    # Approximation quality
    "khat": "PSIS Pareto k-hat of log_p - log_q over the approximation's draws (over its proposals "
            "before resampling, for multi-path Pathfinder; -inf when the ratios are constant, i.e. "
            "q is p; NaN without log_p / log_q)",
    "khat_label": "good (k < khat_good), ok (< khat_bad) or bad",
    **_family_fields("{f}_w1_max", "max over the {name} of the 1-Wasserstein distance between the "
                                   "fit's marginal and the reference posterior's, both relabelled"),
    **_family_fields("{f}_w1_mean", "mean of the same over the {name}"),
    **_family_fields("{f}_w1_floor", "the W1 noise floor for the {name}: max over them of the W1 between two "
                                     "disjoint random sets of the reference's draws, each of the fit's size (at most "
                                     "half the reference's), i.e. what two exact samples of that size differ by "
                                     "(Agrawal & Domke 2024); a W1 near it is noise"),
    **_family_fields("{f}_w1_mode", "the same W1 (max over the {name}) to the reference draws of the fit's own "
                                    "mode: the chains that stayed in one reference mode (ref_mode_chains) against "
                                    "that mode's draws, chain for chain (NaN when no chain did, or the reference "
                                    "keeps no per-draw modes: a one-run or older reference)"),
    **_family_fields("{f}_w1_mode_floor", "the W1 noise floor of the own-mode W1 for the {name}, as the whole reference's floor "
                                          "(from the own mode's draws)"),
    "w1_mode_sd": "max over every scalar of the own-mode W1 in that mode's posterior sds (its draws'); above "
                  "bench.score.modes.W1_BIASED_SD a fit in its mode is biased, not reference",
    # Place against the reference posterior, by log density (NaN without a reference)
    **LANDING_FIELDS,
    # Which of the reference's modes (bench.score.modes), when it is made of modes
    **MODE_FIELDS,
    # Predictive accuracy (label-invariant, no truth needed)
    **LOO_FIELDS,
    # Health
    **HEALTH_FIELDS,
    # SMC's record and the draws' shares of the reference's modes (bench.score.particles); stacking of
    # the fit's chains or paths (bench.score.stacking)
    **PARTICLE_FIELDS,
    **STACKING_FIELDS,
    "degenerate": "components whose sigma collapsed onto tied points (sigma below 0.1 x the data's resolution, "
                  "the smallest gap between distinct y; backends.degenerate), with the points each holds, e.g. "
                  "'chain 1: sigma[1] = 1.9e-14 on 10 points'; empty when none",
    "chains_degenerate": "chains (a point counts as one) holding a degenerate component",
    "map_starts_degenerate": "multi-start MAP and Laplace: the starts passed over because their optimum holds a degenerate "
                             "component (empty when none)",
    "metric_errors": "metrics that raised, 'metric: error' separated by '; ' (empty when none): their "
                     "columns are NaN and the row keeps its status",
}
