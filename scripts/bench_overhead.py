#!/usr/bin/env python
"""Overhead of MOSMOS over plain nnU-Net (training step, inference, peak memory), identical plans.

    python scripts/bench_overhead.py --quick                      # smoke run, < 60 s on 2 CPU cores
    python scripts/bench_overhead.py --no-mirroring               # synthetic 2d + 3d_fullres plans (memory: subprocesses)
    python scripts/bench_overhead.py --real-size --lean            # nnU-Net-sized plans; the shipped lean branch too
    python scripts/bench_overhead.py --plans $nnUNet_preprocessed/Dataset001_X/nnUNetPlans.json -c 3d_fullres
    python scripts/bench_overhead.py --device cuda --compile --real-size --lean   # the GPU kit's run

Prints JSON (see docs/benchmarks.md); the logic lives in ``benchmarks/overhead.py``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.overhead import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
