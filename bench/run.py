"""`make bench` entry point. The benchmark suite lands with the benchmarks issue; until then it says so."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    print("bench: no benchmarks yet (see the benchmarks issue)", file=sys.stderr)
    sys.exit(1)
