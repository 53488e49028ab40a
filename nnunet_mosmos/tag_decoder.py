"""Query2Label-style tag decoder: tag embeddings ask "where am I?" of the visual feature tokens.

Each layer is self-attention among the tag queries, cross-attention from queries to the visual
tokens, and a feed-forward block (post-norm, as in Query2Label). The cross-attention of the last
layer, averaged over heads, *is* the pixel-tag attention map: for tag k a softmax over all spatial
positions (each map sums to 1). The per-tag presence logit comes from a classifier shared by all
tags, so a new (open-set) tag needs no new weights.

The decoder is dimension-agnostic: visual features are flattened to tokens and projected with a
Linear layer, and the positional encoding is a fixed sin/cos code of normalised (z, y, x)
coordinates where a 2D map is the middle slice (z = 0.5). A decoder pre-trained on 2D images
therefore runs unchanged on 3D feature maps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Tag-decoder sizes, the one source for both stages (pre-training and fine-tuning build the same
#: decoder so its weights move without renaming). "full": the Query2Label sizes the project started
#: with; "lean": the small decoder of the overhead study (docs/benchmarks.md), 0.37 M instead of
#: 2.41 M parameters. The default is "lean": in the CHAOS study (docs/benchmarks.md, "Benefit study on
#: real data") the lean branch's Dice was within the seed spread of the full one at both label counts
#: (+0.046 ± 0.057 with 2 labels, -0.039 ± 0.046 with 1), at a fraction of the cost.
DECODER_PRESETS = {
    "full": dict(d_model=256, num_heads=8, num_layers=2, ffn_dim=1024, dropout=0.1, self_attention=True),
    "lean": dict(d_model=128, num_heads=4, num_layers=1, ffn_dim=512, dropout=0.1, self_attention=True),
}
DEFAULT_DECODER_PRESET = "lean"


def decoder_preset(name: str) -> dict:
    """A copy of the named preset's kwargs; a clear error for an unknown name."""
    if name not in DECODER_PRESETS:
        raise ValueError(f"unknown tag-decoder preset {name!r}; choose one of {sorted(DECODER_PRESETS)}")
    return dict(DECODER_PRESETS[name])


def position_encoding(spatial_shape, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed ``(N, dim)`` sin/cos code of normalised coordinates for a 2D or 3D grid (N = prod(shape)).

    Recomputed per call (N x dim trig ops, negligible) rather than cached, so that torch.compile
    traces it as constants without a graph break.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    n_freq = dim // 6  # sin+cos for each of three axes
    freqs = 1.0 / (100.0 ** (torch.arange(n_freq, device=device, dtype=torch.float32) / max(n_freq, 1)))
    shape3 = (1,) * (3 - len(spatial_shape)) + spatial_shape
    axes = [(torch.arange(s, device=device, dtype=torch.float32) + 0.5) / s for s in shape3]
    if len(spatial_shape) == 2:
        axes[0] = torch.full((1,), 0.5, device=device)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # N x 3
    angles = grid[:, :, None] * freqs[None, None, :] * (2 * math.pi * 16)  # N x 3 x F
    code = torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(grid.shape[0], -1)
    return F.pad(code, (0, dim - code.shape[1])).to(dtype or torch.float32)


def rescaled_maps(attention: torch.Tensor, size=None) -> torch.Tensor:
    """Attention maps ``B x K x *grid`` (each sums to 1) as mean-1 maps, optionally resized to ``size``.

    Multiplying by the number of positions makes uniform attention 1 everywhere, so what the U-Net
    is fed (and what people look at) does not depend on the patch size. Resizing is bilinear /
    trilinear with ``align_corners=False``. The network's injection, the attention export and the
    zero-shot maps all use this one function.
    """
    grid = tuple(attention.shape[2:])
    maps = attention * math.prod(grid)
    if size is None or tuple(size) == grid:
        return maps
    return F.interpolate(maps, size=tuple(size), mode="trilinear" if maps.ndim == 5 else "bilinear",
                         align_corners=False)


@dataclass
class TagDecoderOutput:
    logits: torch.Tensor      # B x K  tag presence logits
    attention: torch.Tensor   # B x K x *spatial  pixel-tag attention (each map sums to 1)


class TagDecoderLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, self_attention: bool):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True) \
            if self_attention else None
        self.norm_self = nn.LayerNorm(d_model) if self_attention else None
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm_cross = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model))
        self.norm_ffn = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, queries, memory, pos):
        """queries B x K x d, memory B x N x d, pos N x d -> (queries, attention B x heads x K x N)."""
        if self.self_attn is not None:
            q = self.self_attn(queries, queries, queries, need_weights=False)[0]
            queries = self.norm_self(queries + self.dropout(q))
        q = self._heads(self.q_proj(queries))
        k = self._heads(self.k_proj(memory + pos))
        v = self._heads(self.v_proj(memory))
        # explicit attention (not SDPA) because the probabilities themselves are an output
        attn = torch.softmax((q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5), dim=-1)
        out = (self.dropout(attn) @ v).transpose(1, 2).reshape(queries.shape)
        queries = self.norm_cross(queries + self.dropout(self.out_proj(out)))
        queries = self.norm_ffn(queries + self.dropout(self.ffn(queries)))
        return queries, attn


class TagDecoder(nn.Module):
    """Tag queries (from text embeddings) over visual tokens -> tag logits + pixel-tag attention maps.

    Args:
        visual_channels: channels of the encoder stage the decoder reads.
        text_dim: width of the text encoder's embeddings (the tag embeddings).
        d_model, num_heads, num_layers, ffn_dim, dropout: transformer sizes.
        self_attention: Query2Label keeps self-attention among queries; RAM drops it.
    """

    def __init__(self, visual_channels: int, text_dim: int,
                 d_model: int = DECODER_PRESETS[DEFAULT_DECODER_PRESET]["d_model"],
                 num_heads: int = DECODER_PRESETS[DEFAULT_DECODER_PRESET]["num_heads"],
                 num_layers: int = DECODER_PRESETS[DEFAULT_DECODER_PRESET]["num_layers"],
                 ffn_dim: int = DECODER_PRESETS[DEFAULT_DECODER_PRESET]["ffn_dim"],
                 dropout: float = DECODER_PRESETS[DEFAULT_DECODER_PRESET]["dropout"],
                 self_attention: bool = DECODER_PRESETS[DEFAULT_DECODER_PRESET]["self_attention"]):
        super().__init__()
        self.config = dict(visual_channels=visual_channels, text_dim=text_dim, d_model=d_model,
                           num_heads=num_heads, num_layers=num_layers, ffn_dim=ffn_dim, dropout=dropout,
                           self_attention=self_attention)
        self.d_model = d_model
        self.visual_proj = nn.Linear(visual_channels, d_model)
        self.visual_norm = nn.LayerNorm(d_model)
        self.query_proj = nn.Sequential(nn.Linear(text_dim, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.layers = nn.ModuleList(TagDecoderLayer(d_model, num_heads, ffn_dim, dropout, self_attention)
                                    for _ in range(num_layers))
        self.classifier = nn.Linear(d_model, 1)

    def forward(self, features: torch.Tensor, tag_embeddings: torch.Tensor) -> TagDecoderOutput:
        """features B x C x *spatial (2D or 3D); tag_embeddings K x text_dim or B x K x text_dim."""
        b, spatial = features.shape[0], features.shape[2:]
        memory = self.visual_norm(self.visual_proj(features.flatten(2).transpose(1, 2)))
        pos = position_encoding(spatial, self.d_model, features.device, memory.dtype)
        queries = self.query_proj(tag_embeddings.to(memory.dtype))
        if queries.ndim == 2:
            queries = queries.unsqueeze(0).expand(b, -1, -1)
        attn = None
        for layer in self.layers:
            queries, attn = layer(queries, memory, pos)
        logits = self.classifier(queries).squeeze(-1)
        attention = attn.mean(1).reshape(b, queries.shape[1], *spatial)
        return TagDecoderOutput(logits=logits, attention=attention)
