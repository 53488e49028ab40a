"""The two optional pre-training objectives of the related systems (notes §5), next to MOSMOS' own.

``--objective organ-grounded`` (CT-GLIP): organ-level contrast. The encoder's features are
average-pooled inside each organ's mask, the report's sentences that name that organ form its text,
and an InfoNCE over the organ-level pairs of the batch aligns the two. The abnormality dictionary
adds, per organ pair, phrases describing the SAME organ in the OPPOSITE state as extra negatives,
so the organ embedding has to carry the finding, not only the organ's identity.

``--objective negative-free`` (GTGM): two augmented views of the same volume; a Barlow-Twins
redundancy-reduction loss between their projections (no negatives, hence no false negatives among
look-alike scans), plus both views contrasted with the (report or generated) text.

Choices (why):
- Pooling uses EVERY encoder stage (concatenated masked means), not only the deepest: a kidney at
  stride 16 of a 64^3 patch is a handful of voxels, while stage 0 sees it whole. The mask is
  area-downsampled (adaptive average pooling) to each stage, so partially covered voxels weigh less.
- Organ pairs whose texts are identical strings (two scans' "the liver is normal") are not each
  other's negatives: their logits are masked, as a false negative would otherwise punish agreement.
- The organ loss is computed per process (no cross-GPU gather): the number of organ pairs varies
  per rank, and a batch holds several organs per scan, which already gives many negatives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: an organ takes part in a patch's organ-level loss only with at least this many mask voxels
MIN_ORGAN_VOXELS = 8


def masked_stage_means(skips: list[torch.Tensor], masks: torch.Tensor, items: list[tuple]) -> torch.Tensor:
    """Per item ``(batch index, label values)``: the concatenation over stages of the features'
    mean inside the region of those label values, ``(len(items), sum of stage channels)``."""
    pooled = []
    for b, values in items:
        values = torch.as_tensor(values, device=masks.device).reshape(-1)
        region = torch.isin(masks[b], values).to(skips[0].dtype)[None, None]
        parts = []
        for feat in skips:
            w = F.adaptive_avg_pool3d(region, feat.shape[2:]) if feat.ndim == 5 else \
                F.adaptive_avg_pool2d(region, feat.shape[2:])
            w = w[0, 0]
            parts.append((feat[b] * w).flatten(1).sum(-1) / w.sum().clamp_min(1e-6))
        pooled.append(torch.cat(parts))
    return torch.stack(pooled)


class OrganGroundedLoss(nn.Module):
    """InfoNCE over organ-level (pooled image, sentence) pairs + dictionary negatives per pair.

    ``organ`` (M x D) and ``text`` (M x D) are normalised; ``negatives`` (M x K x D) normalised
    phrases of the opposite state; ``texts`` the organ texts (to mask identical-text false negatives).
    """

    def forward(self, organ: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor | None,
                texts: list[str], logit_scale: torch.Tensor) -> torch.Tensor:
        m = organ.shape[0]
        logits = logit_scale * organ.float() @ text.float().T
        same = torch.tensor([[a == b and i != j for j, b in enumerate(texts)] for i, a in enumerate(texts)],
                            device=logits.device)
        logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(m, device=logits.device)
        per_text = F.cross_entropy(logits.T, labels)
        if negatives is not None and negatives.shape[1]:
            extra = logit_scale * torch.einsum("md,mkd->mk", organ.float(), negatives.float())
            logits = torch.cat([logits, extra], dim=1)
        return (F.cross_entropy(logits, labels) + per_text) / 2


class BarlowTwinsLoss(nn.Module):
    """GTGM's negative-free term: ``sum_i (1 - C_ii)^2 + off_diagonal_weight * sum_{i!=j} C_ij^2``, halved,
    with ``C`` the cross-correlation of the batch-standardised projections of the two views."""

    def __init__(self, off_diagonal_weight: float = 0.0051):
        super().__init__()
        self.off_diagonal_weight = off_diagonal_weight

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        n = z1.shape[0]
        z1 = (z1.float() - z1.float().mean(0)) / z1.float().std(0).clamp_min(1e-6)
        z2 = (z2.float() - z2.float().mean(0)) / z2.float().std(0).clamp_min(1e-6)
        c = z1.T @ z2 / n
        on = (torch.diagonal(c) - 1).pow(2).sum()
        off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return (on + self.off_diagonal_weight * off) / 2


def projector(in_dim: int, hidden: int = 512, out: int = 512) -> nn.Sequential:
    """GTGM's projection head shape (Linear-BN-ReLU-Linear-BN without affine), narrower."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out), nn.BatchNorm1d(out, affine=False))


__all__ = ["BarlowTwinsLoss", "MIN_ORGAN_VOXELS", "OrganGroundedLoss", "masked_stage_means", "projector"]
