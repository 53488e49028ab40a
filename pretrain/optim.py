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


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no decay on biases, norms, the prompt context and the temperature (CLIP convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name in ("logit_scale", "prompt.ctx") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6,
                             foreach=True)


__all__ = ["GRAD_CLIP", "lr_lambda", "make_optimizer"]
