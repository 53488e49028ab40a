"""The MOSMOS segmentation network: nnU-Net's U-Net plus the pixel-tag attention branch.

Layout of the state dict (why it looks like this):
- ``encoder.*`` / ``decoder.*`` are nnU-Net's own modules under nnU-Net's names, so plain
  nnU-Net / nnssl encoder weights map key-for-key.
- ``tag_branch.*`` holds everything new: the tag decoder, the shared prompt context, the zero-
  initialised injection convs, and the cached tag embeddings (a persistent buffer). Prediction
  rebuilds this network from plans alone and loads the state dict strictly; no text model needed.

The branch reads one encoder stage (default: in-plane stride closest to 16), produces one
attention map per segmentation class, and adds ``conv1x1(maps)`` to every skip connection at or
above that resolution. The convs start at zero, so an untrained branch leaves nnU-Net's output
bit-for-bit unchanged and the branch earns its influence during training.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mosmos.tag_decoder import TagDecoder
from nnunet_mosmos.text import PromptContext


@dataclass
class TagBranchConfig:
    """Hyper-parameters of the tag branch; stored in plans.json so inference can rebuild it."""
    num_tags: int
    text_dim: int
    stage: int
    d_model: int = 256
    num_heads: int = 8
    num_layers: int = 2
    ffn_dim: int = 1024
    dropout: float = 0.1
    self_attention: bool = True
    n_ctx: int = 4

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
        self.decoder = TagDecoder(stage_channels[config.stage], config.text_dim, config.d_model,
                                  config.num_heads, config.num_layers, config.ffn_dim, config.dropout,
                                  config.self_attention)
        self.prompt = PromptContext(config.n_ctx, config.text_dim)
        self.injections = nn.ModuleList(conv_op(config.num_tags, stage_channels[j], 1)
                                        for j in range(config.stage + 1))
        for conv in self.injections:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.register_buffer("tag_embeddings", torch.zeros(config.num_tags, config.text_dim), persistent=True)

    def inject(self, skips: list, attention: torch.Tensor) -> list:
        """Add each stage's projection of the (mean-1 rescaled) maps to the skips at/above the branch."""
        grid = attention.shape[2:]
        feed = attention * math.prod(grid)  # uniform attention -> 1 everywhere
        mode = "trilinear" if feed.ndim == 5 else "bilinear"
        skips = list(skips)
        for j, conv in enumerate(self.injections):
            size = skips[j].shape[2:]
            maps = feed if tuple(size) == tuple(grid) else F.interpolate(feed, size=size, mode=mode,
                                                                          align_corners=False)
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

    def forward(self, x: torch.Tensor, tag_embeddings: torch.Tensor | None = None):
        """``tag_embeddings`` (K x text_dim) overrides the cached buffer (used while the prompt
        context trains); prediction calls ``forward(x)`` and gets the logits tensor only."""
        skips = self.encoder(x)
        emb = self.tag_branch.tag_embeddings if tag_embeddings is None else tag_embeddings
        tags = self.tag_branch.decoder(skips[self.branch_config.stage], emb)
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
