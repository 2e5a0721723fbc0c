"""Benchmarks for the committed results: ``python tools/bench.py [varrt bench options]``.

Runs ``varrt bench`` (runtime/bench.py) and writes JSON, markdown and plots into
benchmarks/results/. The commands behind the committed files are listed in benchmarks/README.md.
"""

import sys

from varrt.runtime.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
