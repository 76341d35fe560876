#!/usr/bin/env python
"""Inference cost per noise sample: a thin wrapper over `rrcm bench cost` (see src/rrcm/bench_cost.py).

Runs the command with the glibc malloc settings `rrcm certify` uses (GLIBC_TUNABLES raising the
mmap/trim thresholds to 4 GiB, set by re-executing this script once, as the CLI does), so the
measured times are those certification would see. All options are `rrcm bench cost`'s:

    python benchmarks/inference_cost.py                          # paper-scale counts only (seconds)
    python benchmarks/inference_cost.py --time-paper --json out.json   # + timing (~10 min on 2 cores)
    python benchmarks/inference_cost.py --no-paper --small --batch-size 1000
    python benchmarks/inference_cost.py --no-paper --checkpoint rrcm=runs/x/model.safetensors
"""

from __future__ import annotations

import os
import sys

from rrcm.cli import main as rrcm_main, reexec_with_malloc_tunables


def main() -> int:
    reexec_with_malloc_tunables([sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    return rrcm_main(["bench", "cost", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
