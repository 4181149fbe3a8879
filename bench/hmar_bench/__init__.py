"""Benchmarks of hmar_kernels: the timing harness (harness.py), the attention sweep and e2e rows (cli.py, the
``hmar-bench`` command) and the figures and README table made from the committed CSVs (plot.py, ``hmar-plot``).

Installed as the package ``hmar_bench`` from bench/hmar_bench/; the pytest-benchmark suites and device scripts
beside it in bench/ use it.
"""
