"""The real data of the CHAOS/MedPix benefit study: nnU-Net raw datasets and a pre-training manifest.

Nothing here is shipped or committed as data: it reads ``../shared/data`` (see its README.md for
provenance and licences) and writes into a study folder.

* **CHAOS T2-SPIR MR** (CC BY-SA 4.0, Kavur et al. 2021): 20 volumes, manual labels for liver,
  right kidney, left kidney, spleen. :data:`SPLIT` fixes who is labelled, who chooses the budget
  (the pilot) and who is scored: the test cases are never trained on nor used to pick anything.
* **MedPix 2.0 train split** (development/measurement only, never commit): display PNGs with
  captions. The study pre-trains on the torso regions (Abdomen, Reproductive and Urinary System,
  Thorax): the regions whose images show the CHAOS organs or their neighbours. Head and spine
  images are left out: they carry almost no tag of the target organs (docs/benchmarks.md has the
  counts) and would make the contrastive task about telling a brain from an abdomen. A pair's
  report text is the image's caption followed by its case's "Findings" section: captions alone
  are short (median 21 words, some just "pelvis") while the findings are the report text of the
  same case, which is what MOSMOS means by report supervision.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHAOS_LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}

#: fixed CHAOS split: labelled pools (the first n are used with n labels), the pilot's validation
#: cases (choose resolution and budget), and the test cases (>= 10, never trained on)
SPLIT = {"labelled": (1, 2), "pilot": (3, 5, 8, 10),
         "test": (13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)}
#: CHAOS slice distance; the 2d configuration never resamples along z, the plans need a value anyway
CHAOS_SLICE_MM = 7.7
TORSO_REGIONS = ("Abdomen", "Reproductive and Urinary System", "Thorax")


class RealDataError(RuntimeError):
    """The shared data folder is missing or incomplete; the message names the path."""


def _chaos_pair(src: Path, case: int) -> tuple[Path, Path]:
    image, label = src / f"image_{case}.nii.gz", src / f"label_{case}.nii.gz"
    for path in (image, label):
        if not path.is_file():
            raise RealDataError(f"{path} is missing: the study reads CHAOS from {src} "
                                "(../shared/data/chaos_mr, see its README.md)")
    return image, label


def _write_case(image: Path, label: Path, images_dir: Path, labels_dir: Path, name: str) -> None:
    """float64 intensities -> float32 (what nnU-Net reads anyway), labels -> uint8; geometry kept."""
    import SimpleITK as sitk

    img = sitk.Cast(sitk.ReadImage(str(image)), sitk.sitkFloat32)
    seg = sitk.Cast(sitk.ReadImage(str(label)), sitk.sitkUInt8)
    seg.CopyInformation(img)
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(images_dir / f"{name}_0000.nii.gz"), True)
    sitk.WriteImage(seg, str(labels_dir / f"{name}.nii.gz"), True)


def write_chaos_dataset(raw_root: Path, dataset_id: int, name: str, train: tuple, test: tuple,
                        pilot: tuple = (), src: Path | None = None) -> Path:
    """An nnU-Net raw dataset: ``train`` cases in imagesTr/labelsTr, ``test`` in imagesTs/labelsTs,
    ``pilot`` in imagesVal/labelsVal (folders nnU-Net ignores; the pilot predicts them).
    Written into a temporary folder and renamed, so an interrupted run leaves no half dataset."""
    src = Path(src or SHARED_DATA / "chaos_mr")
    final = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    if final.is_dir():
        return final
    tmp = final.with_name(final.name + ".tmp")
    for group, cases in (("Tr", train), ("Ts", test), ("Val", pilot)):
        for case in cases:
            image, label = _chaos_pair(src, case)
            _write_case(image, label, tmp / f"images{group}", tmp / f"labels{group}", f"CHAOS_{case:03d}")
    (tmp / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": CHAOS_LABELS, "numTraining": len(train),
        "file_ending": ".nii.gz", "name": name,
        "description": "CHAOS T2-SPIR MR (Kavur et al., CHAOS Challenge, MedIA 2021), CC BY-SA 4.0; "
                       "via ZJLAB-AMMI/Q-Net commit 70a828d (../shared/data/chaos_mr)",
        "licence": "CC BY-SA 4.0"}, indent=1))
    tmp.rename(final)
    return final


def medpix_rows(src: Path | None = None, regions=TORSO_REGIONS, with_findings: bool = True) -> list[dict]:
    """MedPix train-split pairs of ``regions``: ``{"image", "text", "region", "type"}``."""
    src = Path(src or SHARED_DATA / "medpix_train")
    desc, cases_file = src / "descriptions_train.jsonl", src / "cases_train.jsonl"
    for path in (desc, cases_file, src / "images"):
        if not path.exists():
            raise RealDataError(f"{path} is missing: the study reads MedPix from {src} "
                                "(../shared/data/medpix_train, see its README.md)")
    findings = {}
    for line in cases_file.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        findings[case["U_id"]] = ((case.get("Case") or {}).get("Findings") or "").strip()
    rows = []
    for line in desc.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["Location Category"] not in regions:
            continue
        caption = ((r.get("Description") or {}).get("Caption") or "").strip()
        text = f"{caption} {findings.get(r['U_id'], '')}".strip() if with_findings else caption
        rows.append({"image": str(src / "images" / f"{r['image']}.png"), "text": text,
                     "region": r["Location Category"], "type": r["Type"]})
    return rows


def write_medpix_manifest(path: Path, src: Path | None = None, regions=TORSO_REGIONS,
                          with_findings: bool = True) -> Path:
    """A ``mosmos-pretrain --data manifest`` JSONL (reports contain commas: JSONL, not CSV)."""
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = medpix_rows(src, regions, with_findings)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"image": r["image"], "text": r["text"]}) + "\n" for r in rows),
                   encoding="utf-8")
    tmp.rename(path)
    return path


def tag_counts(rows: list[dict]) -> dict:
    """Per region: pairs, pairs with at least one tag, and the tag counts (what the extractor mines)."""
    from nnunet_mosmos.tags import extract_tags

    out = {}
    for r in rows:
        entry = out.setdefault(r["region"], {"pairs": 0, "tagged": 0, "tags": Counter()})
        tags = extract_tags(r["text"])
        entry["pairs"] += 1
        entry["tagged"] += bool(tags)
        entry["tags"].update(tags)
    return {k: {**v, "tags": dict(v["tags"].most_common())} for k, v in out.items()}


def organ_voxels(label_files) -> dict:
    """Voxels per label value over the given label maps (to describe the data in the docs)."""
    import SimpleITK as sitk

    total = Counter()
    for f in label_files:
        total.update(dict(zip(*np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(f))), return_counts=True))))
    return {int(k): int(v) for k, v in sorted(total.items())}
