"""Running a benchmark: cells, the grid, the executors that run them, sweeps and stopping."""
