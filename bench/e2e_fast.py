"""Thin entry of the end-to-end benchmark (kept for existing commands): ``hmar_bench.e2e``, also run by
``hmar-bench --e2e``."""
import sys

from hmar_bench.e2e import main

if __name__ == "__main__":
    sys.exit(main())
