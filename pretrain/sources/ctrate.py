"""Reader for the CT-RATE layout (Hugging Face ``ibrahimhamamci/CT-RATE``): chest CT volumes + reports.

Layout (``<root>`` = the repository folder or its ``dataset/`` subfolder)::

    dataset/{train,valid}/<split>_<patient>/<split>_<patient>_<scan>/<split>_<patient>_<scan>_<recon>.nii.gz
    dataset/radiology_text_reports/{train,validation}_reports.csv
        VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN
    dataset/metadata/{train,validation}_metadata.csv   (optional)  VolumeName, RescaleSlope, RescaleIntercept, ...

Why the rescale matters: CT-RATE's NIfTIs hold raw stored values; HU = value * slope + intercept.
CT normalisation clips to the fingerprint's HU percentiles, so an unrescaled volume would be
clipped almost entirely away. Hence: when the metadata file exists, a volume without a metadata
row is skipped (counted), not silently read as if it were HU; without the metadata file the
NIfTIs are taken to hold HU already (``info`` None).

Volumes are matched to reports by file name, found by one lazy walk of the split folder (the
nesting is not trusted: re-uploads and partial downloads flatten it).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from pretrain.pairs import PairDataError, SkipReport

__all__ = ["CTRateLayoutError", "read_ct_rate", "write_ct_rate_like"]

LAYOUT = ("CT-RATE layout: <root>/dataset/{train,valid}/<split>_<patient>/<split>_<patient>_<scan>/"
          "<split>_<patient>_<scan>_<recon>.nii.gz, reports in <root>/dataset/radiology_text_reports/"
          "{train,validation}_reports.csv (columns VolumeName, Findings_EN, Impressions_EN, ...), optional "
          "<root>/dataset/metadata/{train,validation}_metadata.csv (VolumeName, RescaleSlope, RescaleIntercept)")
FIELD_TITLES = {"ClinicalInformation_EN": "Clinical information", "Technique_EN": "Technique",
                "Findings_EN": "Findings", "Impressions_EN": "Impression"}
_SPLITS = {"train": ("train", "train"), "valid": ("valid", "validation"), "validation": ("valid", "validation")}
_SUFFIXES = (".nii.gz", ".nii")


class CTRateLayoutError(PairDataError):
    """The folder is not a CT-RATE root (a ValueError, like every PairDataError); the message names what is missing."""


def _stem(name: str) -> str:
    name = name.strip()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _dataset_folder(root: Path) -> Path:
    if (root / "dataset").is_dir():
        return root / "dataset"
    if (root / "radiology_text_reports").is_dir() or root.name == "dataset":
        return root
    raise CTRateLayoutError(f"{root} is not a CT-RATE root: neither {root / 'dataset'} nor "
                            f"{root / 'radiology_text_reports'} exists. Expected {LAYOUT}")


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise CTRateLayoutError(f"{path}: missing column(s) {missing} (header {reader.fieldnames}). "
                                    f"Expected {LAYOUT}")
        return list(reader)


def _report_text(row: dict, text_fields) -> str:
    parts = []
    for name in text_fields:
        value = " ".join((row.get(name) or "").split())
        if value:
            parts.append(f"{FIELD_TITLES.get(name, name)}: {value}")
    return " ".join(parts)


def _rescales(path: Path, skipped: SkipReport) -> dict | None:
    """VolumeName stem -> (slope, intercept), or None when there is no metadata file."""
    if not path.is_file():
        return None
    out = {}
    for row in _read_csv(path, ("VolumeName", "RescaleSlope", "RescaleIntercept")):
        try:
            out[_stem(row["VolumeName"])] = (float(row["RescaleSlope"]), float(row["RescaleIntercept"]))
        except (TypeError, ValueError):
            skipped.add("unreadable RescaleSlope/RescaleIntercept in metadata", row.get("VolumeName", "?"))
    return out


def read_ct_rate(root, split: str = "train",
                 text_fields=("Findings_EN", "Impressions_EN")) -> tuple[list[tuple], SkipReport]:
    """Rows ``(VolumeName, image Path, "Findings: ... Impression: ...", {"rescale": (slope, intercept)} | None)``.

    Reports without a volume on disk, volumes without a report and (when the metadata file exists)
    volumes without rescale metadata are counted in the returned SkipReport, not fatal.
    """
    if split not in _SPLITS:
        raise CTRateLayoutError(f"unknown CT-RATE split {split!r}; use train or valid (validation)")
    folder_name, csv_prefix = _SPLITS[split]
    base = _dataset_folder(Path(root))
    volumes_dir = base / folder_name
    reports_csv = base / "radiology_text_reports" / f"{csv_prefix}_reports.csv"
    for needed in (volumes_dir, reports_csv):
        if not needed.exists():
            raise CTRateLayoutError(f"CT-RATE split {split!r}: {needed} does not exist. Expected {LAYOUT}")
    skipped = SkipReport()
    rescales = _rescales(base / "metadata" / f"{csv_prefix}_metadata.csv", skipped)
    on_disk = {}
    for dirpath, _, files in os.walk(volumes_dir):
        for name in files:
            if name.endswith(_SUFFIXES):
                on_disk.setdefault(_stem(name), Path(dirpath) / name)
    rows, reported = [], set()
    for row in _read_csv(reports_csv, ("VolumeName", *text_fields)):
        stem = _stem(row["VolumeName"])
        reported.add(stem)
        if stem not in on_disk:
            skipped.add("report without volume on disk", row["VolumeName"])
            continue
        info = None
        if rescales is not None:
            if stem not in rescales:
                skipped.add("volume without RescaleSlope/RescaleIntercept in the metadata CSV", row["VolumeName"])
                continue
            info = {"rescale": rescales[stem]}
        rows.append((row["VolumeName"].strip(), on_disk[stem], _report_text(row, text_fields), info))
    for stem in sorted(set(on_disk) - reported):
        skipped.add("volume without report", str(on_disk[stem]))
    return rows, skipped


def write_ct_rate_like(root, volumes: list[tuple[str, np.ndarray, tuple]], reports: dict,
                       rescale: tuple[float, float] | None = (1.0, -1024.0)) -> None:
    """Build the CT-RATE layout under ``root`` from (name, HU array (z, y, x), spacing (z, y, x)) volumes.

    ``reports``: VolumeName -> text (stored as Findings_EN) or {column: text}; names may lack the
    suffix and need not have a volume. With ``rescale=(slope, intercept)`` the arrays are stored as
    raw int16 values and the metadata CSV records the rescale, as in CT-RATE; ``None`` writes the
    arrays as given and no metadata CSV. For tests and demos.
    """
    import SimpleITK as sitk

    base = Path(root) / "dataset"
    metadata: dict[str, list] = {}
    for name, array, spacing in volumes:
        stem = _stem(name)
        split = stem.split("_", 1)[0]
        folder = base / split / stem.rsplit("_", 2)[0] / stem.rsplit("_", 1)[0]
        folder.mkdir(parents=True, exist_ok=True)
        stored = np.asarray(array)
        if rescale is not None:
            stored = np.rint((stored - rescale[1]) / rescale[0]).astype(np.int16)
        image = sitk.GetImageFromArray(stored)
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        sitk.WriteImage(image, str(folder / f"{stem}.nii.gz"))
        if rescale is not None:
            metadata.setdefault(_SPLITS[split][1], []).append(
                {"VolumeName": f"{stem}.nii.gz", "RescaleSlope": rescale[0], "RescaleIntercept": rescale[1]})
    by_split: dict[str, list] = {}
    for name, report in reports.items():
        fields = report if isinstance(report, dict) else {"Findings_EN": report}
        stem = _stem(name)
        by_split.setdefault(_SPLITS[stem.split("_", 1)[0]][1], []).append({"VolumeName": f"{stem}.nii.gz", **fields})
    columns = ["VolumeName", *FIELD_TITLES]
    for csv_prefix, rows in by_split.items():
        _write_csv(base / "radiology_text_reports" / f"{csv_prefix}_reports.csv", columns, rows)
    for csv_prefix, rows in metadata.items():
        _write_csv(base / "metadata" / f"{csv_prefix}_metadata.csv",
                   ["VolumeName", "RescaleSlope", "RescaleIntercept"], rows)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
