"""Native 3D volumes: read (files, DICOM folders) and check that a label map lies on its image's grid.

Why a 3D reader of our own around SimpleITK: the encoder of an nnU-Net ``3d_fullres`` configuration
should meet at pre-training what it meets at fine-tuning, so a volume keeps its spacing, origin and
direction (checked against its label map), DICOM folders with several series pick one by a stated
rule, and CT-RATE's stored values can be rescaled to HU. Normalisation (``pretrain/normalization.py``)
and patch sampling (``pretrain/patches.py``) delegate to nnU-Net's own code.

Memory and I/O decisions:

* Nothing is cached: each sample reads its volume (and label map) when it is loaded, so a manifest
  of 50,000 volumes costs only its row list, and workers hold at most one volume each.
* No partial-region reads (``ImageFileReader.SetExtractIndex``): the crop position needs the
  volume's size and, for foreground oversampling, the whole label map; z-score needs every voxel;
  and the big public collections (CT-RATE) ship ``.nii.gz``, which SimpleITK cannot stream (gzip
  has no random access). A region read would add a second code path that helps only uncompressed
  .mha/.nii with CT normalisation.

Geometry tolerances (image vs label map): size exact; spacing relative 1e-3; origin absolute
1e-3 x the largest spacing (a thousandth of a voxel: float32 round trips through NIfTI's
qform/sform stay far below it, a real shift does not); direction cosines absolute 1e-4.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_mosmos.images import read_image
from pretrain.pairs import GeometryError, PairDataError

__all__ = ["Volume", "check_pair_geometry", "pick_dicom_series", "read_label_map", "read_volume"]

SPACING_RTOL = 1e-3
ORIGIN_ATOL_VOXELS = 1e-3  # times the largest spacing, in mm
DIRECTION_ATOL = 1e-4
_RESAMPLE_FIX = ("Fix: resample the label map onto the image grid with nearest neighbour, e.g. "
                 "SimpleITK.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0), "
                 "or re-run the segmenter on this image.")


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
    values; HU = value * slope + intercept). Vector pixels and a 4th axis are averaged away. A NIfTI
    shorter than its header says raises ``nnunet_mosmos.images.TruncatedImageError``.
    """
    sitk, path = _sitk(), Path(path)
    note = None
    if path.is_dir():
        files, note = pick_dicom_series(path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image, tags = reader.Execute(), _header(files[0])
    elif path.is_file():
        image = read_image(path)  # TruncatedImageError for a NIfTI cut short (SimpleITK would zero-fill it)
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
    mask = read_image(mask_path)
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
