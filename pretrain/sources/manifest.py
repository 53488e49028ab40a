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


MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
JSONL_KEYS = ("image", "text", "mask")


def manifest_rows(path, skipped: SkipReport | None = None):
    """(id, image, text, mask) rows of a CSV/JSONL manifest.

    A line that is not JSON is counted in ``skipped`` ("malformed manifest line"); a manifest whose
    *shape* is wrong is an error naming what was found and what is expected: a CSV row with more
    fields than the header (a report with unquoted commas would otherwise be cut silently), a JSONL
    object without ``image`` or with the report under another key, a JSON array saved as .jsonl, a
    folder instead of a file.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in MANIFEST_SUFFIXES)[:5]
        raise PairDataError(f"--manifest {path} is a folder; give the manifest file itself"
                            + (f" (the folder holds {', '.join(inside)})" if inside else "") + f"; {MANIFEST_HELP}")
    if not path.is_file():
        raise PairDataError(f"manifest {path} does not exist; {MANIFEST_HELP}")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise PairDataError(f"manifest {path}: unknown extension (use .csv or .jsonl); {MANIFEST_HELP}")
    text = _decoded(path)
    return _csv_rows(path, text) if suffix == ".csv" else _jsonl_rows(path, text, skipped or SkipReport())


def _csv_rows(path: Path, text: str) -> list[tuple]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "image" not in header or "text" not in header:
        raise PairDataError(f"manifest {path}: header is {reader.fieldnames}, expected 'image,text'; "
                            f"{MANIFEST_HELP}")
    names = {h.strip().lower(): h for h in reader.fieldnames}
    base, rows = path.parent, []
    for row in reader:
        line = reader.line_num  # the physical line (a quoted report may span several)
        if None in row:  # DictReader's key for the fields beyond the header
            fields = len(reader.fieldnames) + len(row[None])
            raise PairDataError(f"{path.name} line {line} has {fields} fields, the header has "
                                f"{len(reader.fieldnames)}: quote the text (\"...\") when it holds commas "
                                f"({path})")
        image = (row.get(names["image"]) or "").strip()
        mask = (row.get(names["mask"]) or "").strip() if "mask" in names else ""
        rows.append((f"{path.name}:{line}", base / image if image else base / "<empty>", row.get(names["text"]),
                     base / mask if mask else None))
    return rows


def _jsonl_rows(path: Path, text: str, skipped: SkipReport) -> list[tuple]:
    base, rows = path.parent, []
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("["):
        raise PairDataError(f"manifest {path} holds a JSON array, not JSON Lines: write one object per line, "
                            f"e.g. `jq -c '.[]' file.json > {path.name}`; {MANIFEST_HELP}")
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            skipped.add("malformed manifest line", f"{path.name}:{i}")
            continue
        if not isinstance(obj, dict):
            raise PairDataError(f"{path.name} line {i} is a JSON {type(obj).__name__}, expected an object with the "
                                f"keys 'image', 'text' (optional 'mask') ({path})")
        others = sorted(set(obj) - set(JSONL_KEYS))
        if "image" not in obj or ("text" not in obj and others):
            raise PairDataError(f"{path.name} line {i} has the keys {sorted(obj)}, expected 'image' and 'text' "
                                f"(optional 'mask'); rename the image path's and the report's keys ({path})")
        image, caption, mask = obj["image"], obj.get("text"), obj.get("mask")
        rows.append((f"{path.name}:{i}", base / str(image), caption, base / str(mask) if mask else None))
    return rows


__all__ = ["MANIFEST_HELP", "MANIFEST_SUFFIXES", "manifest_rows"]
