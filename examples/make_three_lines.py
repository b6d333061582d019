"""Write examples/three-lines.csv: 600 points from three lines in two covariates.

    uv run python examples/make_three_lines.py

The points come from mixbench's "three-lines" scenario (models/scenarios.py: intercepts 1, -1, 0;
slopes (2, 0.5), (-1, 1), (0, -2); noise sd 0.1, 0.2, 0.15; weights 0.3, 0.3, 0.4), data seed 1.
The file carries no truth: fitted with --data, mixbench scores each fit against a reference point
taken from the fit, as it would a user's own data.
"""

from pathlib import Path

import pandas as pd

from models.scenarios import get_scenario

N, DATA_SEED = 600, 1


def main() -> Path:
    dataset = get_scenario("three-lines").simulate(DATA_SEED, N=N)
    frame = pd.DataFrame({"x1": dataset.x[:, 0], "x2": dataset.x[:, 1], "y": dataset.y})
    path = Path(__file__).with_name("three-lines.csv")
    frame.to_csv(path, index=False, float_format="%.4f")
    return path


if __name__ == "__main__":
    print(main())
