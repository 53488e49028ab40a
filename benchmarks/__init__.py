"""The measuring harness: overhead, pre-training throughput, benefit study, objective comparison.

This folder is our lab bench, NOT part of the package: ``pip install`` ships ``nnunet_mosmos`` and
``pretrain`` only (pyproject's ``packages.find``), so users get the plugin without it, the way
nnU-Net keeps its own benchmarking apart. It may import the packages; the packages never import it.

Run from the repository root, either as modules or through the thin scripts:

    python -m benchmarks.overhead --quick            python scripts/bench_overhead.py --quick
    python -m benchmarks.pretrain_throughput --quick python scripts/bench_pretrain.py --quick
    python -m benchmarks.benefit --quick -o /tmp/bb  python scripts/bench_benefit.py --quick -o /tmp/bb
    python -m benchmarks.objectives --quick -o /tmp/c python scripts/compare_objectives.py --quick -o /tmp/c

``study_trainers/`` is an ``nnUNet_extTrainer`` folder holding the benefit study's trainers; the
study adds it to the variable itself (:func:`benchmarks.study_trainers.ext_trainer_value`).
"""
