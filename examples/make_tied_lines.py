"""Write examples/tied-lines.csv: two lines in one covariate, with 9 tied readings.

    uv run python examples/make_tied_lines.py

Two lines in x uniform on (-1, 1): 60 points of y = 1 + 1.5 x and 12 of the flat y = -1, noise sd
0.3, recorded to 0.01; 9 of the flat line's readings are repeated measurements at x = 0.5 that a
device returned as one value, -1.005 (off the 0.01 grid, so exactly 9 are tied). With tied y the mixture
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

N_A, N_B, N_TIES, SEED = 60, 12, 9, 0


def main() -> Path:
    rng = np.random.default_rng(SEED)
    x = rng.uniform(-1.0, 1.0, N_A + N_B)
    y = np.r_[1.0 + 1.5 * x[:N_A], np.full(N_B, -1.0)] + rng.normal(0.0, 0.3, x.size)
    y = y.round(2)
    x[N_A:N_A + N_TIES], y[N_A:N_A + N_TIES] = 0.5, -1.005
    frame = pd.DataFrame({"x": x.round(2), "y": y})
    path = Path(__file__).with_name("tied-lines.csv")
    frame.to_csv(path, index=False, float_format="%.3f")
    return path


if __name__ == "__main__":
    print(main())
