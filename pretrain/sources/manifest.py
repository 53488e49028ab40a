"""Your own reports: a CSV (``image,text[,mask]``) or JSONL manifest, paths relative to the file."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pretrain.pairs import PairDataError, SkipReport

MANIFEST_HELP = ("a manifest is a CSV with header 'image,text' (optional third column 'mask': a label map on the "
                 "image's grid) or a JSONL file of {\"image\": ..., \"text\": ..., \"mask\": ...} objects; paths are "
                 "relative to the manifest's folder (or absolute); an image may be a 2D picture, a 3D volume "
                 "(NIfTI/MHA/NRRD) or a DICOM folder")


def _decoded(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PairDataError(f"cannot read manifest {path}: {e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.decode("utf-8", errors="surrogateescape")  # bad bytes survive to be counted per row


def manifest_rows(path, skipped: SkipReport | None = None):
    """(id, image, text, mask) rows of a CSV/JSONL manifest; malformed JSONL lines are counted in ``skipped``."""
    path = Path(path)
    if not path.is_file():
        raise PairDataError(f"manifest {path} does not exist; {MANIFEST_HELP}")
    text, base, rows = _decoded(path), path.parent, []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if "image" not in header or "text" not in header:
            raise PairDataError(f"manifest {path}: header is {reader.fieldnames}, expected 'image,text'; "
                                f"{MANIFEST_HELP}")
        names = {h.strip().lower(): h for h in reader.fieldnames}
        for i, row in enumerate(reader, start=2):
            image = (row.get(names["image"]) or "").strip()
            mask = (row.get(names["mask"]) or "").strip() if "mask" in names else ""
            rows.append((f"{path.name}:{i}", base / image if image else base / "<empty>", row.get(names["text"]),
                         base / mask if mask else None))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                image, caption, mask = obj["image"], obj.get("text"), obj.get("mask")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                (skipped or SkipReport()).add("malformed manifest line", f"{path.name}:{i}")
                continue
            rows.append((f"{path.name}:{i}", base / str(image), caption, base / str(mask) if mask else None))
    else:
        raise PairDataError(f"manifest {path}: unknown extension (use .csv or .jsonl); {MANIFEST_HELP}")
    return rows


__all__ = ["MANIFEST_HELP", "manifest_rows"]
