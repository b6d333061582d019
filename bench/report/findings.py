"""The report's first section: what the numbers say, in sentences generated from the per-fit
summary (bench.report.tables.fit_summary).

Per setup (one data set): which fits reached the target (the truth, or without one an accepted
reference posterior; a provisional reference, one that failed its checks, is named as such and
never said to be reached; without either, nothing is said to be reached) and on how many seeds, which landed elsewhere and how far below in log density where the
rows record it, what each cost (seconds to 1000 effective draws for NUTS, to the fit for the
others), and the health flags. Every sentence names the table and the fit ids its numbers come
from; every number in it is a cell of those rows (formatted by bench.report.tables.fmt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.report.tables import ESS_TARGET, STACKED_SUFFIX, fmt


@dataclass(frozen=True)
class Sentence:
    text: str
    table: str  # the key of the table whose rows hold the numbers
    fits: tuple[str, ...]


@dataclass(frozen=True)
class SetupFindings:
    title: str
    sentences: tuple[Sentence, ...]


def _name(fit: pd.Series) -> str:
    return f"{fit['backend']} / {fit['method']}"


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _main_error(fit: pd.Series) -> tuple[str, float] | None:
    for family, label in (("w", "slope"), ("b", "intercept")):
        if _present(fit.get(f"{family}_err")):
            return label, fit[f"{family}_err"]
    return None


def _range(low, high) -> str:
    return fmt(low) if fmt(low) == fmt(high) else f"{fmt(low)} to {fmt(high)}"


def _away(fit: pd.Series) -> str:
    """'other 1, collapsed 1' for the seeds that did not reach the target, and the gap."""
    parts = [f"{mode} {int(fit[f'landed_{mode}'])}" for mode in ("biased", "other", "collapsed", "mixed")
             if fit.get(f"landed_{mode}", 0)]
    text = ", ".join(parts)
    gaps = _gaps(fit)
    return f"{text}; {gaps}" if gaps else text


def _gaps(fit: pd.Series) -> str:
    """The largest gap to the reference posterior in log density in each direction, over every
    chain of every seed: '' when there is none."""
    parts = []
    if _present(fit.get("lp_gap_max")) and fit["lp_gap_max"] > 0:
        parts.append(f"up to {fmt(fit['lp_gap_max'])} nats below")
    if _present(fit.get("lp_gap_min")) and fit["lp_gap_min"] < 0:
        parts.append(f"up to {fmt(-fit['lp_gap_min'])} nats above")
    which = "provisional reference" if fit.get("target") == "provisional reference" else "reference posterior"
    return " and ".join(parts) + f" the {which} in log density" if parts else ""


def _kind(fits: pd.DataFrame) -> str:
    """What the fits were scored against: truth, reference (accepted), provisional or pivot."""
    targets = set(fits.loc[fits["seeds_ok"] > 0, "target"].astype(str))
    if fits["truth"].all() and targets != {"reference"}:
        return "truth"
    return {frozenset({"reference"}): "reference",
            frozenset({"provisional reference"}): "provisional"}.get(frozenset(targets), "pivot")


# Per kind of target: (every seed, some seeds, no seed) sentence openings, and the target's name.
_LANDING_WORDS = {
    "truth": ("Recovered the truth on every seed", "Reached the truth on some seeds only",
              "Never reached the truth", "the truth"),
    "reference": ("Reached the reference posterior's mode on every seed",
                  "Reached the reference posterior's mode on some seeds only",
                  "Never reached the reference posterior's mode", "the reference posterior's mode"),
    "provisional": ("In the provisional reference's mode (not a verified answer: the reference failed its "
                    "checks) on every seed", "In the provisional reference's mode on some seeds only",
                    "Never in the provisional reference's mode", "the provisional reference's mode"),
}


def _setup_title(fits: pd.DataFrame) -> str:
    first = fits.iloc[0]
    title = str(first["scenario"])
    if first["setup"] != "default":
        title += f" [{first['setup']}]"
    if _present(first.get("N")):
        title += f", N = {fmt(int(first['N']))}"
    targets = sorted(set(fits.loc[fits["seeds_ok"] > 0, "target"].astype(str)) - {"-"})
    if fits["truth"].all():
        if targets == ["reference"]:
            return (title + ": simulated, scored against the reference posterior of these data (one labelling "
                    "for every fit), and against the truth apart")
        return title + ": simulated, scored against the truth"
    if targets == ["reference"]:
        return title + ": no truth, scored against the reference posterior (one labelling for every fit)"
    if targets == ["provisional reference"]:
        return (title + ": no truth, scored against a provisional reference posterior (it failed its checks; "
                "one labelling for every fit)")
    target = f" ({', '.join(targets)}; see the glossary)" if targets else ""
    return title + f": no truth and no reference posterior, each fit relabelled to its own pivot{target}"


# Flags a prior on the wrong scale for the data produces: every fit pulled to the priors' scale.
PRIOR_SCALE_FLAGS = ("sigma-at-bound", "map-at-bound", "collapsed", "poor-mode")


def _prior_scale_sentence(ran: pd.DataFrame, notes: tuple[str, ...]) -> Sentence | None:
    """The cause of at-bound or collapsed fits when the run's prior-scale check
    (models/prior_check.py) warned that the data lie outside what the priors allow."""
    warned = [note for note in notes if note.startswith("prior scale")]
    counts = ran["flag_counts"].map(lambda c: c if isinstance(c, dict) else {}) if "flag_counts" in ran else None
    if not warned or counts is None:
        return None
    hit = ran[counts.map(lambda c: any(flag in c for flag in PRIOR_SCALE_FLAGS))]
    if not len(hit):
        return None
    items = [f"{_name(f)} ({', '.join(flag for flag in PRIOR_SCALE_FLAGS if flag in f['flag_counts'])})"
             for _, f in hit.iterrows()]
    return Sentence(f"Cause of the at-bound and collapsed fits, {_listing(items)}: the data are not on the priors' "
                    f"scale, as the run's prior-scale check said ({' '.join(warned)})", "health", tuple(hit["fit"]))


def setup_findings(fits: pd.DataFrame, notes: tuple[str, ...] = ()) -> SetupFindings:
    """The findings of the fits of one setup; ``notes``: what the run said about itself (its
    prior-scale warning names the cause of at-bound and collapsed fits)."""
    sentences: list[Sentence] = []
    truth = bool(fits["truth"].all())
    kind = _kind(fits)
    ran = fits[fits["seeds_ok"] > 0]
    if kind == "provisional":
        sentences.append(_provisional_sentence(ran))
    if kind == "pivot":
        if len(ran):
            failed = ran.get("reference_failed", pd.Series(dtype=object)).dropna()
            why = (f" The reference posterior was not made ({failed.iloc[0]}); `mixbench reference` makes one "
                   "without a time limit." if len(failed) else "")
            sentences.append(Sentence("No truth and no reference posterior: where each fit landed is not judged "
                                      f"(each was relabelled to its own pivot).{why}", "modes", tuple(ran["fit"])))
    else:
        sentences += _landing_sentences(ran, kind, truth)
    answers = ran[ran.get("ref_modes_answer", pd.Series("-", index=ran.index)).astype(str) != "-"] if len(ran) else ran
    if len(answers):
        sentences.append(Sentence("By the reference's modes (A, B, ... by posterior mass): "
                                  + "; ".join(answers["ref_modes_answer"]) + ".", "modes", tuple(answers["fit"])))
    target = _LANDING_WORDS.get(kind, ("", "", "", ""))[3]

    if "w_w1" in ran and ran["w_w1"].notna().any():
        close = ran[ran["w_w1"].notna()].sort_values("w_w1")
        items = [f"{_name(f)} {fmt(f['w_w1'])}" + (f" (floor {fmt(f['w_w1_floor'])})"
                                                   if _present(f.get("w_w1_floor")) else "")
                 for _, f in close.iterrows()]
        which = "the provisional reference" if kind == "provisional" else "the reference posterior"
        sentences.append(Sentence(f"Slope W1 distance to {which} (median over seeds, smaller is "
                                  f"closer; the floor is the W1 two exact samples of the fit's size have, so a W1 "
                                  f"near it is noise): {_listing(items)}.", "vi", tuple(close["fit"])))
    if "elpd_loo_diff" in ran and ran["elpd_loo_diff"].notna().any():
        scored = ran[ran["elpd_loo_diff"].notna()].sort_values("elpd_loo_diff", ascending=False)
        # +stacked rows are kept out of the ranking (bench.report.tables.fit_summary): their
        # weights were fitted on the LOO densities that score them, so they win by construction.
        stacked = scored["method"].astype(str).str.endswith(STACKED_SUFFIX)
        best = scored[(scored["elpd_loo_diff"] == 0) & ~stacked]
        items, stacked_items = [], []
        for _, f in scored.iterrows():
            if f["elpd_loo_diff"] == 0 and not f["method"].endswith(STACKED_SUFFIX):
                continue
            se = f.get("elpd_loo_diff_se")
            if f["method"].endswith(STACKED_SUFFIX):
                stacked_items.append(f"{_name(f)} {fmt(f['elpd_loo_diff'])}"
                                     + (f" (se {fmt(se)})" if _present(se) else ""))
            elif _present(se):
                verdict = "noise" if abs(f["elpd_loo_diff"]) <= 2 * se else "real"
                items.append(f"{_name(f)} {fmt(f['elpd_loo_diff'])} (se {fmt(se)}: {verdict})")
            else:
                items.append(f"{_name(f)} {fmt(f['elpd_loo_diff'])} (no paired se: its pointwise values do not pair with the best fit's)")
        head = f"PSIS-LOO elpd: the best fit of these data is {_listing([_name(f) for _, f in best.iterrows()])}"
        rest = (f"; the others' differences to it in nats, each with the standard error of the paired pointwise "
                f"differences, noise only within 2 of it: {_listing(items)}" if items else "")
        apart = (f"; apart, stacked rows, optimistic by construction (their stacking weights were fitted on the "
                 f"same LOO densities that score them, Yao et al. 2022): {_listing(stacked_items)}"
                 if stacked_items else "")
        sentences.append(Sentence(head + rest + apart + ".", "predictive", tuple(scored["fit"])))
    nuts = ran[ran["s_to_ess"].notna()].sort_values("s_to_ess")
    if len(nuts):
        items = [f"{_name(f)} {fmt(f['s_to_ess'])} s" for _, f in nuts.iterrows()]
        sentences.append(Sentence(f"Time to {fmt(ESS_TARGET)} effective draws after compiling (warm-up, then "
                                  f"sampling at the measured rate; bulk ESS of the slowest parameter): "
                                  f"{_listing(items)}.", "cost", tuple(nuts["fit"])))
    others = ran[ran["s_to_ess"].isna() & ran["s_to_fit"].notna()].sort_values("s_to_fit")
    if len(others):
        items = [f"{_name(f)} {fmt(f['s_to_fit'])} s" for _, f in others.iterrows()]
        sentences.append(Sentence(f"Time to a fit after compiling (methods without an ESS rate: optimisation, "
                                  f"SMC's tempering): {_listing(items)}.", "cost",
                                  tuple(others["fit"])))
    compiled = ran[ran["t_compile_max"].notna()].sort_values("t_compile_max")
    if len(compiled):
        items = [f"{_name(f)} {_range(f['t_compile_min'], f['t_compile_max'])} s" for _, f in compiled.iterrows()]
        sentences.append(Sentence(f"Compiling took {_listing(items)} (over seeds: the first compiles, later ones "
                                  "mostly load the cache).", "cost", tuple(compiled["fit"])))
    good = ran[(ran["on_target"] == ran["seeds_ok"]) & ran["s_to_fit"].notna()].sort_values("s_to_fit")
    if len(good) > 1 and kind in ("truth", "reference"):
        best = good.iloc[0]
        flagged = best["flags"] != "-"
        sentences.append(Sentence(f"Quickest to reach {target} on every seed, compile apart: {_name(best)}, "
                                  f"{fmt(best['s_to_fit'])} s to fit" + (", but with health flags (below)."
                                                                         if flagged else "."),
                                  "cost", (best["fit"],)))
        clean = good[good["flags"] == "-"]
        if flagged and len(clean):
            best = clean.iloc[0]
            sentences.append(Sentence(f"Quickest to reach {target} on every seed without a health flag: "
                                      f"{_name(best)}, {fmt(best['s_to_fit'])} s to fit.", "cost", (best["fit"],)))

    flagged = ran[ran["flags"].astype(str) != "-"]
    if len(flagged):
        items = []
        for _, fit in flagged.iterrows():
            counts = fit["flag_counts"] if isinstance(fit.get("flag_counts"), dict) else {}
            flags = ", ".join(f"{flag} on {n} of {int(fit['seeds_ok'])} seeds" for flag, n in sorted(counts.items()))
            items.append(f"{_name(fit)}: {flags or fit['flags']}")
        sentences.append(Sentence(f"Health flags: {'; '.join(items)}.", "health", tuple(flagged["fit"])))
    elif len(ran):
        unmeasured = sorted({str(m) for m in ran["method"] if str(m).split("+")[0] == "smc"})
        sentences.append(Sentence("No health flags on any fit (where each was measured: no divergences, R-hat at "
                                  "most 1.01, bulk ESS at least 400, k-hat below 0.7)"
                                  + (f"; {', '.join(unmeasured)} has no R-hat or ESS (independent particle "
                                     "populations)" if unmeasured else "") + ".", "health", tuple(ran["fit"])))
    cause = _prior_scale_sentence(ran, notes)
    if cause is not None:
        sentences.append(cause)
    counts = ran["flag_counts"].map(lambda c: c if isinstance(c, dict) else {}) if "flag_counts" in ran else None
    degenerate = ran[counts.map(lambda c: "degenerate-component" in c)] if counts is not None else ran.iloc[:0]
    if len(degenerate):
        items = [f"{_name(f)} ({f['flag_counts']['degenerate-component']} of {int(f['seeds_ok'])} seeds)"
                 for _, f in degenerate.iterrows()]
        sentences.append(Sentence(
            f"A component collapsed onto tied points (degenerate-component; the row's degenerate column gives the "
            f"points it holds) in {_listing(items)}: with tied y the likelihood grows without bound as that sigma "
            "goes to 0, and under a sigma prior with positive density at 0 the posterior is improper, so its high "
            "log density and elpd are not a better fit (it is never ranked best). Fix: a zero-avoiding prior on "
            "sigma (InverseGamma or LogNormal) or jitter the ties within their recording step.", "health",
            tuple(degenerate["fit"])))
    biased = ran[counts.map(lambda c: "biased" in c)] if counts is not None else ran.iloc[:0]
    if len(biased):
        items = [f"{_name(f)} ({f['flag_counts']['biased']} of {int(f['seeds_ok'])} seeds"
                 + (f"; its point up to {fmt(f['point_gap_best_max'])} nats below the best optimum any fit of "
                    f"these data found ({f['point_best']})" if _present(f.get("point_gap_best_max"))
                    and f["point_gap_best_max"] > 0 else "") + ")"
                 for _, f in biased.iterrows()]
        sentences.append(Sentence(
            f"In the reference posterior's mode but off in location or scale (biased: an accuracy finding, not "
            f"another mode): {_listing(items)}.", "health", tuple(biased["fit"])))
    disagree = ran[ran["seeds_disagree"] > 0]
    if len(disagree):
        items = [f"{_name(f)} ({int(f['seeds_disagree'])} of {int(f['seeds_ok'])})" for _, f in disagree.iterrows()]
        sentences.append(Sentence(f"Chains in different labellings on some seeds: {_listing(items)}; the relabelled "
                                  "numbers above are unaffected, raw R-hat and ESS are not.", "switching",
                                  tuple(disagree["fit"])))
    failed = fits[fits["cells"] > fits["seeds_ok"]]
    if len(failed):
        items = [f"{_name(f)} ({f['not_ok']})" for _, f in failed.iterrows()]
        sentences.append(Sentence(f"No draws from: {_listing(items)}.", "problems", tuple(failed["fit"])))
    return SetupFindings(_setup_title(fits), tuple(sentences))


def _on_truth(fit: pd.Series, kind: str) -> str:
    """Simulated data placed by a reference: the truth's landing beside the reference's."""
    if kind != "reference" or not _present(fit.get("on_truth")):
        return ""
    return f"; in the truth's mode on {int(fit['on_truth'])} of {int(fit['seeds_ok'])}"


def _landing_sentences(ran: pd.DataFrame, kind: str, truth: bool) -> list[Sentence]:
    every_words, some_words, never_words, _ = _LANDING_WORDS[kind]
    sentences = []
    every = ran[ran["on_target"] == ran["seeds_ok"]]
    if len(every):
        items = []
        for _, fit in every.iterrows():
            detail = f"{int(fit['on_target'])} of {int(fit['seeds_ok'])}"
            detail += _on_truth(fit, kind)
            error = _main_error(fit) if truth else None
            if error:
                detail += f", {error[0]} error {fmt(error[1])}"
            gaps = _gaps(fit)
            if gaps:
                detail += f"; {gaps}"
            items.append(f"{_name(fit)} ({detail})")
        sentences.append(Sentence(f"{every_words}: {_listing(items)}.", "recovery" if truth else "modes",
                                  tuple(every["fit"])))
    some = ran[(ran["on_target"] > 0) & (ran["on_target"] < ran["seeds_ok"])]
    if len(some):
        items = [f"{_name(f)} ({int(f['on_target'])} of {int(f['seeds_ok'])}; elsewhere: {_away(f)}{_on_truth(f, kind)})"
                 for _, f in some.iterrows()]
        sentences.append(Sentence(f"{some_words}: {_listing(items)}.", "modes", tuple(some["fit"])))
    never = ran[ran["on_target"] == 0]
    if len(never):
        items = [f"{_name(f)} (0 of {int(f['seeds_ok'])}: {_away(f)}{_on_truth(f, kind)})" for _, f in never.iterrows()]
        sentences.append(Sentence(f"{never_words}: {_listing(items)}.", "modes", tuple(never["fit"])))
    return sentences


def _provisional_sentence(ran: pd.DataFrame) -> Sentence:
    """What the provisional reference failed, why, and what would fix it (bench.reference.advice)."""
    first = ran.iloc[0] if len(ran) else pd.Series(dtype=object)
    causes = first.get("reference_causes")
    causes = causes if isinstance(causes, list) else []
    why = " ".join(f"Cause ({c.get('cause')}): {c.get('evidence')}. Fix: {c.get('advice')}." for c in causes)
    return Sentence(f"The reference posterior is provisional: it failed {first.get('reference_failed') or 'its checks'}; "
                    f"it serves as the labelling target and W1 and landings are measured against it, but no fit is "
                    f"said to have reached it. {why}".strip(),
                    "modes", tuple(ran["fit"]))


def findings(fits: pd.DataFrame, notes: tuple[str, ...] = ()) -> list[SetupFindings]:
    """Findings per setup, in fit-id order; ``notes`` as setup_findings takes them."""
    if fits.empty:
        return []
    order = fits.assign(_n=fits["fit"].str[1:].astype(int)).sort_values("_n")
    keys = order[["scenario", "setup"]].drop_duplicates()
    return [setup_findings(order[(order["scenario"] == s) & (order["setup"] == u)].drop(columns="_n"), tuple(notes))
            for s, u in keys.itertuples(index=False)]
