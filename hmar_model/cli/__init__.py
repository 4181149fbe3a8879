"""Command-line entry points (hmar-bench, hmar-plot, hmar-sample, hmar-edit, hmar-eval)."""
