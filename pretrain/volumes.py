"""Native 3D volumes for report pre-training: read, check label maps, normalise, sample patches.

Why a 3D pipeline next to ``datasets.read_image`` (random 2D slices): the encoder of an nnU-Net
``3d_fullres`` configuration should meet at pre-training what it meets at fine-tuning -- patches of
the configuration's patch size, at its spacing, normalised by its scheme with the dataset
fingerprint's statistics. So every step here delegates to nnU-Net's own code where nnU-Net has it
(normalisation classes, ``resample_data_or_seg_to_shape``) and to SimpleITK for reading.

Memory and I/O decisions:

* Nothing is cached: each sample reads its volume (and label map) when it is loaded, so a manifest
  of 50,000 volumes costs only its row list, and workers hold at most one volume each.
* Crop first, resample second: the crop covers ``patch_size * target_spacing / spacing`` native
  voxels and only that crop is resampled, so a 512x512x300 CT is never resampled whole.
* The whole volume is normalised before cropping (nnU-Net normalises before resampling, and
  z-score needs whole-volume statistics). No partial-region reads
  (``ImageFileReader.SetExtractIndex``): the crop position needs the volume's size and, for
  foreground oversampling, the whole label map; z-score needs every voxel; and the big public
  collections (CT-RATE) ship ``.nii.gz``, which SimpleITK cannot stream (gzip has no random
  access). A region read would add a second code path that helps only uncompressed .mha/.nii
  with CT normalisation.

Geometry tolerances (image vs label map): size exact; spacing relative 1e-3; origin absolute
1e-3 x the largest spacing (a thousandth of a voxel: float32 round trips through NIfTI's
qform/sform stay far below it, a real shift does not); direction cosines absolute 1e-4.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pretrain.datasets import Pair, PairDataError, PairDataset, collate_pairs

__all__ = ["GeometryError", "Normalizer", "PatchSampler", "Volume", "VolumePairDataset", "check_pair_geometry",
           "collate_volume_pairs", "pick_dicom_series", "read_label_map", "read_volume"]

SPACING_RTOL = 1e-3
ORIGIN_ATOL_VOXELS = 1e-3  # times the largest spacing, in mm
DIRECTION_ATOL = 1e-4
_RESAMPLE_FIX = ("Fix: resample the label map onto the image grid with nearest neighbour, e.g. "
                 "SimpleITK.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0), "
                 "or re-run the segmenter on this image.")


class GeometryError(PairDataError):
    """A label map that is not on its image's voxel grid (the user's data error: never skipped)."""


@dataclass
class Volume:
    """One image in memory; ``array`` axes (z, y, x) as SimpleITK's ``GetArrayFromImage`` gives them.

    ``origin`` and ``direction`` keep SimpleITK's (x, y, z) order; they let :func:`read_label_map`
    check a label map against the image without reading the image's header a second time.
    """

    array: np.ndarray  # float32
    spacing: tuple[float, float, float]  # (z, y, x) mm
    source: str
    note: str | None = None
    metadata: dict = field(default_factory=dict)
    origin: tuple[float, float, float] | None = None
    direction: tuple[float, ...] | None = None


# --------------------------------------------------------------------------- reading
def _sitk():
    import SimpleITK as sitk

    return sitk


def _uid_key(uid: str):
    parts = uid.split(".")
    return (0, tuple(int(p) for p in parts)) if all(p.isdigit() for p in parts) else (1, uid)


def _header(path: str) -> dict:
    """DICOM tags of one file without its pixels."""
    reader = _sitk().ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return {k: reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys()}


def pick_dicom_series(folder) -> tuple[list[str], str]:
    """Files of the series with the most slices in a DICOM folder, and a note saying which and why.

    Exports often put a scout, a dose report or a thin/thick reconstruction pair in one folder;
    the longest series is the volume a report describes. Ties: lowest SeriesNumber, then UID.
    """
    sitk, folder = _sitk(), Path(folder)
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) if folder.is_dir() else ()
    if not uids:
        raise PairDataError(f"DICOM folder {folder} holds no DICOM series (SimpleITK/GDCM found no readable "
                            "DICOM file directly in it; subfolders are not searched). Point the row at the folder "
                            "of one series' files, or convert the series to NIfTI.")
    series = []
    for uid in uids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        number = _header(files[0]).get("0020|0011", "")
        series.append((uid, files, int(number) if number.lstrip("-").isdigit() else float("inf")))
    series.sort(key=lambda s: (-len(s[1]), s[2], _uid_key(s[0])))
    uid, files, number = series[0]
    if len(series) == 1:
        return files, f"DICOM folder {folder}: series {uid} ({len(files)} slices)"
    reason = "most slices"
    if len(series[1][1]) == len(files):
        reason += ", tie broken by " + ("lowest SeriesNumber" if series[1][2] != number else "SeriesInstanceUID order")
    listed = [f"{uid} ({len(files)} slices, chosen: {reason})"] + [f"{u} ({len(f)} slices)" for u, f, _ in series[1:]]
    return files, f"DICOM folder {folder} holds {len(series)} series: " + ", ".join(listed)


def _geometry(obj) -> dict:
    """Size (z, y, x), spacing (z, y, x), origin and direction (SimpleITK order) of an Image or a reader
    after ``ReadImageInformation``; 4D images keep their first three axes."""
    dim = obj.GetDimension()
    if dim < 3:
        raise ValueError(f"expected a 3D volume, got a {dim}D image")
    direction = np.asarray(obj.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    return {"size": tuple(int(s) for s in obj.GetSize()[:3][::-1]),
            "spacing": tuple(float(s) for s in obj.GetSpacing()[:3][::-1]),
            "origin": tuple(float(o) for o in obj.GetOrigin()[:3]),
            "direction": tuple(direction.ravel().tolist())}


def _metadata(tags: dict) -> dict:
    """Modality and description from DICOM tags, a NIfTI ``descrip`` or a MetaImage ``Modality``."""
    out = {}
    modality = tags.get("0008|0060") or tags.get("Modality", "").replace("MET_MOD_", "")
    if modality and modality.upper() not in ("UNKNOWN", "OT"):
        out["modality"] = modality.strip()
    description = tags.get("0008|103e") or tags.get("descrip")
    if description and description.strip():
        out["description"] = description.strip()
    return out


def read_volume(path, rescale: tuple[float, float] | None = None) -> Volume:
    """A NIfTI/MHA/MHD/NRRD file or a DICOM folder as a float32 (z, y, x) :class:`Volume`.

    ``rescale=(slope, intercept)`` maps stored values to physical ones (CT-RATE ships raw stored
    values; HU = value * slope + intercept). Vector pixels and a 4th axis are averaged away.
    """
    sitk, path = _sitk(), Path(path)
    note = None
    if path.is_dir():
        files, note = pick_dicom_series(path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image, tags = reader.Execute(), _header(files[0])
    elif path.is_file():
        image = sitk.ReadImage(str(path))
        tags = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    else:
        raise FileNotFoundError(f"image {path} does not exist")
    geometry, vector, dim = _geometry(image), image.GetNumberOfComponentsPerPixel() > 1, image.GetDimension()
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)  # the one copy we keep; the view avoids another
    del image
    if vector:
        array = array.mean(-1, dtype=np.float32)
    if dim == 4:  # (t, z, y, x)
        array = array.mean(0, dtype=np.float32)
    if rescale is not None:
        array *= np.float32(rescale[0])
        array += np.float32(rescale[1])
    return Volume(np.ascontiguousarray(array), geometry["spacing"], str(path), note,
                  _metadata(tags), geometry["origin"], geometry["direction"])


def _differences(image: dict, mask: dict) -> list[str]:
    if image["size"] != mask["size"]:  # nothing else is comparable then, but spacing often explains it
        diffs = [f"size (z, y, x) {image['size']} vs {mask['size']}"]
    else:
        diffs = []
    if not np.allclose(image["spacing"], mask["spacing"], rtol=SPACING_RTOL, atol=0):
        diffs.append(f"spacing (z, y, x) {_fmt(image['spacing'])} vs {_fmt(mask['spacing'])} mm")
    if image.get("origin") is not None and mask.get("origin") is not None:
        atol = ORIGIN_ATOL_VOXELS * max(image["spacing"])
        if not np.allclose(image["origin"], mask["origin"], rtol=0, atol=atol):
            diffs.append(f"origin (x, y, z) {_fmt(image['origin'])} vs {_fmt(mask['origin'])} mm")
    if image.get("direction") is not None and mask.get("direction") is not None:
        if not np.allclose(image["direction"], mask["direction"], rtol=0, atol=DIRECTION_ATOL):
            diffs.append(f"direction {_fmt(image['direction'])} vs {_fmt(mask['direction'])}")
    return diffs


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _raise_if_different(image_geometry: dict, mask_geometry: dict, image_path, mask_path) -> None:
    diffs = _differences(image_geometry, mask_geometry)
    if diffs:
        raise GeometryError(f"label map {mask_path} is not on the voxel grid of image {image_path}: "
                            f"{'; '.join(diffs)} (image vs label map). {_RESAMPLE_FIX}")


def read_label_map(mask_path, image: Volume, image_path) -> np.ndarray:
    """The label map as an integer (z, y, x) array; GeometryError unless it lies on ``image``'s grid."""
    sitk = _sitk()
    mask = sitk.ReadImage(str(mask_path))
    image_geometry = {"size": tuple(image.array.shape), "spacing": tuple(image.spacing),
                      "origin": image.origin, "direction": image.direction}
    _raise_if_different(image_geometry, _geometry(mask), image_path, mask_path)
    array = sitk.GetArrayFromImage(mask)
    if array.ndim != 3:
        raise GeometryError(f"label map {mask_path} must be a 3D scalar image, got array shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array).astype(np.int32)
    return array


def _header_geometry(path: Path) -> dict | None:
    if path.is_dir():
        return None  # DICOM: geometry needs every slice's position; checked when loaded instead
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return _geometry(reader)


def check_pair_geometry(image_path, mask_path) -> None:
    """Header-only version of :func:`read_label_map`'s check, cheap enough to run on every row up front.

    A DICOM-folder image is not checked here (its z geometry needs every slice's header; the check
    happens when the pair is loaded). Unreadable headers raise the reader's error.
    """
    image_path, mask_path = Path(image_path), Path(mask_path)
    image_geometry = _header_geometry(image_path)
    if image_geometry is None:
        return
    _raise_if_different(image_geometry, _header_geometry(mask_path), image_path, mask_path)


# --------------------------------------------------------------------------- normalisation
def _normalization_class(scheme: str):
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
        channel_name_to_normalization_mapping)

    cls = getattr(schemes, scheme, None) or channel_name_to_normalization_mapping.get(scheme.casefold())
    if not (isinstance(cls, type) and issubclass(cls, schemes.ImageNormalization)) or cls is schemes.ImageNormalization:
        known = sorted(n for n, c in vars(schemes).items() if isinstance(c, type)
                       and issubclass(c, schemes.ImageNormalization) and c is not schemes.ImageNormalization)
        raise ValueError(f"unknown normalisation scheme {scheme!r}; nnU-Net's schemes are {known} "
                         f"(or the channel names {sorted(channel_name_to_normalization_mapping)})")
    return cls


CT_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")


class Normalizer:
    """nnU-Net's normalisation of one channel, by scheme name, as in a plans file's ``normalization_schemes``.

    ``intensity_properties`` is the fingerprint's ``foreground_intensity_properties_per_channel[c]``
    (CTNormalization clips to its 0.5/99.5 percentiles and z-scores with its mean/std, fixed for the
    dataset; ZScoreNormalization uses each volume's own statistics). ``use_mask_for_norm`` mirrors
    the plans' flag: z-score over the non-zero region only (nnU-Net's ``create_nonzero_mask``).
    """

    def __init__(self, scheme: str = "ZScoreNormalization", intensity_properties: dict | None = None,
                 use_mask_for_norm: bool = False):
        from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

        self.scheme_class = _normalization_class(scheme)
        self.scheme = self.scheme_class.__name__
        self.intensity_properties = dict(intensity_properties or {})
        self.use_mask_for_norm = bool(use_mask_for_norm)
        if issubclass(self.scheme_class, CTNormalization):
            missing = [k for k in CT_KEYS if k not in self.intensity_properties]
            if missing:
                raise ValueError(f"{self.scheme} needs the dataset fingerprint's intensity statistics "
                                 f"(foreground_intensity_properties_per_channel['0'] = {{{', '.join(CT_KEYS)}}}; "
                                 f"missing {missing}): pass -d DATASET so its dataset_fingerprint.json is read "
                                 "(run nnUNetv2_extract_fingerprint first), or use ZScoreNormalization")
        self._impl = self.scheme_class(use_mask_for_norm=self.use_mask_for_norm,
                                       intensityproperties=self.intensity_properties)

    @classmethod
    def from_fingerprint(cls, scheme, fingerprint_json_path, channel=0, use_mask_for_norm=False) -> "Normalizer":
        path = Path(fingerprint_json_path)
        try:
            fingerprint = json.loads(path.read_text())
            properties = fingerprint["foreground_intensity_properties_per_channel"][str(channel)]
        except FileNotFoundError:
            raise ValueError(f"dataset fingerprint {path} does not exist; run nnUNetv2_extract_fingerprint "
                             "(or nnUNetv2_plan_and_preprocess) for this dataset first") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not an nnU-Net dataset_fingerprint.json with "
                             f"foreground_intensity_properties_per_channel['{channel}'] ({type(e).__name__}: {e}); "
                             "re-run nnUNetv2_extract_fingerprint") from None
        return cls(scheme, properties, use_mask_for_norm)

    def __call__(self, array: np.ndarray, inplace: bool = False) -> np.ndarray:
        """Normalised float32 copy (``inplace=True`` reuses a float32 array: saves one volume of memory)."""
        array = np.asarray(array)
        array = array.astype(np.float32, copy=not (inplace and array.dtype == np.float32))
        seg = None
        if self.use_mask_for_norm:
            from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

            seg = np.where(create_nonzero_mask(array[None]), 0, -1).astype(np.int8)
        return self._impl.run(array, seg)

    def describe(self) -> str:
        p = self.intensity_properties
        if all(k in p for k in CT_KEYS) and self.scheme == "CTNormalization":
            return (f"CTNormalization (clip [{p['percentile_00_5']:.6g}, {p['percentile_99_5']:.6g}], "
                    f"mean {p['mean']:.6g}, std {p['std']:.6g})")
        return self.scheme + (" (per volume, non-zero region)" if self.use_mask_for_norm else
                              " (per volume)" if self.scheme == "ZScoreNormalization" else "")

    def as_dict(self) -> dict:
        """What a checkpoint needs to rebuild this normaliser."""
        numbers = {k: float(v) for k, v in self.intensity_properties.items() if isinstance(v, (int, float))}
        return {"scheme": self.scheme, "intensity_properties": numbers, "use_mask_for_norm": self.use_mask_for_norm}


# --------------------------------------------------------------------------- patches
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


# --------------------------------------------------------------------------- data set
class VolumePairDataset(PairDataset):
    """Pairs of (3D volume [+ label map], report) -> patches; retry/replace logic from :class:`PairDataset`.

    Item: ``image`` (1, Z, Y, X), ``view2`` (only with ``two_views``), ``mask`` (Z, Y, X) long, all
    zeros without a label map, ``has_mask``, ``text``, ``tags`` (num_tags), ``index``, ``failed``.
    A pair with empty text gets ``text_for_missing(context)``; context = {"image", "organs"
    ({name: ml} over the whole label map), "modality", "spacing", "shape", "metadata"}.
    ``pair.info["rescale"] = (slope, intercept)`` is passed to :func:`read_volume`.
    """

    fatal_errors = (GeometryError,)

    def __init__(self, pairs: list[Pair], num_tags: int, sampler: PatchSampler, normalizer: Normalizer, seed=0,
                 two_views: bool = False, label_names: dict[int, str] | None = None,
                 text_for_missing: Callable[[dict], str] | None = None, vocabulary=None):
        super().__init__(pairs, num_tags, transform=None, seed=seed, two_views=two_views,
                         text_for_missing=text_for_missing, vocabulary=vocabulary)
        self.sampler, self.normalizer, self.label_names = sampler, normalizer, label_names

    def _load(self, index: int, epoch: int) -> dict:
        pair = self.pairs[index]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.sampler.train else None
        volume = read_volume(pair.image, (pair.info or {}).get("rescale"))
        mask = None if pair.mask is None else read_label_map(pair.mask, volume, pair.image)
        context = self._context(pair, volume, mask) if not pair.text and self.text_for_missing else {}
        text, tags = self.text_and_tags(pair, context)
        volume.array = self.normalizer(volume.array, inplace=True)
        patch = self.sampler.sample(volume, mask, rng, two_views=self.two_views)
        sample = {"image": patch["image"],
                  "mask": patch["mask"] if mask is not None else torch.zeros(self.sampler.patch_size, dtype=torch.long),
                  "has_mask": mask is not None, "text": text, "tags": tags, "index": index}
        if self.two_views:
            sample["view2"] = patch["view2"]
        return sample

    def _context(self, pair: Pair, volume: Volume, mask) -> dict:
        organs = {} if mask is None else organ_volumes_ml(mask, volume.spacing, self.label_names)
        return {"image": str(pair.image), "organs": organs, "modality": volume.metadata.get("modality"),
                "spacing": tuple(volume.spacing), "shape": tuple(volume.array.shape), "metadata": dict(volume.metadata)}


#: one collate serves 2D and 3D pairs (kept under this name for readers of the 3D pipeline)
collate_volume_pairs = collate_pairs
