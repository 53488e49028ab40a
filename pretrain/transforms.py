"""Image preprocessing for pre-training: one channel, z-score, crop/resize, light augmentation.

Why these choices:
- z-score (``nnunet_mosmos.slices``) over the whole image (over the whole volume for a 3D source) *before* cropping is what
  nnU-Net's ``ZScoreNormalization`` does to a non-CT case, so the encoder sees inputs on the same
  scale at both stages. (CT targets use nnU-Net's CT normalisation at fine-tuning; both give roughly
  zero-mean, unit-variance inputs, and ROCO images carry no Hounsfield units to do better.)
- Augmentation is light (random resized crop, horizontal flip, small intensity jitter) because the
  caption must stay true of the crop. Flipping swaps left/right, exactly as nnU-Net's own mirroring
  does during segmentation training; captions mentioning a side are then weaker pairs, not wrong tags.
- All randomness comes from a ``numpy.random.Generator`` the data set derives from
  (seed, epoch, sample index), so a sample is identical however many workers load it and after
  ``--resume``.
"""
from __future__ import annotations

import numpy as np
import torch

from nnunet_mosmos.slices import centre_crop_box, resize, size_2d


class PairTransform:
    """2D float image (already z-scored) -> ``1 x H x W`` tensor at ``image_size``.

    ``train=True``: random resized crop (area ``scale``, aspect ``ratio``), flip with ``flip_p``,
    intensity ``x * a + b`` with ``a`` in ``1 ± jitter`` and ``b`` in ``± jitter``.
    ``train=False``: centre crop to the target aspect ratio, then resize (deterministic).
    """

    def __init__(self, image_size, train: bool = True, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                 flip_p: float = 0.5, jitter: float = 0.1):
        self.size = size_2d(image_size)
        self.train, self.scale, self.ratio, self.flip_p, self.jitter = train, scale, ratio, flip_p, jitter

    def _crop_box(self, h: int, w: int, rng: np.random.Generator | None):
        target_ratio = self.size[1] / self.size[0]
        if self.train and rng is not None:
            for _ in range(10):
                area = h * w * rng.uniform(*self.scale)
                ratio = target_ratio * np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
                cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
                if 0 < cw <= w and 0 < ch <= h:
                    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        return centre_crop_box(h, w, self.size)  # evaluation's view: nnunet_mosmos.slices, shared with zero-shot

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if image.ndim != 2:
            raise ValueError(f"expected a 2D image, got shape {image.shape}")
        top, left, ch, cw = self._crop_box(*image.shape, rng)
        out = resize(image[top:top + ch, left:left + cw], self.size)
        if self.train and rng is not None:
            if rng.random() < self.flip_p:
                out = out.flip(-1)
            a = 1.0 + rng.uniform(-self.jitter, self.jitter)
            b = rng.uniform(-self.jitter, self.jitter)
            out = out * a + b
        return out.contiguous()

