#!/usr/bin/env python
"""Benefit study: plain nnU-Net vs MOSMOS (scratch, pre-trained, lambda sweep, no aligning loss).

    python scripts/bench_benefit.py --quick -o /tmp/bb_quick             # CI size, ~2 min on 2 CPU cores
    python scripts/bench_benefit.py -o /tmp/benefit --plot --jobs 2      # the documented 2d study

Re-running the same command resumes (finished runs are kept). Logic: ``benchmarks/benefit.py``;
results and the method: docs/benchmarks.md, "Benefit study".
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benefit import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
