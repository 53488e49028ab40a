"""How a 2D pre-training checkpoint sees an image: normalise, centre-crop to the aspect ratio, resize.

Why one module: pre-training evaluates its held-out pairs this way, and everything that later feeds
a 2D checkpoint alone (``mosmos-zeroshot``, ``mosmos-attention --checkpoint``) must prepare its
inputs the same way, or it measures the checkpoint on images it never saw the like of. It lives
in the plugin library (which never imports ``pretrain``) so both sides can use it:
``pretrain.transforms.PairTransform`` builds its deterministic view from these functions.

Normalisation is nnU-Net's ``ZScoreNormalization``: over the whole image, or over the whole volume
for a 3D source (as nnU-Net normalises a case), inside the non-zero region when the plans'
``use_mask_for_norm`` says so (the checkpoint records it in ``preprocessing.use_mask_for_norm``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["centre_crop_box", "checkpoint_slices", "nonzero_region", "normalize", "resize", "size_2d", "zscore"]


def zscore(image: np.ndarray) -> np.ndarray:
    """``(x - mean) / max(std, 1e-8)`` in float32, nnU-Net's ZScoreNormalization without a mask."""
    image = image.astype(np.float32, copy=False)
    return (image - image.mean()) / max(float(image.std()), 1e-8)


def nonzero_region(array: np.ndarray) -> np.ndarray:
    """nnU-Net's ``seg`` argument for ``use_mask_for_norm``: 0 inside the non-zero region, -1 outside.

    A 2D image is what nnU-Net makes of one: a volume of one slice (its hole filling is 3D, so a hole
    open to the slice's faces stays a hole)."""
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    mask = create_nonzero_mask(array[None, None])[0] if array.ndim == 2 else create_nonzero_mask(array[None])
    return np.where(mask, 0, -1).astype(np.int8)


def normalize(array: np.ndarray, use_mask_for_norm: bool = False) -> np.ndarray:
    """Z-score over the whole array; with ``use_mask_for_norm``, nnU-Net's own masked ZScoreNormalization."""
    if not use_mask_for_norm:
        return zscore(array)
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    array = np.asarray(array, dtype=np.float32)
    return ZScoreNormalization(use_mask_for_norm=True).run(array.copy(), nonzero_region(array))


def size_2d(size) -> tuple[int, int]:
    """``(H, W)`` from an int, ``[S]``, ``[H, W]`` or a 3D ``[Z, H, W]`` image size."""
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    return (size[0], size[0]) if len(size) == 1 else size[-2:]


def centre_crop_box(h: int, w: int, size) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the largest centred crop of an ``h x w`` image with ``size``'s aspect."""
    out_h, out_w = size_2d(size)
    target_ratio = out_w / out_h
    ch, cw = (h, min(w, int(round(h * target_ratio)))) if w / h > target_ratio else \
        (min(h, int(round(w / target_ratio))), w)
    return (h - ch) // 2, (w - cw) // 2, max(ch, 1), max(cw, 1)


def resize(crop: np.ndarray, size) -> torch.Tensor:
    """A 2D array as a ``1 x H x W`` float tensor at ``size`` (bilinear; anti-aliased when shrinking)."""
    out_h, out_w = size_2d(size)
    x = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))
    return F.interpolate(x[None, None], size=(out_h, out_w), mode="bilinear", align_corners=False,
                         antialias=(x.shape[0] > out_h or x.shape[1] > out_w))[0]


def checkpoint_slices(volume: np.ndarray, preprocessing: dict, zscore_over: str = "volume",
                      window=None) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The axial slices of ``volume`` (z, y, x; a 2D image is one slice) as a 2D checkpoint's pre-training
    saw them at evaluation, ``N x 1 x H x W``, and the crop box ``(top, left, height, width)`` in the
    slice, so a caller can count voxels in it or put maps back where they belong.

    ``preprocessing`` is the checkpoint's entry (``image_size``, ``use_mask_for_norm``);
    ``zscore_over="slice"`` normalises each slice on its own instead; ``window`` clips intensities first.
    """
    volume = np.asarray(volume, dtype=np.float32)
    volume = volume[None] if volume.ndim == 2 else volume
    if window is not None:
        volume = np.clip(volume, *window)
    if zscore_over == "volume":
        volume = normalize(volume, bool(preprocessing.get("use_mask_for_norm")))
    elif zscore_over != "slice":
        raise ValueError(f"zscore_over must be 'volume' or 'slice', got {zscore_over!r}")
    size = preprocessing["image_size"]
    top, left, ch, cw = centre_crop_box(*volume.shape[1:], size)
    inputs = torch.stack([resize((zscore(s) if zscore_over == "slice" else s)[top:top + ch, left:left + cw], size)
                          for s in volume])
    return inputs, (top, left, ch, cw)
