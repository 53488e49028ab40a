#!/usr/bin/env python
"""Pre-training throughput (pairs/s) of mosmos-pretrain's train step vs the image encoder alone.

    python scripts/bench_pretrain.py --quick                         # smoke run, seconds on CPU
    python scripts/bench_pretrain.py --json out.json --plot docs/bench_pretrain.png   # batch {8,16,32} x {64,128,256}
    python scripts/bench_pretrain.py --batch-size 16 --image-size 128 --image-size 192 96
    python scripts/bench_pretrain.py -d 901 -c 2d                    # the encoder of a dataset's plans
    python scripts/bench_pretrain.py --dim 3 --image-size 32 64 64   # 3D patches
    python scripts/bench_pretrain.py --device cuda --amp --compile --batch-size 32 64 128
    python scripts/bench_pretrain.py --real-size [--dim 3]       # 512x512 at batch 12 (128^3 at batch 2)
    python scripts/bench_pretrain.py --no-isolate-memory         # skip the memory subprocesses (CPU)

Prints JSON (see docs/benchmarks.md); the logic lives in ``benchmarks/pretrain_throughput.py``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pretrain_throughput import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
