"""``mixbench compare`` calls a deliberate change, and only it; its verdict rule holds on numbers
worked by hand; ``--fail-if-worse`` turns a worse run into a failing exit."""

import math

import pandas as pd
import pytest

from bench.cli import main
from bench.report.compare import METRICS, NOISE_FACTOR, compare, verdicts
from bench.run.executors import WarmProcessExecutor
from bench.run.harness import RunOptions, make_grid, run_grid
from models.errors import MixbenchError

BIASED = "tests.fake_backends:BiasedBackend"
SEEDS = [0, 1, 2, 3]


def noisy_run(out, **settings):
    cells = make_grid(["forum-small"], [BIASED], ["nuts"], SEEDS, settings={"chains": 2, "draws": 200, **settings},
                      n=200)
    run_grid(cells, RunOptions(out), WarmProcessExecutor(jobs=1))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    return (noisy_run(base / "baseline"), noisy_run(base / "again"),
            noisy_run(base / "worse", learning_rate=0.2))


# The fake's bias of the slopes is the changed setting: the slope recovery error grows with it.
# Every other draw is the same at the same seed, its timings are constants, and a constant shift
# changes neither ESS nor R-hat.
CHANGED = {"w_err_max"}


def test_compare_calls_the_deliberately_worse_setting_and_nothing_else(runs, tmp_path, capsys):
    baseline, _, worse = runs
    comparison = compare(baseline, worse)
    assert len(comparison.cells) == len(SEEDS)
    assert comparison.setups == [("N=200, chains=2, draws=200", "N=200, chains=2, draws=200, learning_rate=0.2")]
    called = {v.metric: v.call for v in comparison.verdicts if v.call in ("worse", "better")}
    assert called == dict.fromkeys(CHANGED, "worse")
    slope = next(v for v in comparison.verdicts if v.metric == "w_err_max")
    assert slope.mean_a == pytest.approx(0.01, abs=0.003) and slope.mean_b == pytest.approx(0.2, abs=0.003)

    code = main(["compare", str(baseline), str(worse), "--out", str(tmp_path), "--fail-if-worse", "0.5"])
    out = capsys.readouterr()
    assert code == 1 and "worse by more than 50%" in out.err
    assert "Worse: forum-small / tests.fake_backends:BiasedBackend / nuts: w_err_max" in out.out
    assert f"exceeds {NOISE_FACTOR:g} x run A's standard deviation" in out.out
    text = (tmp_path / "compare.md").read_text()
    assert "## Changes called" in text and "compare.png" in text and (tmp_path / "compare.png").is_file()
    assert "data:image/png;base64," in (tmp_path / "compare.html").read_text()


def test_two_runs_of_the_same_setting_differ_by_nothing_called(runs, tmp_path, capsys):
    baseline, again, _ = runs
    comparison = compare(baseline, again)
    assert not [v for v in comparison.verdicts if v.call != "same"]
    assert main(["compare", str(baseline), str(again), "--out", str(tmp_path), "--fail-if-worse", "0"]) == 0
    assert "No change beyond the noise." in capsys.readouterr().out


def _frame(values_a, values_b, metric="w_err_max"):
    rows = []
    for run, values in (("a", values_a), ("b", values_b)):
        for seed, value in enumerate(values):
            rows.append({"scenario": "s", "N": 200, "backend": "x", "method": "nuts", "seed": seed,
                         f"status_{run}": "ok", f"{metric}_{run}": value})
    a = pd.DataFrame([r for r in rows if "status_a" in r])
    b = pd.DataFrame([r for r in rows if "status_b" in r])
    return a.merge(b, on=["scenario", "N", "backend", "method", "seed"])


def test_the_verdict_rule_by_hand():
    # sd(A) = 0.1; B is beyond every seed of A and 0.25 above it, more than 2 x 0.1.
    (v,) = verdicts(_frame([1.0, 1.1, 1.2], [1.25, 1.35, 1.45]))
    assert v.spread == pytest.approx(0.1) and v.delta == pytest.approx(0.25) and v.call == "worse"
    # Shifted by 0.15: the seeds overlap (1.15 < 1.2).
    (v,) = verdicts(_frame([1.0, 1.1, 1.2], [1.15, 1.25, 1.35]))
    assert v.call == "same"
    # Separated, but the shift (1.2) is within 2 x sd(A) = 2.
    (v,) = verdicts(_frame([1.0, 2.0, 3.0], [3.1, 3.2, 3.3]))
    assert v.call == "same"
    # A worse setting that also makes B noisy (a real advi run at 300 iterations): still called.
    (v,) = verdicts(_frame([0.0059, 0.0116, 0.0027], [0.196, 1.430, 0.504]))
    assert v.call == "worse" and v.spread == pytest.approx(0.004508, abs=1e-6)
    # Higher is better for ESS per second.
    (v,) = verdicts(_frame([10.0, 10.0, 10.0], [20.0, 20.0, 20.0], metric="ess_bulk_per_s"))
    assert v.spread == 0 and v.call == "better" and METRICS["ess_bulk_per_s"][1] == 1
    # Constant across seeds, changed by less than 5%: not called.
    (v,) = verdicts(_frame([100.0, 100.0, 100.0], [103.0, 103.0, 103.0], metric="t_sampling"))
    assert v.call == "same"
    # Two seeds: too few to call anything.
    (v,) = verdicts(_frame([1.0, 1.1], [9.0, 9.1]))
    assert v.call == "n/a"
    (v,) = verdicts(_frame([1.0], [9.0]))
    assert v.call == "n/a" and math.isnan(v.spread)


def test_compare_refuses_runs_without_common_cells(runs, tmp_path):
    baseline, _, _ = runs
    other = tmp_path / "other"
    run_grid(make_grid(["forum-small"], [BIASED], ["nuts"], [9], settings={"chains": 2, "draws": 50}, n=200),
             RunOptions(other), WarmProcessExecutor())
    with pytest.raises(MixbenchError, match="no cell in common"):
        compare(baseline, other)
    assert main(["compare", str(baseline), str(tmp_path / "missing")]) == 2
