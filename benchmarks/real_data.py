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
* **CHAOS slices with synthetic reports** (change 2 of issue #10, ``--pretrain-source chaos``): the
  target modality itself. Only the labelled and pilot volumes (:data:`PRETRAIN_CASES`), each
  organ-bearing axial slice with a report naming the organs on it (:func:`slice_report`).
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHAOS_LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}

#: fixed CHAOS split: labelled pools (the first n are used with n labels), the pilot's validation
#: cases (choose resolution and budget), and the test cases (>= 10, never trained on)
SPLIT = {"labelled": (1, 2), "pilot": (3, 5, 8, 10),
         "test": (13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)}
#: CHAOS volumes whose slices may serve as pre-training pairs (change 2): the labelled and pilot cases,
#: never a test case
PRETRAIN_CASES = SPLIT["labelled"] + SPLIT["pilot"]
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


#: sentences of the slice reports: every organ is named as the subject of its sentence, affirmatively,
#: with the word the tag extractor reads (as ``nnunet_mosmos.synthetic.reports`` does for phantoms)
SLICE_SENTENCES = {
    1: ("The liver is unremarkable.", "The liver is normal in size and signal.", "The liver is seen."),
    2: ("The right kidney is unremarkable.", "The right kidney is normal.", "The right kidney is seen."),
    3: ("The left kidney is unremarkable.", "The left kidney is normal.", "The left kidney is seen."),
    4: ("The spleen is normal in size.", "The spleen is unremarkable.", "The spleen is seen."),
}
SLICE_OPENINGS = ("Axial T2-weighted MR image of the upper abdomen.", "Axial T2 SPIR MR slice of the abdomen.",
                  "T2-weighted axial MR of the abdomen.")


def slice_report(labels_present, rng: np.random.Generator) -> str:
    """A short report that names exactly the CHAOS organs on one axial slice."""
    parts = [SLICE_OPENINGS[rng.integers(len(SLICE_OPENINGS))]]
    parts += [SLICE_SENTENCES[v][rng.integers(len(SLICE_SENTENCES[v]))] for v in sorted(labels_present)]
    return " ".join(parts)


def write_chaos_slice_manifest(path: Path, cases=PRETRAIN_CASES, src: Path | None = None,
                               min_pixels: int = 50) -> Path:
    """Change 2 of issue #10, pre-training on the target modality: every axial slice of ``cases`` that
    shows an organ (>= ``min_pixels`` pixels of it, at CHAOS's 1.25 mm) becomes a pair of a 16-bit
    PNG (the MR values; ``mosmos-pretrain`` z-scores each image) and a :func:`slice_report` of the
    organs on it. The reports are synthetic: they carry exactly the image-level organ labels of the
    slice, the weak supervision a per-image report gives. Slices without an organ are left out
    (the tag extractor would find no tag). Written into temporary names and renamed."""
    import SimpleITK as sitk
    from PIL import Image

    path = Path(path)
    if path.is_file():
        return path
    if set(cases) & set(SPLIT["test"]):
        raise ValueError(f"test cases {sorted(set(cases) & set(SPLIT['test']))} may not be pre-trained on")
    src = Path(src or SHARED_DATA / "chaos_mr")
    images = path.with_name(path.stem + "_png")
    tmp_images, tmp = images.with_name(images.name + ".tmp"), path.with_name(path.name + ".tmp")
    tmp_images.mkdir(parents=True, exist_ok=True)
    lines = []
    for case in cases:
        image, label = _chaos_pair(src, case)
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
        for z in range(volume.shape[0]):
            values, counts = np.unique(seg[z], return_counts=True)
            present = [int(v) for v, n in zip(values, counts) if v in SLICE_SENTENCES and n >= min_pixels]
            if not present:
                continue
            name = f"CHAOS_{case:03d}_z{z:02d}.png"
            Image.fromarray(np.clip(volume[z], 0, 65535).astype(np.uint16)).save(tmp_images / name)
            text = slice_report(present, np.random.default_rng([case, z]))
            lines.append(json.dumps({"image": f"{images.name}/{name}", "text": text}) + "\n")
    if images.exists():
        shutil.rmtree(images)
    tmp_images.rename(images)
    tmp.write_text("".join(lines), encoding="utf-8")
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
