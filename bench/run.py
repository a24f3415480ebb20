"""Run the SCAR benchmarks from the command line, from any working directory.

    python bench/run.py table [--quick]
    python bench/run.py equal-error [--quick] [--responses N] [--rounds N] [--seeds N] [--max-minutes MIN]
                                    [--record PATH] [--plot PATH]
    python bench/run.py grid [--methods M1,M2] [--workloads SUBSTRING] [--out PATH] [--max-minutes MIN] [--rounds N]
    python bench/run.py markdown [--out PATH] > bench/RESULTS_grid.md
    python bench/run.py games [--quick] [--plot PATH]

The harness (``bench/scar_bench``) is not installed with the library: this script puts its own folder
first on ``sys.path`` and runs :func:`scar_bench.cli.main`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scar_bench.cli import main  # found through the path inserted above

if __name__ == "__main__":
    sys.exit(main())
