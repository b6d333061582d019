"""The pytest-benchmark suite: fits over a grid (test_fits.py, options of ``mixbench run``),
gradient cost (test_gradient_cost.py) and cold / warm compiles (test_compile_cache.py)."""
