"""3D patches for pre-training: crop at the configuration's field of view, then resample the crop.

Crop first, resample second: the crop covers ``patch_size * target_spacing / spacing`` native
voxels and only that crop is resampled (nnU-Net's ``resample_data_or_seg_to_shape``), so a
512x512x300 CT is never resampled whole.
"""
from __future__ import annotations

import numpy as np
import torch

from pretrain.pairs import GeometryError
from pretrain.volumes import Volume

__all__ = ["PatchSampler", "organ_volumes_ml"]


def _crop(array: np.ndarray, start, size, pad_value) -> np.ndarray:
    """``array[start:start+size]`` per axis, padded with ``pad_value`` where it leaves the array."""
    out = np.full(tuple(size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchSampler:
    """Volume -> patch of ``patch_size`` voxels at ``target_spacing`` (an nnU-Net 3d_fullres configuration).

    Crop first (``patch_size * target_spacing / spacing`` native voxels), then resample the crop
    with nnU-Net's ``resample_data_or_seg_to_shape`` (its anisotropy rule: separate in-plane /
    nearest through-plane for thick slices). Image interpolation is linear (order 1) instead of
    nnU-Net's cubic: on-the-fly per-sample resampling must be cheap, and pre-training does not
    need cubic accuracy. The label map is resampled as a segmentation with order 0 (nearest): one
    pass whatever the number of labels (order 1 costs one pass per label; TotalSegmentator has 117).

    ``volume.array`` is expected normalised already; padding uses its minimum (the "air" value
    after normalisation), the label map pads with 0.

    Training (``train=True`` and an rng): crop centre uniform, or with probability ``foreground_p``
    a random voxel of a random foreground label (nnU-Net's foreground oversampling); then random
    left-right mirror (x axis) and intensity ``x * a + b`` with ``a`` in ``1 ± jitter``, ``b`` in
    ``± jitter``. Otherwise a centre crop and no augmentation (deterministic).
    ``two_views``: a second crop whose centre is shifted by up to ``view_shift`` x crop size per
    axis, with its own mirror/jitter (deterministic mode: the same crop). Masks follow view 1 only.
    """

    def __init__(self, patch_size: tuple[int, int, int], target_spacing: tuple[float, float, float] | None,
                 foreground_p: float = 0.33, train: bool = True, view_shift: float = 0.25, jitter: float = 0.1):
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive ints (z, y, x), got {patch_size}")
        self.target_spacing = None if target_spacing is None else tuple(float(s) for s in target_spacing)
        self.foreground_p, self.train = float(foreground_p), bool(train)
        self.view_shift, self.jitter = float(view_shift), float(jitter)

    def crop_size(self, spacing) -> tuple[int, int, int]:
        """Native voxels covering the patch's field of view."""
        if self.target_spacing is None:
            return self.patch_size
        return tuple(max(1, int(round(p * t / s))) for p, t, s in zip(self.patch_size, self.target_spacing, spacing))

    def _start(self, shape, crop, mask, rng) -> np.ndarray:
        shape, crop = np.array(shape), np.array(crop)
        lo, hi = np.minimum(0, shape - crop), np.maximum(0, shape - crop)  # the crop stays inside unless too big
        if rng is None:
            return (shape - crop) // 2
        if mask is not None and rng.random() < self.foreground_p:
            voxel = _random_foreground_voxel(mask, rng)
            if voxel is not None:
                return np.clip(voxel - crop // 2, lo, hi)
        return np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])

    def _resample(self, crop: np.ndarray, spacing, is_seg: bool) -> np.ndarray:
        if crop.shape == self.patch_size:
            return crop
        from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

        new_spacing = self.target_spacing or spacing
        out = resample_data_or_seg_to_shape(crop[None], self.patch_size, spacing, new_spacing, is_seg=is_seg,
                                            order=0 if is_seg else 1, order_z=0, force_separate_z=None)
        return out[0]

    def _view(self, volume: Volume, start, crop, rng, pad_value, mask=None):
        image = self._resample(_crop(volume.array, start, crop, pad_value), volume.spacing, False)
        seg = None if mask is None else self._resample(_crop(mask, start, crop, 0), volume.spacing, True)
        if rng is not None:
            if rng.random() < 0.5:
                image = image[:, :, ::-1]
                seg = None if seg is None else seg[:, :, ::-1]
            a, b = rng.uniform(1 - self.jitter, 1 + self.jitter), rng.uniform(-self.jitter, self.jitter)
            image = image * np.float32(a) + np.float32(b)
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        seg = None if seg is None else torch.from_numpy(np.ascontiguousarray(seg).astype(np.int64))
        return image, seg

    def sample(self, volume: Volume, mask: np.ndarray | None, rng: np.random.Generator | None,
               two_views: bool = False) -> dict:
        """``{"image": (1, Z, Y, X) float, "mask": (Z, Y, X) long or None, "view2": (1, Z, Y, X) or None}``."""
        if mask is not None and mask.shape != volume.array.shape:
            raise GeometryError(f"label map shape {mask.shape} differs from image {volume.source} {volume.array.shape}")
        rng = rng if self.train else None
        shape, crop = volume.array.shape, self.crop_size(volume.spacing)
        start = self._start(shape, crop, mask, rng)
        pad_value = float(volume.array.min())
        image, seg = self._view(volume, start, crop, rng, pad_value, mask)
        view2 = None
        if two_views:
            start2 = start
            if rng is not None:
                shift = np.floor(self.view_shift * np.array(crop)).astype(int)
                offset = np.array([rng.integers(-s, s + 1) for s in shift])
                lo, hi = np.minimum(0, np.array(shape) - crop), np.maximum(0, np.array(shape) - crop)
                start2 = np.clip(start + offset, lo, hi)  # stays in the volume, like view 1
            view2, _ = self._view(volume, start2, crop, rng, pad_value)
        return {"image": image, "mask": seg, "view2": view2}


def _random_foreground_voxel(mask: np.ndarray, rng) -> np.ndarray | None:
    """A random voxel of a random present label (> 0): small organs are picked as often as the liver."""
    counts = np.bincount(mask[mask > 0].ravel().astype(np.int64))
    labels = np.flatnonzero(counts)
    if labels.size == 0:
        return None
    label = labels[rng.integers(labels.size)]
    flat = np.flatnonzero(mask.ravel() == label)
    return np.array(np.unravel_index(flat[rng.integers(flat.size)], mask.shape))


def organ_volumes_ml(mask: np.ndarray, spacing, label_names: dict[int, str] | None = None) -> dict[str, float]:
    """Volume in ml of each label present in the whole label map (named labels only when names are given)."""
    counts = np.bincount(mask[mask > 0].ravel().astype(np.int64))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = {}
    for label in np.flatnonzero(counts):
        name = f"label_{label}" if label_names is None else label_names.get(int(label))
        if name is not None:
            out[name] = round(float(counts[label]) * voxel_ml, 3)
    return out
