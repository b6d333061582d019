"""How many observations PSIS-LOO must Pareto-smooth: time and accuracy of the subsampled estimate.

    uv run python -m bench.experiments.loo_subsample [N,...] [m,...] [seeds]   # default 1000,10000 200,300,400 5

For each N, the synthetic NUTS and ADVI fits of the scoring benchmark
(bench.benchmarks.test_scoring_cost) are scored by ``bench.score.predictive.loo_metrics`` with
every observation Pareto-smoothed (``max_obs`` = N) and with a simple random subsample of m of
them (Magnusson et al. 2020's difference estimator with the lpd of every observation as the
cheap approximation, as arviz-stats' ``loo_subsample(method="lpd")``) under several subsample
seeds. Printed per (N, method, m): CPU seconds of the estimate (best of the seeds), and over the
seeds how many put the full estimate within 1, 2 and 3 of the subsample's stated subsampling
standard errors, and the largest |elpd_subsample - elpd_full| in units of that and of its total
standard error. The full estimate is arviz-stats' ``loo`` on
all N observations.
"""

from __future__ import annotations

import json
import sys
import time

from bench.benchmarks.scoring_time import setup
from bench.benchmarks.test_scoring_cost import synthetic_fit
from bench.score.metrics import fit_draws
from bench.score.predictive import loo_metrics


def measure(N: int, sizes: list[int], seeds: int) -> list[dict]:
    nuts_fit, _, reference, problem = setup(N)
    out = []
    for method in ("nuts", "advi"):
        fit = synthetic_fit(method, N, nuts_fit, reference)
        draws, mcmc = fit_draws(fit), method == "nuts"
        start = time.process_time()
        full = loo_metrics(fit, draws, problem, mcmc=mcmc, max_obs=N)
        full_s = time.process_time() - start
        out.append({"N": N, "method": method, "m": N, "cpu_s": full_s, "elpd": full["elpd_loo"],
                    "se": full["elpd_loo_se"]})
        for m in sizes:
            times, z_sub, z_total, sub_se = [], [], [], []
            for seed in range(seeds):
                start = time.process_time()
                row = loo_metrics(fit, draws, problem, mcmc=mcmc, max_obs=m, seed=seed)
                times.append(time.process_time() - start)
                diff = abs(row["elpd_loo"] - full["elpd_loo"])
                z_sub.append(diff / row["elpd_loo_subsample_se"])
                z_total.append(diff / row["elpd_loo_se"])
                sub_se.append(row["elpd_loo_subsample_se"])
            out.append({"N": N, "method": method, "m": m, "cpu_s": min(times), "seeds": seeds,
                        "within_1_sub_se": sum(z <= 1 for z in z_sub), "within_2_sub_se": sum(z <= 2 for z in z_sub),
                        "within_3_sub_se": sum(z <= 3 for z in z_sub), "max_diff_over_sub_se": max(z_sub),
                        "max_diff_over_se": max(z_total), "sub_se_max": max(sub_se)})
    return out


if __name__ == "__main__":
    ns = [int(float(v)) for v in (sys.argv[1] if len(sys.argv) > 1 else "1000,10000").split(",")]
    ms = [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "200,300,400").split(",")]
    seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    for n in ns:
        for result in measure(n, ms, seeds):
            print(json.dumps(result), flush=True)
