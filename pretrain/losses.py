"""Pre-training losses: symmetric InfoNCE (global image-report alignment) + ASL on the mined tags.

The contrastive loss needs negatives from every GPU, so features are gathered across DDP ranks
*with* gradient (``torch.distributed.nn.functional.all_gather``). That is the only place this
package talks to ``torch.distributed`` inside a loss: :func:`gather_with_grad`. Each rank scores
its own rows against all columns ("local loss", as open_clip does), and DDP's gradient averaging
then gives exactly the gradient of the full-batch loss.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nnunet_mosmos.losses import AsymmetricLoss


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(features of all ranks concatenated, this rank's index); identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # public, autograd-aware and correct; newer torch only renames it
        warnings.simplefilter("ignore", FutureWarning)
        gathered = all_gather(x)
    return torch.cat(gathered, dim=0), dist.get_rank()


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE: matched (image, report) pairs score above every other pairing in the batch."""

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        all_image, rank = gather_with_grad(image)
        all_text, _ = gather_with_grad(text)
        labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
        per_image = logit_scale * image.float() @ all_text.float().T
        per_text = logit_scale * text.float() @ all_image.float().T
        return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


#: the loss terms in logging order (history, progress.png); absent objectives log 0
TERMS = ("contrastive", "tag", "organ", "negative_free")


class PretrainLoss(nn.Module):
    """``contrastive_weight * InfoNCE + tag_weight * ASL`` (MOSMOS), plus, when their outputs are
    present, ``organ_weight * organ-grounded InfoNCE`` and ``negative_free_weight * Barlow Twins``
    (pretrain/objectives.py). With a second view, InfoNCE is the mean over both views (GTGM
    contrasts each view with the text). Returns the total and every term for logging."""

    def __init__(self, contrastive_weight: float = 1.0, tag_weight: float = 1.0, organ_weight: float = 1.0,
                 negative_free_weight: float = 0.01):
        super().__init__()
        from pretrain.objectives import BarlowTwinsLoss, OrganGroundedLoss

        self.contrastive_weight, self.tag_weight = contrastive_weight, tag_weight
        self.organ_weight, self.negative_free_weight = organ_weight, negative_free_weight
        self.contrastive = ContrastiveLoss()
        self.tag = AsymmetricLoss()
        self.organ = OrganGroundedLoss()
        self.barlow = BarlowTwinsLoss()

    def forward(self, out: dict, tags: torch.Tensor) -> dict:
        contrastive = self.contrastive(out["image"], out["text"], out["logit_scale"])
        if "image2" in out:
            contrastive = (contrastive + self.contrastive(out["image2"], out["text"], out["logit_scale"])) / 2
        tag = self.tag(out["tag_logits"], tags)
        loss = self.contrastive_weight * contrastive + self.tag_weight * tag
        terms = {"contrastive": contrastive.detach(), "tag": tag.detach()}
        zero = contrastive.detach() * 0
        terms["organ"] = terms["negative_free"] = zero
        if "organ" in out:
            organ = self.organ(out["organ"], out["organ_text"], out["organ_negatives"], out["organ_texts"],
                               out["logit_scale"])
            loss = loss + self.organ_weight * organ
            terms["organ"] = organ.detach()
        if "view1" in out:
            barlow = self.barlow(out["view1"], out["view2"])
            loss = loss + self.negative_free_weight * barlow
            terms["negative_free"] = barlow.detach()
        return {"loss": loss, **terms}
