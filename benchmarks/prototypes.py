"""Design alternatives that ``--prototypes`` of the overhead benchmark times against plain nnU-Net.

Trainer subclasses only, so the shipped trainers stay untouched: cached tag embeddings (no
text-encoder pass per step), a small tag decoder, injection at the low-resolution stages only
(:func:`restrict_injection` replaces ``TagBranch.inject`` on one network), and the three together.
See docs/benchmarks.md, "Overhead". Part of the uninstalled harness (see :mod:`benchmarks`).
"""
from __future__ import annotations

import functools
import math


@functools.lru_cache(maxsize=None)
def prototype_classes() -> dict:
    """Design alternatives measured by ``--prototypes``; subclasses only, the shipped code is untouched."""
    from nnunet_mosmos.training import nnUNetTrainerMOSMOS

    class BenchMOSMOS_cachedEmbeddings(nnUNetTrainerMOSMOS):
        """No text-encoder pass per step: the cached tag embeddings (the `_frozenPrompt` variant), and
        the text encoder released once they are cached (nothing needs it again: the context is fixed)."""
        train_prompt_context = False

        def initialize(self):
            super().initialize()
            self.text_encoder = None  # refresh_tag_embeddings() is a no-op without it

    class BenchMOSMOS_smallTagDecoder(nnUNetTrainerMOSMOS):
        """One tag-decoder layer, d_model 128, FFN 512."""
        tag_decoder_kwargs = dict(d_model=128, num_heads=4, num_layers=1, ffn_dim=512, dropout=0.1,
                                  self_attention=True)

    class BenchMOSMOS_injectLowRes(nnUNetTrainerMOSMOS):
        """Inject the maps only at the branch stage and the one above it (no full-resolution convs)."""

        @classmethod
        def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            net = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
            restrict_injection(net, keep=2)
            return net

    class BenchMOSMOS_lean(BenchMOSMOS_cachedEmbeddings, BenchMOSMOS_injectLowRes):
        """The three above together."""
        tag_decoder_kwargs = BenchMOSMOS_smallTagDecoder.tag_decoder_kwargs

    return {c.__name__: c for c in (BenchMOSMOS_cachedEmbeddings, BenchMOSMOS_smallTagDecoder,
                                    BenchMOSMOS_injectLowRes, BenchMOSMOS_lean)}


PROTOTYPES = {"cached_embeddings": "BenchMOSMOS_cachedEmbeddings",
              "small_tag_decoder": "BenchMOSMOS_smallTagDecoder",
              "inject_low_res": "BenchMOSMOS_injectLowRes",
              "lean": "BenchMOSMOS_lean"}


def restrict_injection(net, keep: int) -> None:
    """Prototype: skip the injection convs of all but the ``keep`` lowest-resolution stages <= branch stage."""
    import types

    import torch.nn.functional as F

    branch = net.tag_branch
    first = max(0, branch.config.stage + 1 - keep)

    def inject(self, skips, attention):
        grid = attention.shape[2:]
        feed = attention * math.prod(grid)
        mode = "trilinear" if feed.ndim == 5 else "bilinear"
        skips = list(skips)
        for j in range(first, len(self.injections)):
            size = skips[j].shape[2:]
            maps = feed if tuple(size) == tuple(grid) else F.interpolate(feed, size=size, mode=mode,
                                                                          align_corners=False)
            skips[j] = skips[j] + self.injections[j](maps.to(skips[j].dtype))
        return skips

    for j in range(first):  # unused convs: frozen, so they get no gradient (optimizer, clipping skip them)
        branch.injections[j].requires_grad_(False)
    branch.inject = types.MethodType(inject, branch)
