"""Losses of the tag branch: asymmetric multi-label loss and the pixel-tag aligning loss.

Short, testable classes in the style of open_clip's ``loss.py``. The contrastive (InfoNCE) loss
of pre-training lives in ``pretrain/`` because it needs the distributed gather.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al. 2021) for multi-label recognition, as used by Query2Label/RAM.

    Negatives are down-weighted by ``(p_m)^gamma_neg`` with a probability margin ``clip``, which
    matters because most tags are absent from most images. The focusing weights carry no gradient.
    ``reduction='mean'`` averages over all (sample, tag) pairs so the scale does not depend on K.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 eps: float = 1e-8, reduction: str = "mean"):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None):
        logits, targets = logits.float(), targets.float()
        p = torch.sigmoid(logits)
        p_neg = (1 - p + self.clip).clamp(max=1) if self.clip > 0 else 1 - p
        loss = targets * torch.log(p.clamp(min=self.eps)) + (1 - targets) * torch.log(p_neg.clamp(min=self.eps))
        with torch.no_grad():
            pt = p * targets + p_neg * (1 - targets)  # probability of the right answer
            gamma = self.gamma_pos * targets + self.gamma_neg * (1 - targets)
            focus = torch.pow(1 - pt, gamma)
        loss = -loss * focus
        if weight is not None:
            loss = loss * weight
        return loss.mean() if self.reduction == "mean" else loss.sum()


def class_area_fractions(target: torch.Tensor, num_classes: int, grid_shape, ignore_label: int | None = None):
    """Fraction of each map cell covered by each class: ``B x num_classes x *grid_shape``.

    ``target`` is nnU-Net's ``B x 1 x *spatial`` label tensor (float or int). When the patch is an
    exact multiple of the grid (always true for nnU-Net patches at an encoder stage) this is a
    scatter-add over voxels, which avoids materialising a full-resolution one-hot tensor.
    Voxels with the ignore label count for nothing.
    """
    labels = target[:, 0].long()
    spatial = labels.shape[1:]
    grid_shape = tuple(int(g) for g in grid_shape)
    b = labels.shape[0]
    if any(s % g for s, g in zip(spatial, grid_shape)):
        onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).movedim(-1, 1).float()
        if ignore_label is not None:
            onehot = onehot * (labels != ignore_label).unsqueeze(1)
        return F.interpolate(onehot, size=grid_shape, mode="area")
    cell = 0
    for axis, (s, g) in enumerate(zip(spatial, grid_shape)):
        idx = torch.arange(s, device=labels.device) // (s // g)
        cell = cell * g + idx.view(*([1] * axis), s, *([1] * (len(spatial) - axis - 1)))
    n_cells = int(torch.tensor(grid_shape).prod())
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_label is not None:
        valid &= labels != ignore_label
    flat = (labels.clamp(0, num_classes - 1) * n_cells + cell).reshape(b, -1)
    counts = torch.zeros(b, num_classes * n_cells, device=labels.device)
    counts.scatter_add_(1, flat, valid.reshape(b, -1).float())
    voxels_per_cell = float(torch.tensor(spatial).prod()) / n_cells
    return (counts / voxels_per_cell).view(b, num_classes, *grid_shape)


class PixelTagAligningLoss(nn.Module):
    """Aligns each class's pixel-tag attention map with that class's mask.

    For class k with attention ``A_k`` (softmax over positions, sums to 1) and mask area fractions
    ``Y_k`` at the map's resolution:

    * spatial term: ``KL(T_k || A_k)`` with ``T_k = Y_k / sum(Y_k)``, averaged over the (sample,
      class) pairs where the class is in the patch. Zero exactly when attention mass sits on the mask
      in proportion to its area; it falls as the map moves onto the mask.
    * presence term: asymmetric loss of the tag logits against "class is in this patch", which keeps
      the multi-label recognition of pre-training alive and gives absent classes a signal too.

    ``L_align = spatial + presence_weight * presence``; the trainer adds ``lambda * L_align`` to
    nnU-Net's Dice+CE. Only foreground classes (labels 1..K) have maps.
    """

    def __init__(self, presence_weight: float = 1.0, ignore_label: int | None = None, eps: float = 1e-8):
        super().__init__()
        self.presence_weight = presence_weight
        self.ignore_label = ignore_label
        self.eps = eps
        self.presence_loss = AsymmetricLoss()

    def forward(self, attention: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> dict:
        """attention B x K x *grid, logits B x K, target B x 1 x *spatial (labels 0..K)."""
        k = attention.shape[1]
        fractions = class_area_fractions(target, k + 1, attention.shape[2:], self.ignore_label)[:, 1:]
        mass = fractions.flatten(2).sum(-1)  # B x K
        present = mass > 0
        attn = attention.float().flatten(2)
        t = fractions.flatten(2) / mass.clamp_min(self.eps).unsqueeze(-1)
        kl = (t * (torch.log(t.clamp_min(self.eps)) - torch.log(attn.clamp_min(self.eps)))).sum(-1)
        spatial = (kl * present).sum() / present.sum().clamp_min(1)
        presence = self.presence_loss(logits, present.float())
        total = spatial + self.presence_weight * presence
        return {"loss": total, "spatial": spatial.detach(), "presence": presence.detach()}
