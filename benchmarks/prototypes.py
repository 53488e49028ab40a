"""Design alternatives that ``--prototypes`` of the overhead benchmark times against plain nnU-Net.

Each one changes one class attribute of :class:`nnUNetTrainerMOSMOS` (nnU-Net's variant style) and
nothing else: no shipped module is patched. Two of the first prototypes are shipped now, so they
are timed as the shipped classes: the cached tag embeddings are ``nnUNetTrainerMOSMOS_frozenPrompt``
(``train_prompt_context = False`` caches the embeddings once and releases the text encoder), and
the three changes together are ``nnUNetTrainerMOSMOS_lean``. The injection at the two
lowest-resolution stages is the shipped ``tag_injection_levels`` attribute
(``TagBranchConfig.inject_levels``). See docs/benchmarks.md, "Overhead". Part of the uninstalled
harness (see :mod:`benchmarks`).
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def prototype_classes() -> dict:
    """The prototypes that are not shipped trainers: one class attribute each."""
    from nnunet_mosmos.tag_decoder import decoder_preset
    from nnunet_mosmos.training import nnUNetTrainerMOSMOS

    class BenchMOSMOS_smallTagDecoder(nnUNetTrainerMOSMOS):
        """The lean tag decoder (1 layer, d_model 128, FFN 512), everything else as shipped."""
        tag_decoder_kwargs = decoder_preset("lean")

    class BenchMOSMOS_injectLowRes(nnUNetTrainerMOSMOS):
        """Maps injected only at the branch stage and the one above it (no full-resolution convs)."""
        tag_injection_levels = 2

    return {c.__name__: c for c in (BenchMOSMOS_smallTagDecoder, BenchMOSMOS_injectLowRes)}


#: ``--prototypes``: JSON name -> trainer class (a prototype above, or a shipped trainer)
PROTOTYPES = {"cached_embeddings": "nnUNetTrainerMOSMOS_frozenPrompt",
              "small_tag_decoder": "BenchMOSMOS_smallTagDecoder",
              "inject_low_res": "BenchMOSMOS_injectLowRes",
              "lean": "nnUNetTrainerMOSMOS_lean"}
