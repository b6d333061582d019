"""Stan's native runs the adapter calls: a CmdStan run's temporary directory and error
messages, ADVI by cmdstanpy's ``variational``, and pystan's NUTS draws taken through httpstan's
REST interface."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from backends.base import (
    FitSettings,
)
from backends.stan.install import _quiet, cmdstan_version
from backends.stan.parsers import csv_stan_version

_NUTS_FUNCTION = "stan::services::sample::hmc_nuts_diag_e_adapt"



_STAN_MESSAGE = re.compile(r"(error|exception|reject|fail|not finite|nan|inf\b)", re.IGNORECASE)


@contextlib.contextmanager
def _cmdstan_run():
    """A temporary output directory for one CmdStan run, consoles silenced; a failed run's
    error carries Stan's own messages from the console transcripts (cmdstanpy's error names only
    files in the directory, which is gone once the run ends)."""
    with tempfile.TemporaryDirectory(prefix="mixbench-stan-") as out, _quiet():
        try:
            yield out
        except RuntimeError as exc:
            messages = []
            for transcript in sorted(Path(out).rglob("*stdout*.txt")):
                messages += [line.strip() for line in transcript.read_text(errors="replace").splitlines()
                             if _STAN_MESSAGE.search(line) and line.strip() not in messages]
            if not messages:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"{first} | Stan said: {' / '.join(messages[:8])}") from exc


def _run_advi(model, data: dict, seed: int, method: str, settings: FitSettings, out: str):
    """One CmdStan ADVI run -> (columns, draws (draw, column), output CSV path, console
    transcript, ELBO diagnostic CSV path, Stan version).

    With adaptation off (a fixed eta) Stan writes no "eta" header line and cmdstanpy 1.3's CSV
    parser refuses the output although the run is fine; the CSV is then read here: its first
    numeric row is the approximation's mean, the rest are the draws.
    """
    adapt = settings.advi_eta is None
    try:
        run = model.variational(data=data, seed=seed, algorithm=method.removeprefix("advi-"),
                                iter=settings.vi_iterations, tol_rel_obj=settings.vi_tolerance,
                                adapt_engaged=adapt, eta=settings.advi_eta, draws=settings.vi_draws,
                                output_dir=out, sig_figs=18, save_diagnostics=True, require_converged=False,
                                show_console=False)
    except (RuntimeError, ValueError) as exc:
        if adapt or "parsing" not in str(exc).lower():
            raise
    else:
        diagnostics = run.runset.diagnostic_files[0] if run.runset.diagnostic_files else ""
        return (list(run.column_names), np.asarray(run.variational_sample), run.runset.csv_files[0],
                Path(run.runset.stdout_files[0]).read_text(), diagnostics, csv_stan_version(run))
    csv_files = [f for f in Path(out).glob("*.csv") if "diagnostic" not in f.name]
    if len(csv_files) != 1:
        raise RuntimeError(f"ADVI with eta={settings.advi_eta} wrote no output CSV")
    lines = csv_files[0].read_text().splitlines()
    header = "\n".join(line for line in lines if line.startswith("#"))
    rows = [line for line in lines if line and not line.startswith("#")]
    values = np.asarray([[float(v) for v in row.split(",")] for row in rows[2:]])
    version = dict(re.findall(r"stan_version_(major|minor|patch) = (\d+)", header))
    stan_version = (f"{version['major']}.{version['minor']}.{version['patch']}" if len(version) == 3
                    else cmdstan_version() or "unknown")
    stdout = "\n".join(f.read_text() for f in Path(out).glob("*stdout*.txt"))
    diagnostics = next((str(f) for f in Path(out).glob("*diagnostic*.csv")), "")
    return rows[0].split(","), values, str(csv_files[0]), stdout, diagnostics, stan_version


def _take_draws(draws, keep: np.ndarray):
    """A one-chain canonical DataTree restricted to the draws ``keep`` (renumbered 0..n-1)."""
    out = draws.copy()
    posterior = draws["posterior"].to_dataset().isel(draw=keep)
    out["posterior"] = xr.DataTree(posterior.assign_coords(draw=np.arange(len(keep))))
    return out


def run_files(directory: str) -> tuple[str, list[str]]:
    """The CSV file and the console transcripts of a one-CSV CmdStan run (``pathfinder``,
    ``laplace_sample``) that wrote into its own output directory ``directory``.

    Read from the directory: cmdstanpy's CmdStanPathfinder and CmdStanLaplace expose their files
    only through a private ``_runset`` (its CmdStanMLE, CmdStanVB and CmdStanMCMC have a public
    ``runset``).

    Returns
    -------
    csv_file : str
    stdout_files : list of str

    Raises
    ------
    RuntimeError
        The directory does not hold exactly one output CSV.
    """
    csvs = [p for p in sorted(Path(directory).glob("*.csv")) if not p.stem.endswith(("-diagnostic", "-profile"))]
    if len(csvs) != 1:
        raise RuntimeError(f"CmdStan run in {directory}: expected one output CSV, found {len(csvs)}")
    return str(csvs[0]), [str(p) for p in sorted(Path(directory).glob("*-stdout.txt"))]


# --- pystan / httpstan ---------------------------------------------------------------------------

async def _httpstan_fits(model_name: str, payloads: list[dict], parallel: bool) -> list[bytes]:
    """Run one httpstan fit per payload and return each fit's raw output (JSON lines).

    pystan's ``Model.sample`` is bypassed for one reason: with a random seed httpstan caches the
    fit on disk and serves the cached output to any later identical request, so a repeated run
    would take no time and prove nothing. Here a cached fit is deleted and the run redone, and
    every fit is deleted once read.

    A private path (httpstan's REST calls), pinned to a public engine by
    tests/test_stan_cmdstan.py (pystan's draws equal CmdStan's, cmdstanpy's public ``sample``, at
    the same seed). Remove it for ``Model.sample`` once pystan can turn httpstan's fit cache off
    or names the cached fit so it can be deleted (no upstream issue filed yet).
    """
    import stan.common

    async with stan.common.HttpstanClient() as client:

        async def start(payload: dict) -> dict:
            for _ in range(2):
                resp = await client.post(f"/{model_name}/fits", json=payload)
                if resp.status != 201:
                    raise RuntimeError(f"httpstan refused the fit: {resp.json().get('message', resp.status)}")
                operation = resp.json()
                if not operation["done"]:
                    return operation
                await client.delete(f"/{operation['result']['name']}")
            raise RuntimeError("httpstan kept serving a cached fit")

        async def finish(operation: dict) -> bytes:
            while not operation["done"]:
                await asyncio.sleep(0.05)
                resp = await client.get(f"/{operation['name']}")
                operation = resp.json()
            fit_name = operation["result"].get("name")
            if fit_name is None:
                message = operation["result"].get("message", "unknown error")
                raise RuntimeError(message.split(", traceback")[0])
            resp = await client.get(f"/{fit_name}")
            if resp.status != 200:
                raise RuntimeError(f"httpstan lost fit {fit_name}")
            await client.delete(f"/{fit_name}")
            return resp.content

        if parallel:
            operations = [await start(p) for p in payloads]
            return [await finish(op) for op in operations]
        return [await finish(await start(p)) for p in payloads]


