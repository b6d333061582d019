"""What ``mixbench list`` prints: scenarios, backends, engines found here, and method support."""

from __future__ import annotations

from backends import BACKENDS, METHODS, FitSettings, get_backend
from backends.stan import NO_CMDSTAN, cmdstan_path, cmdstan_version, pystan_stan_version
from models.scenarios import DEFAULT_SCENARIO, SCENARIOS


def support_matrix(spec=None, settings: FitSettings | None = None) -> dict[str, dict[str, str | None]]:
    """backend -> method -> None when supported, else the backend's reason (or its import error)."""
    settings = settings or FitSettings()
    spec = spec or SCENARIOS[DEFAULT_SCENARIO].spec
    matrix: dict[str, dict[str, str | None]] = {}
    for name in BACKENDS:
        try:
            backend = get_backend(name)
        except Exception as exc:  # a backend whose packages fail to import is listed, not fatal
            matrix[name] = {m: f"backend unavailable: {type(exc).__name__}: {exc}" for m in METHODS}
            continue
        matrix[name] = {m: backend.unsupported_reason(spec, m, settings) for m in METHODS}
    return matrix


def describe() -> str:
    lines = ["Scenarios (built-in, with known truth):"]
    for name, scenario in SCENARIOS.items():
        mark = " (default)" if name == DEFAULT_SCENARIO else ""
        spec = scenario.spec
        lines.append(f"  {name:<13} N={scenario.N:<7} K={spec.K} D={spec.D}  {scenario.description}{mark}")
    lines.append("  or --data FILE.csv: your own data (no truth; scored against its reference posterior, made "
                 "once and cached: the posterior's modes, each sampled by NUTS and weighted by its mass; "
                 "mixbench reference)")
    lines.append("  or a point of the scenario family lines, e.g. lines-K2-D1-sep2-wmin0.5-sr1 "
                 "(mixbench sweep varies its axes: K, D, sep, w_min, sigma_ratio, N)")

    lines.append("")
    lines.append("Engines found on this machine:")
    if cmdstan_path():
        lines.append(f"  CmdStan {cmdstan_version()} at {cmdstan_path()} (stan backend uses cmdstanpy)")
    else:
        lines.append("  CmdStan: not found (stan backend uses pystan: NUTS only)")
        lines.append("    Install it for Stan's ADVI, Pathfinder, MAP and Laplace (and CmdStan's NUTS):")
        lines.append("    python -m cmdstanpy.install_cmdstan   (or set CMDSTAN to an existing install)")
    lines.append(f"  pystan's Stan: {pystan_stan_version() or 'not found'}")

    lines.append("")
    lines.append(f"Methods by backend, for the default scenario's spec ({DEFAULT_SCENARIO}):")
    matrix = support_matrix()
    width = max(len(m) for m in METHODS)
    for backend, methods in matrix.items():
        lines.append(f"  {backend}:")
        for method, reason in methods.items():
            if reason is not None and NO_CMDSTAN in reason:
                reason = "needs CmdStan (not found here; see Engines above)"  # said once, above
            lines.append(f"    {method:<{width}}  {'yes' if reason is None else 'no: ' + reason}")
    return "\n".join(lines)
