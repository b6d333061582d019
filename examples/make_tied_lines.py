"""Write examples/tied-lines.csv: two lines in one covariate, with 9 tied readings.

    uv run python examples/make_tied_lines.py

80 points from two lines (y = 1 + 1.5 x and y = -1 - x, noise sd 0.3, x uniform on (-1, 1),
40 each, recorded to 0.01) and 9 repeated readings at x = 0.5, y = 1.755 (a device read 9 times
that returned one value; off the 0.01 grid, so exactly 9 are tied). With tied y the mixture
likelihood is unbounded: a component through the ties with sigma -> 0 grows like sigma^-9, and
under a sigma prior with positive density at 0 (the default Uniform(0, 1)) the posterior is
improper. Fitted with

    uv run mixbench run --data examples/tied-lines.csv --intercept --sigma per-component \\
        --methods nuts,map --out results/tied

mixbench flags such a fit ``degenerate-component``; ``--sigma-prior invgamma:3,1`` (a prior
that vanishes faster than any power of sigma at 0) makes the posterior proper again.
"""

from pathlib import Path

import numpy as np
import pandas as pd

N_PER_LINE, N_TIES, SEED = 40, 9, 0


def main() -> Path:
    rng = np.random.default_rng(SEED)
    x = rng.uniform(-1.0, 1.0, 2 * N_PER_LINE)
    line = np.repeat([0, 1], N_PER_LINE)
    y = np.where(line == 0, 1.0 + 1.5 * x, -1.0 - x) + rng.normal(0.0, 0.3, x.size)
    frame = pd.DataFrame({"x": np.r_[x.round(2), np.full(N_TIES, 0.5)],
                          "y": np.r_[y.round(2), np.full(N_TIES, 1.755)]})
    path = Path(__file__).with_name("tied-lines.csv")
    frame.to_csv(path, index=False, float_format="%.3f")
    return path


if __name__ == "__main__":
    print(main())
