"""AdamW and its schedule: linear warm-up, then cosine to 0 (CLIP's recipe for a from-scratch encoder)."""
from __future__ import annotations

import math

import torch

GRAD_CLIP = 1.0


def lr_lambda(warmup: int, total: int):
    """Linear warm-up to the base LR over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def make_optimizer(model, lr: float, weight_decay: float, tag_decoder_lr: float | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW; no decay on biases, norms, the prompt context and the temperature (CLIP convention).

    ``tag_decoder_lr``: a peak learning rate of the tag decoder's own (the schedule scales every group
    alike). Why it exists: the tag decoder's parameters get only the tag loss's gradient, and AdamW
    divides each step by the parameter's own gradient scale, so ``--tag-weight`` hardly changes how far
    the decoder moves (measured: 1.14x as far at weight 10, docs/benchmarks.md); its learning rate does.
    None keeps the two groups of earlier runs (so their ``--resume`` still matches)."""
    groups = {(own, decay): [] for own in (False, True) for decay in (True, False)}  # the groups' order
    for name, p in model.named_parameters():
        if p.requires_grad:
            own = tag_decoder_lr is not None and name.startswith("tag_decoder.")
            groups[own, not (p.ndim < 2 or name in ("logit_scale", "prompt.ctx"))].append(p)
    return torch.optim.AdamW([{"params": params, "weight_decay": weight_decay if decay else 0.0,
                               **({"lr": tag_decoder_lr} if own else {})}
                              for (own, decay), params in groups.items() if params or not own],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6, foreach=True)


__all__ = ["GRAD_CLIP", "lr_lambda", "make_optimizer"]
