"""Text side of the ROCO data sets (captions, UMLS CUIs, keywords, licences); images are not opened.

Two public layouts exist and both are read into the same :class:`RocoRecord` list:

* ROCO v1 (GitHub razorx89/roco-dataset): ``<root>/<split>/<radiology|non-radiology>/`` holding
  ``captions.txt`` (``ID<TAB> caption``, one leading space), ``cuis.txt`` / ``keywords.txt``
  (``ID<TAB><TAB>item<TAB>...``, a line may have no item), ``licences.txt`` (CSV ``ROCO_ID,PMC_ID,CC``);
  images fetched by upstream's script to ``<root>/<split>/<subset>/images/<ID>.jpg``.
* ROCO v2 (Zenodo): ``<root>/<split>_captions.csv`` (``ID,Caption``), ``<root>/<split>_concepts.csv``
  (``ID,CUIs`` joined by ``;``, may be empty), images in ``<root>/<split>/<ID>.jpg``.

The image data set of the pre-training package builds on these readers (:func:`roco_rows`); keeping
them free of torch lets the tag-measuring script and the tests use them cheaply.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ORGAN_CUIS", "RocoLayoutError", "RocoRecord", "detect_layout", "read_roco", "read_roco_v1", "read_roco_v2", "roco_rows"]

V1_SUBSETS = ("radiology", "non-radiology")
#: UMLS CUIs that ROCO's concept annotations carry for organs of the default tag vocabulary: the
#: reference the tag extractor's recall is measured against (scripts/measure_tags_roco.py, tests)
ORGAN_CUIS = {
    "liver": "C0023884", "kidney": "C0022646", "pancreas": "C0030274", "lung": "C0024109",
    "brain": "C0006104", "aorta": "C0003483", "stomach": "C0038351", "gallbladder": "C0016976",
    "esophagus": "C0014876", "spleen": "C0037993", "heart": "C0018787",
}
_V1_HELP = ("ROCO v1 layout: <root>/<split>/<radiology|non-radiology>/captions.txt (+ cuis.txt, keywords.txt, "
            "licences.txt, images/<ID>.jpg)")
_V2_HELP = ("ROCO v2 layout: <root>/<split>_captions.csv with header ID,Caption "
            "(+ <split>_concepts.csv with header ID,CUIs, images in <root>/<split>/<ID>.jpg)")


class RocoLayoutError(ValueError):
    """The folder is not a ROCO v1/v2 root (or a file in it is malformed)."""


@dataclass(frozen=True)
class RocoRecord:
    """One figure: its caption (the "report") and what the data set says about it."""

    id: str
    caption: str
    cuis: tuple[str, ...]
    licence: str | None
    image_path: Path
    keywords: tuple[str, ...] = ()


def detect_layout(root: str | os.PathLike, split: str) -> str:
    """``"v1"`` or ``"v2"`` for ``root``; RocoLayoutError naming what is missing otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise RocoLayoutError(f"ROCO root {root} does not exist or is not a folder; expected {_V1_HELP} or {_V2_HELP}")
    if any((root / split / s / "captions.txt").is_file() for s in V1_SUBSETS):
        return "v1"
    if (root / f"{split}_captions.csv").is_file():
        return "v2"
    found = sorted(p.name for p in root.iterdir())[:12]
    raise RocoLayoutError(
        f"no ROCO split {split!r} under {root}: missing {root / split / 'radiology' / 'captions.txt'} (v1) and "
        f"{root / (split + '_captions.csv')} (v2); the folder holds {found}. Expected {_V1_HELP} or {_V2_HELP}")


def read_roco(root: str | os.PathLike, split: str = "train", subset: str = "radiology",
              layout: str = "auto") -> list[RocoRecord]:
    """Records of one split, in file order; ``layout`` is ``"auto"``, ``"v1"`` or ``"v2"``."""
    if layout == "auto":
        layout = detect_layout(root, split)
    if layout == "v1":
        return read_roco_v1(root, split, subset)
    if layout == "v2":
        if subset not in ("radiology", "all"):
            raise ValueError(f"ROCO v2 has only radiology images; subset={subset!r} is not available")
        return read_roco_v2(root, split)
    raise ValueError(f"layout must be 'auto', 'v1' or 'v2', got {layout!r}")


def roco_rows(root, split: str, subset: str) -> list[tuple]:
    """(id, image, caption) rows of a ROCO v1/v2 split, for ``pretrain.pairs.build_pairs``."""
    return [(r.id, r.image_path, r.caption) for r in read_roco(root, split, subset)]


# --------------------------------------------------------------------------- v1
def read_roco_v1(root: str | os.PathLike, split: str = "train", subset: str = "radiology") -> list[RocoRecord]:
    """ROCO v1 records; ``subset`` is ``"radiology"``, ``"non-radiology"`` or ``"all"`` (both, in that order)."""
    if subset not in V1_SUBSETS + ("all",):
        raise ValueError(f"subset must be 'radiology', 'non-radiology' or 'all', got {subset!r}")
    root = Path(root)
    folders = [root / split / s for s in (V1_SUBSETS if subset == "all" else (subset,))]
    if subset == "all":
        folders = [f for f in folders if (f / "captions.txt").is_file()] or folders[:1]
    records: list[RocoRecord] = []
    for folder in folders:
        records.extend(_read_v1_folder(folder))
    return records


def _read_v1_folder(folder: Path) -> list[RocoRecord]:
    captions_file = folder / "captions.txt"
    if not captions_file.is_file():
        raise RocoLayoutError(f"missing {captions_file}; expected {_V1_HELP}")
    captions = _read_v1_captions(captions_file)
    cuis = _read_v1_items(folder / "cuis.txt")
    keywords = _read_v1_items(folder / "keywords.txt")
    licences = _read_v1_licences(folder / "licences.txt")
    return [RocoRecord(rid, caption, cuis.get(rid, ()), licences.get(rid), folder / "images" / f"{rid}.jpg",
                       keywords.get(rid, ()))
            for rid, caption in captions.items()]


def _v1_lines(path: Path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # bad bytes are counted per row downstream
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _read_v1_captions(path: Path) -> dict[str, str]:
    captions: dict[str, str] = {}
    for number, line in _v1_lines(path):
        rid, tab, caption = line.partition("\t")
        if not tab or not rid.strip():
            raise RocoLayoutError(f"{path}:{number}: expected 'ROCO_ID<TAB> caption', got {line[:80]!r}")
        if rid in captions:
            raise RocoLayoutError(f"{path}:{number}: ID {rid} appears twice")
        captions[rid] = caption.strip()  # upstream puts one space before every caption
    return captions


def _read_v1_items(path: Path) -> dict[str, tuple[str, ...]]:
    """cuis.txt / keywords.txt: the first field after the ID is empty (double tab); may be missing."""
    if not path.is_file():
        return {}
    items = {}
    for _, line in _v1_lines(path):
        rid, *fields = line.split("\t")
        items[rid] = tuple(f.strip() for f in fields if f.strip())
    return items


def _read_v1_licences(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ROCO_ID", "CC"} <= set(reader.fieldnames):
            raise RocoLayoutError(f"{path}: expected a CSV header 'ROCO_ID,PMC_ID,CC', got {reader.fieldnames}")
        return {row["ROCO_ID"].strip(): (row["CC"] or "").strip() or None for row in reader if row["ROCO_ID"]}


# --------------------------------------------------------------------------- v2
def read_roco_v2(root: str | os.PathLike, split: str = "train") -> list[RocoRecord]:
    """ROCO v2 records; CUIs from ``<split>_concepts.csv`` (else ``<split>_concepts_manual.csv``)."""
    root = Path(root)
    captions_file = root / f"{split}_captions.csv"
    if not captions_file.is_file():
        raise RocoLayoutError(f"missing {captions_file}; expected {_V2_HELP}")
    captions = {rid: text.strip() for rid, text in _read_v2_csv(captions_file, "Caption")}
    cuis: dict[str, tuple[str, ...]] = {}
    for name in (f"{split}_concepts.csv", f"{split}_concepts_manual.csv"):
        if (root / name).is_file():
            cuis = {rid: tuple(c.strip() for c in value.split(";") if c.strip())
                    for rid, value in _read_v2_csv(root / name, "CUIs")}
            break
    return [RocoRecord(rid, caption, cuis.get(rid, ()), None, root / split / f"{rid}.jpg")
            for rid, caption in captions.items()]


def _read_v2_csv(path: Path, column: str):
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if header[:2] != ["ID", column]:
            raise RocoLayoutError(f"{path}: expected the CSV header 'ID,{column}', got {reader.fieldnames}; "
                                  f"{_V2_HELP}")
        id_key, value_key = reader.fieldnames[0], reader.fieldnames[1]
        seen = set()
        for row in reader:
            rid = (row[id_key] or "").strip()
            if not rid:
                continue
            if rid in seen:
                raise RocoLayoutError(f"{path}: ID {rid} appears twice")
            seen.add(rid)
            yield rid, row[value_key] or ""
