#!/usr/bin/env python
"""Inference cost per noise sample: a thin wrapper over `rrcm bench cost` (see rrcm/bench_cost.py).

Runs the command with the glibc malloc settings `rrcm certify` uses (GLIBC_TUNABLES raising the
mmap/trim thresholds to 4 GiB, set by re-executing this script once), so the measured times are
those certification would see. All options are `rrcm bench cost`'s:

    python benchmarks/inference_cost.py                          # paper-scale counts only (seconds)
    python benchmarks/inference_cost.py --time-paper --json out.json   # + timing (~10 min on 2 cores)
    python benchmarks/inference_cost.py --no-paper --small --batch-size 1000
    python benchmarks/inference_cost.py --no-paper --checkpoint rrcm=runs/x/model.safetensors
"""

from __future__ import annotations

import os
import sys

MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def main() -> int:
    if sys.platform == "linux" and "GLIBC_TUNABLES" not in os.environ and not os.environ.get("RRCM_NO_REEXEC"):
        env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
        try:
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
        except OSError:
            pass  # go on with the default malloc; the table notes it
    from rrcm.cli import main as rrcm_main

    return rrcm_main(["bench", "cost", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
