"""Design alternatives that ``--prototypes`` of the overhead benchmark times against plain nnU-Net.

Each one changes one class attribute of :class:`nnUNetTrainerMOSMOS_full` (the full branch, the
default until the CHAOS study; nnU-Net's variant style) and nothing else: no shipped module is
patched. The three changes together are the shipped ``nnUNetTrainerMOSMOS_lean`` (= the default
``nnUNetTrainerMOSMOS`` today), timed as that class. Run the benchmark with ``--trainer
nnUNetTrainerMOSMOS_full`` so that its "mosmos" baseline is the branch the prototypes start from.
See docs/benchmarks.md, "Overhead". Part of the uninstalled harness (see :mod:`benchmarks`).
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def prototype_classes() -> dict:
    """The prototypes that are not shipped trainers: one class attribute of the full branch each."""
    from nnunet_mosmos.tag_decoder import decoder_preset
    from nnunet_mosmos.training import nnUNetTrainerMOSMOS_full

    class BenchMOSMOS_cachedEmbeddings(nnUNetTrainerMOSMOS_full):
        """Prompt context frozen: tag embeddings cached once, text encoder released."""
        train_prompt_context = False

    class BenchMOSMOS_smallTagDecoder(nnUNetTrainerMOSMOS_full):
        """The lean tag decoder (1 layer, d_model 128, FFN 512), everything else as the full branch."""
        tag_decoder_kwargs = decoder_preset("lean")

    class BenchMOSMOS_injectLowRes(nnUNetTrainerMOSMOS_full):
        """Maps injected only at the branch stage and the one above it (no full-resolution convs)."""
        tag_injection_levels = 2

    return {c.__name__: c for c in (BenchMOSMOS_cachedEmbeddings, BenchMOSMOS_smallTagDecoder,
                                    BenchMOSMOS_injectLowRes)}


#: ``--prototypes``: JSON name -> trainer class (a prototype above, or a shipped trainer)
PROTOTYPES = {"cached_embeddings": "BenchMOSMOS_cachedEmbeddings",
              "small_tag_decoder": "BenchMOSMOS_smallTagDecoder",
              "inject_low_res": "BenchMOSMOS_injectLowRes",
              "lean": "nnUNetTrainerMOSMOS_lean"}
