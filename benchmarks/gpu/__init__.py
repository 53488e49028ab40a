"""The GPU kit: the device checks of docs/benchmarks.md in one command (``scripts/gpu_kit.sh``).

* :mod:`.kit` runs the steps (overhead and pre-training benchmarks at real sizes with autocast and
  ``torch.compile``, a short ``nnUNetv2_train`` / ``nnUNetv2_predict`` run) inside a time budget;
* :mod:`.e2e` is that nnU-Net run; :mod:`.text_model` builds a random text encoder of
  all-MiniLM-L6-v2's shape on the device (nothing to carry);
* :mod:`.bundle` builds and size-checks the wheels the device lacks.

``scripts/gpu_kit.sh --dry-run OUT`` runs the same steps at tiny sizes on CPU (the test suite does).
"""
