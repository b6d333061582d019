"""The report: built from a real pytest-benchmark session's JSON and from harness runs; its
findings traced to its tables, its numbers in one format, its figures' arithmetic, its glossary,
and the HTML page as a browser lays it out."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report.document import build_report, load_inputs, write_report
from bench.report.figures import component_lines, point_from_row, running_error
from bench.report.findings import findings
from bench.report.frequencies import wilson_interval
from bench.report.glossary import WORDS, describe
from bench.report.tables import Table, assign_fit_ids, fit_summary, fmt, problems_table, report_tables, split_wide
from tests.fake_backends import MARKER_ENV

ROOT = Path(__file__).resolve().parents[1]
QUICK, RAISING = "tests.fake_backends:QuickBackend", "tests.fake_backends:RaisingBackend"


@pytest.fixture(scope="module")
def bench_session(tmp_path_factory):
    """A small pytest-benchmark session over the bench/ suite, run as a user would."""
    tmp = tmp_path_factory.mktemp("bench")
    json_path, out = tmp / "bench.json", tmp / "run"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/benchmarks/test_fits.py", "-q", "-p", "no:cacheprovider",
         "--backends", f"{QUICK},{RAISING}", "--methods", "nuts,map", "--seeds", "0-1", "--N", "200",
         f"--benchmark-json={json_path}", f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, MARKER_ENV: ""},
    )
    return result, json_path, out


def test_benchmark_session_records_every_cell_with_its_row(bench_session):
    result, json_path, _ = bench_session
    # The raising cells fail their tests (after their rows are recorded); the others pass.
    assert "2 failed, 6 passed" in result.stdout, result.stdout[-2000:]
    data = json.loads(json_path.read_text())
    cells = {b["extra_info"]["cell_id"]: b for b in data["benchmarks"]}
    assert len(cells) == 8
    groups = {b["group"] for b in data["benchmarks"]}
    assert groups == {"forum-small: nuts", "forum-small: map"}
    statuses = sorted(b["extra_info"]["status"] for b in data["benchmarks"])
    assert statuses == ["failed"] * 2 + ["ok"] * 2 + ["unsupported"] * 4


def test_session_end_writes_the_report(bench_session):
    result, _, out = bench_session
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert "mixbench report:" in result.stdout


def test_report_from_the_saved_json_contains_every_cell(bench_session, tmp_path):
    _, json_path, _ = bench_session
    paths = write_report([json_path], tmp_path)
    frame, _, _ = load_inputs([json_path])
    assert len(frame) == 8
    text = paths["markdown"].read_text()
    # Ok cells in the findings and the recovery table; unsupported and failed ones, with reasons, in theirs.
    assert f"Recovered the truth on every seed: {QUICK} / nuts (2 of 2, slope error" in text
    assert text.count("backend (it runs: nuts)") == 4
    assert text.count("RuntimeError: the engine blew up") == 2
    assert f"No draws from: {QUICK} / map (unsupported x2)" in text
    html = paths["html"].read_text()
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    # No VI, so no k-hat figure; no slope traces: they lie in the session's --out folder, which the
    # rows name but the report was not given (bench.report.run_files: nothing outside the inputs is read).
    assert figures == ["anytime_1.png", "data_fits_1.png", "landings.png", "recovery_error.png", "time_split.png"]
    assert html.count("<figure ") == len(figures) and html.count("data:image/png;base64,") == len(figures)


def test_report_merging_two_runs_of_the_same_cells_keeps_both_labelled_by_run(bench_session, tmp_path):
    _, json_path, out = bench_session
    frame, environments, _ = load_inputs([json_path, out])
    assert len(frame) == 16  # the same 8 cells from both sources, each run's rows kept
    assert sorted(frame["run"].value_counts().items()) == [("bench", 8), ("run", 8)]
    assert frame["cell_id"].is_unique
    assert set(frame["setup"]) == {"N=200, run bench", "N=200, run run"}
    assert len(environments) == 2
    # Disjoint inputs are one run's rows spread over files: merged as they are, unlabelled.
    frame, _, _ = load_inputs([json_path])
    assert len(frame) == 8 and "run" not in frame


# --- hand-built rows with known answers -------------------------------------------------------

TRUTH = {"truth.w[0,0]": 3.0, "truth.w[1,0]": -1.0, "truth.sigma": 0.1, "truth.pi[0]": 0.5, "truth.pi[1]": 0.5}


def _row(backend, method, seed, mode="truth", status="ok", truth=True, **extra):
    row = {"cell_id": f"{backend}.{method}.s{seed}", "scenario": "forum-small" if truth else "mydata",
           "setup": "default", "backend": backend, "method": method, "seed": seed, "status": status, "N": 2000,
           "K": 2, "D": 1, "data_file": None if truth else "/data/mydata.csv"}
    if status != "ok":
        return {**row, "reason": extra.get("reason", "not offered here")}
    row.update({"engine": backend, "precision": "float64", "mode": mode, "permutation": "0,1",
                "reference_source": "truth" if truth else "map", "chains_disagree": False, "label_switches": 0,
                "off_majority_frac": 0.0, "t_compile": 2.0 + 8 * (seed == 0), "t_warmup": 1.0, "t_sampling": 2.0,
                "w_err_max": 0.002 if mode == "truth" else 1.5, "sigma_err_max": 0.001, "w_coverage": 1.0,
                "mean.w[0,0]": 3.0, "mean.w[1,0]": -1.0, "mean.sigma": 0.1, "mean.pi[0]": 0.5, "mean.pi[1]": 0.5})
    if not truth:
        row.update(w_err_max=None, sigma_err_max=None, w_coverage=None)
    else:
        row.update(TRUTH)
    if method == "nuts":
        row.update(ess_bulk_min=1500.0, ess_bulk_per_s=500.0, ess_tail_per_s=400.0, rhat_max=1.002, divergences=0,
                   grad_evals=20000)
    else:
        row.update(t_warmup=None, t_sampling=None, t_optimisation=0.5, khat=0.3)
    row.update(extra)
    return row


def _known_rows(truth=True):
    return [
        _row("pymc", "nuts", 0, truth=truth), _row("pymc", "nuts", 1, truth=truth),
        _row("numpyro", "advi-fullrank", 0, truth=truth),
        _row("numpyro", "advi-fullrank", 1, mode="other", truth=truth, khat=1.4, converged=False),
        _row("numpyro", "map", 0, mode="collapsed", truth=truth), _row("numpyro", "map", 1, mode="collapsed", truth=truth),
        _row("stan", "pathfinder", 0, status="unsupported", truth=truth),
        _row("stan", "pathfinder", 1, status="unsupported", truth=truth),
    ]


def _report_parts(rows):
    frame = assign_fit_ids(pd.DataFrame(rows))
    fits = fit_summary(frame)
    tables = {t.key: t for t in [*report_tables(fits, frame), problems_table(frame)]}
    return frame, fits, tables, findings(fits)


def test_fit_ids_are_in_backend_then_method_order():
    frame, fits, _, _ = _report_parts(_known_rows())
    assert list(fits["fit"]) == ["F1", "F2", "F3", "F4"]
    assert list(fits["backend"] + "/" + fits["method"]) == ["pymc/nuts", "numpyro/advi-fullrank", "numpyro/map",
                                                            "stan/pathfinder"]


def test_findings_say_who_recovered_how_often_and_what_it_cost():
    _, _, _, found = _report_parts(_known_rows())
    assert len(found) == 1
    setup = found[0]
    assert setup.title == "forum-small, N = 2,000: simulated, scored against the truth"
    text = [s.text for s in setup.sentences]
    assert text[0] == "Recovered the truth on every seed: pymc / nuts (2 of 2, slope error 0.002)."
    assert "Reached the truth on some seeds only: numpyro / advi-fullrank (1 of 2; elsewhere: other 1)." in text
    assert "Never reached the truth: numpyro / map (0 of 2: collapsed 2)." in text
    # NUTS: warm-up 1 s + 1000 / 500 ESS per s = 3 s; compile over seeds 2 to 10 s.
    assert any(t.startswith("Time to 1,000 effective draws after compiling") and "pymc / nuts 3 s" in t for t in text)
    assert "Compiling took pymc / nuts 2 to 10 s, numpyro / advi-fullrank 2 to 10 s and numpyro / map 2 to 10 s" \
        in " ".join(text)
    assert ("Health flags: numpyro / advi-fullrank: khat on 1 of 2 seeds, not-converged on 1 of 2 seeds."
            in text)
    assert "No draws from: stan / pathfinder (unsupported x2)." in text


def test_every_finding_is_traceable_to_its_table_rows():
    """Each sentence cites a table and fit ids; those rows exist, and every number in the sentence
    is in them (or is one of the report's fixed thresholds)."""
    rows = _known_rows() + [_row("pymc", "nuts", 2, mode="other", lp_gap=35.25, divergences=3),
                            _row("numpyro", "nuts", 0, chains_disagree=True), _row("numpyro", "nuts", 1)]
    for i, row in enumerate(r for r in rows if r["status"] == "ok"):
        row.update(w_w1_max=0.01 * (i + 1), elpd_loo=-1500.0 - 2.5 * i, elpd_loo_se=20.0 + i)
    _, _, tables, found = _report_parts(rows)
    constants = {fmt(1000), "1.01", "400", "0.7"}
    checked = 0
    for sentence in found[0].sentences:
        table = tables[sentence.table].frame
        cited = table[table["fit"].isin(sentence.fits)]
        assert sorted(cited["fit"].unique()) == sorted(sentence.fits), sentence
        cells = " ".join(cited.map(fmt).astype(str).to_numpy().ravel())
        for number in re.findall(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", sentence.text):
            assert number in constants or re.search(rf"(?<![\d.,]){re.escape(number)}(?![\d,]|\.\d)", cells), \
                (number, sentence.text, cells)
            checked += 1
    assert checked > 30
    keys = {s.table for s in found[0].sentences}
    assert {"recovery", "modes", "switching", "cost", "health", "vi", "predictive", "problems"} <= keys, keys
    assert any("up to 35.2 nats below the reference posterior" in s.text for s in found[0].sentences)


def test_findings_without_truth_say_reference_not_truth(capsys):
    from bench.report.summary import print_summary

    rows = _known_rows(truth=False)
    _, fits, tables, found = _report_parts(rows)
    assert found[0].title == ("mydata, N = 2,000: no truth and no reference posterior, each fit relabelled to its "
                              "own pivot (map; see the glossary)")
    # Nothing to have reached: no fit is said to have reached anything.
    assert found[0].sentences[0].text.startswith("No truth and no reference posterior: where each fit landed is "
                                                 "not judged")
    assert not any("reached" in s.text.lower() for s in found[0].sentences)
    shared = [dict(r, reference_source="reference", mode="reference" if r.get("mode") == "truth" else r.get("mode"))
              if r["status"] == "ok" else r for r in rows]
    title, first = _report_parts(shared)[3][0].title, _report_parts(shared)[3][0].sentences[0].text
    assert title == "mydata, N = 2,000: no truth, scored against the reference posterior (one labelling for every fit)"
    assert first.startswith("Reached the reference posterior's mode on every seed: pymc / nuts (2 of 2).")
    assert not any("truth" in s.text for s in found[0].sentences[1:])
    # Against a provisional reference: its failed checks and cause lead, and nothing is "reached".
    cause = {"cause": "modes", "evidence": "chains sit in several real modes: x", "advice": "fit fewer components"}
    provisional = [dict(r, reference_status="provisional", reference_failed="R-hat 1.05 > 1.01",
                        reference_causes=[cause]) if r["status"] == "ok" else r for r in shared]
    found_p = _report_parts(provisional)[3][0]
    assert found_p.title == ("mydata, N = 2,000: no truth, scored against a provisional reference posterior (it "
                             "failed its checks; one labelling for every fit)")
    assert found_p.sentences[0].text.startswith("The reference posterior is provisional: it failed R-hat 1.05 > 1.01;")
    assert "Cause (modes): chains sit in several real modes: x. Fix: fit fewer components." in found_p.sentences[0].text
    assert found_p.sentences[1].text.startswith("In the provisional reference's mode (not a verified answer")
    assert not any("reached the" in s.text.lower() for s in found_p.sentences)
    assert "recovery" not in tables and "coverage" not in tables  # no truth, no recovery errors
    print_summary(rows)
    out = capsys.readouterr().out
    assert "relabelled to each fit's own pivot (map)" in out and "relabelled to the truth" not in out


def test_numbers_have_one_format():
    assert [fmt(v) for v in (2210.4, 11362, 0.000051234, 12.345, 123.4, 0.5, 2.0, 0.0, math.nan, math.inf, None)] == \
        ["2,210", "11,362", "0.0000512", "12.3", "123", "0.5", "2", "0", "-", "inf", "-"]
    assert not any("e" in fmt(v) for v in np.geomspace(1e-9, 1e9, 50))


def test_wide_tables_are_split_with_their_keys_repeated():
    frame = pd.DataFrame({"backend": ["a", "b"], "engine": ["x", "y"], **{f"v{i}": [1.0, 2.0] for i in range(12)}})
    parts = split_wide(Table("t", "T", "text", frame), max_values=7)
    assert [p.title for p in parts] == ["T (1 of 2)", "T (2 of 2)"]
    assert all(list(p.frame.columns[:2]) == ["backend", "engine"] and len(p.frame.columns) == 8 for p in parts)
    assert split_wide(Table("t", "T", "", frame.iloc[:, :9]))[0].frame.shape == (2, 9)


def test_optional_columns_appear_when_the_rows_carry_them(tmp_path):
    plain = _known_rows()
    extra = [dict(r, elpd_loo=-1510.5, w_w1_max=0.02, lp_gap=0.5, flags="divergences,rhat") if r["status"] == "ok"
             else r for r in plain]
    texts = {}
    for name, rows in (("plain", plain), ("extra", extra)):
        run = tmp_path / name
        run.mkdir()
        (run / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        texts[name] = write_report([run], run)["markdown"].read_text()
    for column in ("elpd_loo", "elpd_loo - best", "slope W1", "lp gap max"):
        assert f"| {column} |" in texts["extra"] and f"| {column} |" not in texts["plain"]
    assert "divergences x2, rhat x2" in texts["extra"]  # the rows' own flags column replaces the report's
    assert "## Flagged fits" in texts["extra"] and "## Posterior means" in texts["plain"]


def test_glossary_explains_every_column_and_every_mode_word(bench_session, tmp_path):
    _, json_path, _ = bench_session
    rows = [dict(r, elpd_loo=-900.0, elpd_loo_se=3.0, lp_gap=3.0, ref_distance_sd=0.5, chains_below=1,
                 w_w1_max=0.01, b_w1_max=0.01, flags="poor-mode", bound_params="sigma upper", reference_name="ref-1")
            for r in _known_rows() if r["status"] == "ok"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from tests.test_costs import _cell_rows, _cost_json

    (run / "cells.jsonl").open("a").write("".join(json.dumps(r) + "\n" for r in _cell_rows()))
    _, _, _, _, tables, environment = build_report([run, json_path, _cost_json(tmp_path / "c.json")], tmp_path / "f")
    columns = {c for t in [*tables, environment] for c in t.frame.columns}
    assert {"lp gap max", "elpd_loo - best", "slope W1", "K=2 N=1e3 ms", "overhead %", "landed collapsed",
            "at a bound", "w[1,0]", "reference"} <= columns
    assert [c for c in columns if describe(c) is None] == []
    assert set(WORDS["mode words"]) == {"truth", "reference", "collapsed", "other", "mixed"}
    text = write_report([run], tmp_path / "out")["markdown"].read_text()
    glossary = text[text.index("## Glossary"):]
    for word in WORDS["mode words"]:
        assert f"| {word} |" in glossary


# --- figure arithmetic ------------------------------------------------------------------------

def test_wilson_interval_is_the_closed_form():
    z = 1.6448536269514722  # standard normal 95th percentile: a two-sided 90% interval
    for k, n in ((0, 2), (2, 2), (3, 10), (7, 7)):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert wilson_interval(k, n, 0.9) == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_running_error_relabels_each_draw_before_averaging():
    target = np.array([[3.0], [-1.0]])
    rng = np.random.default_rng(0)
    w = target[None, None] + 0.01 * rng.standard_normal((2, 50, 2, 1))
    w[1] = w[1][:, ::-1]  # chain 1 in the opposite labelling
    w[0, 30:] = w[0, 30:, ::-1]  # chain 0 switches at draw 30
    errors = running_error(w, target)
    relabelled = np.where(np.abs(w - target) < 1, w, w[:, :, ::-1])  # undo the swaps by hand
    expected = np.abs(np.cumsum(relabelled.sum(axis=0), axis=0) / (2 * np.arange(1, 51))[:, None, None] - target)
    np.testing.assert_allclose(errors, expected.reshape(50, -1).max(axis=1))
    assert errors[-1] < 0.01  # raw means would sit near 1, halfway between the slopes


def test_component_lines_hold_other_covariates_at_their_means():
    point = {"w": np.array([[2.0, 0.5], [-1.0, 1.0]]), "b": np.array([1.0, -1.0])}
    offsets, slopes = component_lines(point, np.array([0.1, 0.4]))
    np.testing.assert_allclose(offsets, [1.0 + 0.5 * 0.4, -1.0 + 1.0 * 0.4])
    np.testing.assert_allclose(slopes, [2.0, -1.0])


def test_point_from_row_reads_shared_and_per_component_sigma():
    row = pd.Series({"mean.w[0,0]": 1.0, "mean.w[1,0]": 2.0, "mean.sigma[0]": 0.1, "mean.sigma[1]": 0.2,
                     "mean.pi[0]": 0.4, "mean.pi[1]": 0.6, "mean.b[0]": -1.0, "mean.b[1]": 1.0})
    point = point_from_row(row, "mean.", 2, 1)
    np.testing.assert_allclose(point["sigma"], [0.1, 0.2])
    np.testing.assert_allclose(point["b"], [-1.0, 1.0])
    shared = point_from_row(pd.Series({**TRUTH}), "truth.", 2, 1)
    np.testing.assert_allclose(shared["sigma"], [0.1, 0.1])
    np.testing.assert_allclose(shared["b"], [0.0, 0.0])  # no intercepts
    assert point_from_row(pd.Series({"mean.w[0,0]": 1.0}), "mean.", 2, 1) is None


# --- the page in a browser --------------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.tagName) || "error")), true);
window.addEventListener("load", () => {
  const vw = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.querySelectorAll("table, figure, img")) {
    const r = el.getBoundingClientRect();
    if (r.right > vw + 0.5 || (el.tagName === "TABLE" && el.scrollWidth > el.clientWidth + 1)) {
      wide.push([el.tagName, el.id, Math.round(r.right)]);
    }
  }
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = {viewport: vw, page: document.documentElement.scrollWidth, wide: wide, broken: broken,
               errors: window.__errors, tables: document.querySelectorAll("table").length,
               images: document.images.length};
  const pre = document.createElement("pre");
  pre.id = "mixbench-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def browser_check(page: Path, width: int, tmp_path: Path) -> tuple[dict, list[str]]:
    """Lay the page out in headless Chromium at ``width`` px: what is wider than the viewport,
    images that did not decode, page errors, and the console messages Chromium logged."""
    probe = tmp_path / f"probe-{page.stem}.html"
    probe.write_text(page.read_text().replace("<body>", "<body>" + PROBE, 1))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                           f"--window-size={width},900", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="mixbench-check">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(found.group(1)), console


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian: apt-get install chromium)")
def test_html_report_fits_the_viewport_with_no_console_error(bench_session, tmp_path):
    _, json_path, _ = bench_session
    from tests.test_costs import _cell_rows, _cost_json

    run = tmp_path / "run"
    run.mkdir()
    rows = [*_known_rows(), *_cell_rows()]
    rows.append({**_known_rows()[-1], "cell_id": "long", "reason": "a long reason " + "without-any-break-" * 20})
    (run / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report([run, json_path, _cost_json(tmp_path / "c.json")], tmp_path / "report")["html"]
    for width in (1280, 1024):
        result, console = browser_check(page, width, tmp_path)
        assert result["viewport"] == width and result["tables"] >= 10 and result["images"] >= 6, result
        assert result["wide"] == [] and result["page"] <= width, result
        assert result["broken"] == [] and result["errors"] == [] and console == [], (result, console)
    # The check can fail: a table wider than the page, and a console message, are caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><table id=w><tr>" + "<td>wide-cell-content</td>" * 80 + "</tr></table>"
                   "<script>console.error('boom')</script></body></html>")
    result, console = browser_check(bad, 1024, tmp_path)
    assert result["wide"] and result["page"] > 1024 and any("boom" in line for line in console)


def test_quickest_fit_is_named_with_its_flags_and_the_quickest_without():
    rows = [_row("pymc", "nuts", 0), _row("pymc", "nuts", 1),
            _row("numpyro", "pathfinder", 0, khat=1.4), _row("numpyro", "pathfinder", 1, khat=2.0)]
    _, _, _, found = _report_parts(rows)
    text = [s.text for s in found[0].sentences]
    assert ("Quickest to reach the truth on every seed, compile apart: numpyro / pathfinder, 0.5 s to fit, "
            "but with health flags (below).") in text
    assert "Quickest to reach the truth on every seed without a health flag: pymc / nuts, 3 s to fit." in text
    assert "Health flags: numpyro / pathfinder: khat on 2 of 2 seeds." in text


def test_rows_scored_against_different_targets_are_different_setups(tmp_path):
    """A run before a reference existed and one after it share the setup text; they are not
    pooled into one fit."""
    old = [r for r in _known_rows(truth=False) if r["backend"] == "pymc"]
    new = [dict(r, cell_id=r["cell_id"] + ".ref", reference_source="reference", reference_name="ref-1",
                mode="reference") for r in old]
    (tmp_path / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old + new))
    frame, _, _ = load_inputs([tmp_path])
    assert sorted(frame["setup"].unique()) == ["scored against own pivot", "scored against ref-1"]
    fits = fit_summary(frame)
    assert list(fits["seeds_ok"]) == [2, 2] and list(fits["target"]) == ["map", "reference"]
    titles = [f.title for f in findings(fits)]
    assert titles[1].endswith("no truth, scored against the reference posterior (one labelling for every fit)")


def test_the_printed_summary_for_k3_d2_fits_100_columns(capsys):
    """K = 3, D = 2 with intercepts and per-component sigmas: 15 parameters and 5 time columns
    (176 characters on one line before) print as blocks no wider than 100 characters, each with
    the key columns, every value shown once."""
    from bench.report.summary import print_summary

    names = ([f"w[{k},{d}]" for k in range(3) for d in range(2)] + [f"b[{k}]" for k in range(3)]
             + [f"sigma[{k}]" for k in range(3)] + [f"pi[{k}]" for k in range(3)])
    rows = [{"backend": b, "method": "nuts", "seed": 0, "status": "ok", "reference_source": "truth",
             **{f"mean.{n}": -1.234 * (i + 1) for i, n in enumerate(names)}, **{f"truth.{n}": 1.0 for n in names},
             "t_compile": 123.456, "t_warmup": 1.5, "t_sampling": 2.5, "time_cell": 130.0}
            for b in ("numpyro", "pymc", "stan")]
    print_summary(rows)
    lines = [line for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert max(map(len, lines)) <= 100
    headers = [line.split() for line in lines if line.split()[:2] == ["backend", "method"]]
    assert len(headers) >= 2 and all(h[:4] == ["backend", "method", "seed", "status"] for h in headers)
    shown = [c for h in headers for c in h[4:]]
    assert sorted(shown) == sorted(names + ["compile", "s", "warm-up", "s", "sampling", "s", "cell", "s"])
    assert sum(line.split()[0] == "stan" for line in lines) == len(headers)  # each block has every row


def test_findings_name_the_prior_scale_as_the_cause_of_at_bound_fits():
    """With the run's prior-scale warning, the at-bound and collapsed fits get a sentence naming it
    as their cause; a fit without those flags is not named, and without the warning nothing is said."""
    from bench.report.findings import setup_findings
    from bench.report.tables import assign_fit_ids, fit_summary

    base = {"scenario": "d.csv", "setup": "default", "method": "nuts", "status": "ok", "mode": "reference",
            "reference_source": "reference", "chains_disagree": False, "N": 150}
    rows = [{**base, "backend": "stan", "flags": "sigma-at-bound,rhat"},
            {**base, "backend": "pymc", "method": "map", "flags": "map-at-bound"},
            {**base, "backend": "numpyro", "flags": "rhat"}]
    fits = fit_summary(assign_fit_ids(pd.DataFrame(rows)))
    note = ("prior scale: the response's mean 100 is 9 prior-predictive sds from the priors' 0; fit with "
            "--standardize")
    texts = [s.text for s in setup_findings(fits, (note,)).sentences]
    cause = [t for t in texts if t.startswith("Cause of the at-bound")]
    assert cause == [f"Cause of the at-bound and collapsed fits, pymc / map (map-at-bound) and stan / nuts "
                     f"(sigma-at-bound): the data are not on the priors' scale, as the run's prior-scale check said "
                     f"({note})"]
    assert not any(t.startswith("Cause of") for t in (s.text for s in setup_findings(fits).sentences))
