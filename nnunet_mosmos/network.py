"""The MOSMOS segmentation network: nnU-Net's U-Net plus the pixel-tag attention branch.

Layout of the state dict (why it looks like this):
- ``encoder.*`` / ``decoder.*`` are nnU-Net's own modules under nnU-Net's names, so plain
  nnU-Net / nnssl encoder weights map key-for-key.
- ``tag_branch.*`` holds everything new: the tag decoder, the shared prompt context, the zero-
  initialised injection convs, and the cached tag embeddings (a persistent buffer). Prediction
  rebuilds this network from plans alone and loads the state dict strictly; no text model needed.

The branch reads one encoder stage (default: in-plane stride closest to 16), produces one
attention map per segmentation class, and adds ``conv1x1(maps)`` to the skip connections at or
above that resolution: all of them by default, or only the ``inject_levels`` lowest-resolution ones
(the lean branch: no full-resolution interpolation, which is most of the branch's cost in 3D; the
U-Net decoder still carries the injected features up through its own upsampling path). The convs
start at zero, so an untrained branch leaves nnU-Net's output bit-for-bit unchanged and the branch
earns its influence during training.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
from torch import nn

from nnunet_mosmos.tag_decoder import DECODER_PRESETS, DEFAULT_DECODER_PRESET, TagDecoder, TagDecoderOutput, rescaled_maps
from nnunet_mosmos.text import DEFAULT_N_CTX, PromptContext

_DEFAULT = DECODER_PRESETS[DEFAULT_DECODER_PRESET]  # the trainer's default too (one source)
#: the block of a configuration in plans.json that carries the branch to prediction (the trainer writes it)
PLANS_KEY = "mosmos_tag_branch"


@dataclass
class TagBranchConfig:
    """Hyper-parameters of the tag branch; stored in plans.json so inference can rebuild it."""
    num_tags: int
    text_dim: int
    stage: int
    d_model: int = _DEFAULT["d_model"]
    num_heads: int = _DEFAULT["num_heads"]
    num_layers: int = _DEFAULT["num_layers"]
    ffn_dim: int = _DEFAULT["ffn_dim"]
    dropout: float = _DEFAULT["dropout"]
    self_attention: bool = _DEFAULT["self_attention"]
    n_ctx: int = DEFAULT_N_CTX
    #: inject into this many skips, the lowest-resolution first (branch stage, the one above, ...);
    #: None = every skip at or above the branch stage
    inject_levels: int | None = None

    def injected_stages(self) -> list[int]:
        """Encoder stages whose skips receive the maps, finest first."""
        first = 0 if self.inject_levels is None else max(0, self.stage + 1 - int(self.inject_levels))
        return list(range(first, self.stage + 1))

    def decoder_kwargs(self) -> dict:
        """The tag decoder's sizes (the keys of a DECODER_PRESETS entry)."""
        return {k: getattr(self, k) for k in _DEFAULT}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TagBranchConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class TrainingOutput(NamedTuple):
    """What the network returns while training: nnU-Net's output plus the branch's outputs."""
    seg: torch.Tensor | list
    tag_logits: torch.Tensor   # B x K
    attention: torch.Tensor    # B x K x *grid, each map sums to 1


class TagBranch(nn.Module):
    def __init__(self, config: TagBranchConfig, stage_channels: list[int], conv_op):
        super().__init__()
        self.config = config
        if config.inject_levels is not None and int(config.inject_levels) < 1:
            raise ValueError(f"inject_levels must be >= 1 (or None for every skip), got {config.inject_levels}")
        self.decoder = TagDecoder(stage_channels[config.stage], config.text_dim, **config.decoder_kwargs())
        self.prompt = PromptContext(config.n_ctx, config.text_dim)
        #: injections[i] serves encoder stage stages[i] (with every level: injections[j] <-> stage j)
        self.stages = config.injected_stages()
        self.injections = nn.ModuleList(conv_op(config.num_tags, stage_channels[j], 1) for j in self.stages)
        for conv in self.injections:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.register_buffer("tag_embeddings", torch.zeros(config.num_tags, config.text_dim), persistent=True)

    def inject(self, skips: list, attention: torch.Tensor) -> list:
        """Add each injected stage's projection of the (mean-1 rescaled) maps to its skip."""
        skips = list(skips)
        for j, conv in zip(self.stages, self.injections):
            maps = rescaled_maps(attention, skips[j].shape[2:])
            skips[j] = skips[j] + conv(maps.to(skips[j].dtype))
        return skips


class MOSMOSNetwork(nn.Module):
    """nnU-Net U-Net (``encoder``, ``decoder``) + ``tag_branch``. ``forward(x)`` returns logits in eval."""

    def __init__(self, unet: nn.Module, config: TagBranchConfig):
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        channels = list(self.encoder.output_channels)
        if not 0 <= config.stage < len(channels):
            raise ValueError(f"tag branch stage {config.stage} does not exist; the encoder has "
                             f"{len(channels)} stages (0..{len(channels) - 1})")
        self.tag_branch = TagBranch(config, channels, self.encoder.conv_op)

    @property
    def branch_config(self) -> TagBranchConfig:
        return self.tag_branch.config

    def tags(self, skips: list, tag_embeddings: torch.Tensor | None = None) -> TagDecoderOutput:
        """The tag decoder on the branch stage of the encoder's ``skips`` (cached embeddings by default)."""
        emb = self.tag_branch.tag_embeddings if tag_embeddings is None else tag_embeddings
        return self.tag_branch.decoder(skips[self.branch_config.stage], emb)

    def tag_maps(self, x: torch.Tensor, size=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tag logits B x K, mean-1 maps B x K x *size)`` for an input batch; ``size`` defaults to
        the input's spatial size. What the attention export shows is what the decoder is fed."""
        out = self.tags(self.encoder(x))
        return out.logits, rescaled_maps(out.attention, x.shape[2:] if size is None else size)

    def forward(self, x: torch.Tensor, tag_embeddings: torch.Tensor | None = None):
        """``tag_embeddings`` (K x text_dim) overrides the cached buffer (used while the prompt
        context trains); prediction calls ``forward(x)`` and gets the logits tensor only."""
        skips = self.encoder(x)
        tags = self.tags(skips, tag_embeddings)
        seg = self.decoder(self.tag_branch.inject(skips, tags.attention))
        if self.training:
            return TrainingOutput(seg, tags.logits, tags.attention)
        return seg


def build_mosmos_network(configuration_manager, num_input_channels: int, num_output_channels: int,
                         config: TagBranchConfig, deep_supervision: bool = True) -> MOSMOSNetwork:
    """nnU-Net's network for this configuration, wrapped with the tag branch."""
    from nnunet_mosmos.encoders import build_plain_network

    unet = build_plain_network(configuration_manager, num_input_channels, num_output_channels, deep_supervision)
    return MOSMOSNetwork(unet, config)
