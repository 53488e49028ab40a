#!/usr/bin/env python
"""Pre-training objectives compared on a low-label 3D task: MOSMOS vs + organ-grounded vs + negative-free.

    python scripts/compare_objectives.py --quick -o /tmp/cmp            # smoke run (CI size)
    python scripts/compare_objectives.py -o /tmp/cmp --json cmp.json    # the study of docs/pretraining.md

Prints JSON; the logic (and why it is a probe, not nnUNetv2_train) lives in ``benchmarks/objectives.py``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.objectives import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
