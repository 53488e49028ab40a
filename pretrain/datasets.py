"""Image-text pair data sets for pre-training: ROCO v1/v2, a user manifest, the synthetic phantoms.

Every source becomes the same list of :class:`Pair` (image path, caption, tag indices), so the
engine never knows where pairs came from. Bad pairs are skipped and counted, never fatal, because
real collections always contain some (ROCO figures whose download failed, captions without an
organ): cheap problems (missing file, empty / non-UTF-8 caption, no tag) are found before training
starts; unreadable images are found when loaded, replaced by the next readable pair (so batch
sizes, and therefore DDP, stay in step) and reported at the end. Only a wrong layout or *zero*
usable pairs is a hard error.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nnunet_mosmos.tags import TagVocabulary, extract_tags
from pretrain.transforms import PairTransform, zscore

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
MANIFEST_HELP = ("a manifest is a CSV with header 'image,text' (optional third column 'mask': a label map on the "
                 "image's grid) or a JSONL file of {\"image\": ..., \"text\": ..., \"mask\": ...} objects; paths are "
                 "relative to the manifest's folder (or absolute); an image may be a 2D picture, a 3D volume "
                 "(NIfTI/MHA/NRRD) or a DICOM folder")


class PairDataError(ValueError):
    """No usable pairs, or a manifest/data folder that cannot be read; the message says why."""


@dataclass(frozen=True)
class Pair:
    id: str
    image: Path
    text: str
    tags: tuple[int, ...]  # indices into the vocabulary
    mask: Path | None = None  # label map on the image's grid (organ-level objectives), optional
    info: dict | None = None  # per-row extras, e.g. CT-RATE rescale slope/intercept, modality


@dataclass
class SkipReport:
    """Skipped pairs by reason, with a few examples each (printed at start and at the end)."""
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(example)

    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "SkipReport") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            self.examples.setdefault(reason, list(other.examples.get(reason, []))[:3])

    def summary(self, what: str = "skipped") -> str:
        if not self.counts:
            return f"{what}: none"
        lines = [f"{what}: {self.total()} pair(s)"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {n:6d}  {reason}  (e.g. {'; '.join(self.examples[reason])})")
        return "\n".join(lines)


@dataclass
class PairSource:
    pairs: list[Pair]
    skipped: SkipReport
    description: str
    vocabulary: TagVocabulary

    def tag_frequencies(self) -> Counter:
        names = self.vocabulary.names
        return Counter(names[t] for p in self.pairs for t in p.tags)


def _bad_text(text) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "empty caption"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes from a non-UTF-8 file
        return "non-UTF-8 caption"
    if "\ufffd" in text:
        return "non-UTF-8 caption"
    return None


def build_pairs(rows, vocabulary: TagVocabulary, keep_untagged: bool = False,
                skipped: SkipReport | None = None, allow_missing_text: bool = False) -> tuple[list[Pair], SkipReport]:
    """``rows`` of (id, image path, text[, mask path[, info]]) -> usable pairs; the rest counted.

    ``allow_missing_text`` keeps rows without a report (their text is generated when loaded, for
    the negative-free objective); an image "path" may be a DICOM folder.
    """
    skipped = skipped or SkipReport()
    index = {name: i for i, name in enumerate(vocabulary.names)}
    pairs = []
    for row in rows:
        rid, image, text = row[:3]
        mask = row[3] if len(row) > 3 else None
        info = row[4] if len(row) > 4 else None
        missing_text = text is None or (isinstance(text, str) and not text.strip())
        reason = None if (missing_text and allow_missing_text) else _bad_text(text)
        if reason:
            skipped.add(reason, rid)
            continue
        if not (Path(image).is_file() or Path(image).is_dir()):
            skipped.add("missing image", str(image))
            continue
        if mask is not None and not Path(mask).is_file():
            skipped.add("missing mask", str(mask))
            continue
        text = "" if missing_text else " ".join(text.split())
        tags = tuple(sorted(index[t] for t in extract_tags(text, vocabulary))) if text else ()
        if not tags and text and not keep_untagged:
            skipped.add("caption with no organ tag", rid)
            continue
        pairs.append(Pair(rid, Path(image), text, tags, Path(mask) if mask is not None else None, info))
    return pairs, skipped


# --------------------------------------------------------------------------- sources
def roco_rows(root, split: str, subset: str):
    """(id, image, caption) rows of a ROCO v1/v2 split (layout errors propagate)."""
    from pretrain.roco import read_roco

    return [(r.id, r.image_path, r.caption) for r in read_roco(root, split, subset)]


def _decoded(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PairDataError(f"cannot read manifest {path}: {e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.decode("utf-8", errors="surrogateescape")  # bad bytes survive to be counted per row


def manifest_rows(path, skipped: SkipReport | None = None):
    """(id, image, text) rows of a CSV/JSONL manifest; malformed JSONL lines are counted in ``skipped``."""
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


def synthetic_manifest(dataset: str | int | None, manifest: str | None) -> Path:
    """``pairs2d/manifest.csv`` of a ``mosmos-synthetic`` dataset in $nnUNet_raw (or ``--manifest``)."""
    if manifest:
        return Path(manifest)
    if dataset is None:
        raise PairDataError("--data synthetic needs --manifest PATH or -d DATASET (a mosmos-synthetic dataset "
                            "in $nnUNet_raw; create one with `mosmos-synthetic -d 901`)")
    from pretrain.plans import find_dataset_folder

    folder = find_dataset_folder(dataset, ("nnUNet_raw",))
    path = folder / "pairs2d" / "manifest.csv"
    if not path.is_file():
        raise PairDataError(f"{path} does not exist: {folder.name} is not a mosmos-synthetic dataset "
                            "(regenerate it with `mosmos-synthetic`) or pass --manifest")
    return path


def load_pairs(data: str, *, roco_root=None, split="train", subset="radiology", manifest=None, dataset=None,
               vocabulary: TagVocabulary | None = None, keep_untagged: bool = False, ct_rate_root=None,
               allow_missing_text: bool = False) -> PairSource:
    """Resolve ``--data`` to usable pairs; PairDataError / RocoLayoutError when nothing is usable."""
    vocabulary = vocabulary or TagVocabulary.default()
    skipped = SkipReport()
    if data == "roco":
        if not roco_root:
            raise PairDataError("--data roco needs --roco-root (the folder holding <split>/radiology/ for ROCO v1 "
                                "or <split>_captions.csv for ROCO v2); see docs/pretraining.md")
        rows, where = roco_rows(roco_root, split, subset), f"ROCO {roco_root} split={split} subset={subset}"
    elif data in ("manifest", "synthetic"):
        if data == "manifest" and not manifest:
            raise PairDataError(f"--data manifest needs --manifest PATH; {MANIFEST_HELP}")
        path = Path(manifest) if data == "manifest" else synthetic_manifest(dataset, manifest)
        rows, where = manifest_rows(path, skipped), f"{data} {path}"
    elif data == "ct-rate":
        if not ct_rate_root:
            raise PairDataError("--data ct-rate needs --ct-rate-root (the CT-RATE folder holding dataset/); "
                                "see docs/pretraining.md")
        from pretrain.ctrate import read_ct_rate

        rows, ct_skipped = read_ct_rate(ct_rate_root, split)
        rows = [(rid, image, text, None, info) for rid, image, text, info in rows]
        skipped.merge(ct_skipped)
        where = f"CT-RATE {ct_rate_root} split={split}"
    else:
        raise PairDataError(f"unknown --data {data!r}; use roco, manifest, synthetic or ct-rate")
    pairs, skipped = build_pairs(rows, vocabulary, keep_untagged, skipped, allow_missing_text)
    if not pairs:
        raise PairDataError(f"no usable image-text pairs in {where} ({len(rows)} rows read).\n"
                            f"{skipped.summary()}\nCheck the image paths and that captions name organs "
                            f"of the tag vocabulary ({', '.join(vocabulary.names[:8])}, ...).")
    return PairSource(pairs, skipped, where, vocabulary)


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded hold-out split (same split for every rank and after --resume)."""
    if not 0 <= val_fraction < 1:
        raise PairDataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(pairs) * val_fraction))
    if val_fraction > 0 and len(pairs) > 1:
        n_val = min(max(n_val, 1), len(pairs) - 1)
    order = np.random.default_rng(seed).permutation(len(pairs))
    val = set(order[:n_val].tolist())
    return [p for i, p in enumerate(pairs) if i not in val], [p for i, p in enumerate(pairs) if i in val]


# --------------------------------------------------------------------------- images
def is_volume(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def read_image(path: Path, rng: np.random.Generator | None) -> np.ndarray:
    """A z-scored 2D float32 image: the picture itself, or one axial slice (array axis 0) of a volume.

    Volumes are z-scored over the whole volume (as nnU-Net normalises a case), then one slice is
    taken: a random one when ``rng`` is given, the middle one otherwise.
    """
    if is_volume(path):
        from pretrain.volumes import read_volume

        volume = zscore(read_volume(path).array)
        z = int(rng.integers(volume.shape[0])) if rng is not None else volume.shape[0] // 2
        return volume[z]
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode not in ("L", "I", "I;16", "I;16B", "F"):
            img = img.convert("L")
        array = np.asarray(img, dtype=np.float32)
    if array.ndim != 2 or min(array.shape) < 2:
        raise ValueError(f"expected a 2D grey image, got shape {array.shape}")
    return zscore(array)


class PairDataset(Dataset):
    """Map-style data set over pairs. Keys are ``(index, epoch)`` (or a bare index = epoch 0).

    The per-sample generator is seeded from (seed, epoch, index): augmentation is identical
    whatever the worker count, and ``--resume`` replays the exact same samples.
    ``two_views`` adds ``view2`` (a second augmentation of the same image, negative-free objective);
    a pair without text gets ``text_for_missing(context)`` and the tags found in that text.
    """

    max_retries = 16
    #: errors that are the user's data problem (e.g. a mask off its image's grid): raised, never skipped
    fatal_errors: tuple = ()

    def __init__(self, pairs: list[Pair], num_tags: int, transform: PairTransform, seed: int = 0,
                 two_views: bool = False, text_for_missing=None, vocabulary: TagVocabulary | None = None):
        self.pairs, self.num_tags, self.transform, self.seed = pairs, num_tags, transform, seed
        self.two_views, self.text_for_missing = two_views, text_for_missing
        self.vocabulary = vocabulary or TagVocabulary.default()

    def __len__(self) -> int:
        return len(self.pairs)

    def text_and_tags(self, pair: Pair, context: dict) -> tuple[str, torch.Tensor]:
        """The pair's text and multi-hot tags; generated (with its own tags) when the pair has none."""
        text, tag_ids = pair.text, pair.tags
        if not text and self.text_for_missing is not None:
            text = self.text_for_missing(context)
            names = {n: i for i, n in enumerate(self.vocabulary.names)}
            tag_ids = [names[t] for t in extract_tags(text, self.vocabulary) if t in names]
        tags = torch.zeros(self.num_tags)
        tags[list(tag_ids)] = 1.0
        return text, tags

    def _load(self, index: int, epoch: int) -> dict:
        pair = self.pairs[index]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.transform.train else None
        raw = read_image(pair.image, rng)
        sample = {"image": self.transform(raw, rng), "index": index}
        if self.two_views:
            sample["view2"] = self.transform(raw, rng)
        context = {"image": str(pair.image), "organs": {}, "modality": None, "spacing": None,
                   "shape": tuple(raw.shape), "metadata": {}} if not pair.text and self.text_for_missing else {}
        sample["text"], sample["tags"] = self.text_and_tags(pair, context)
        return sample

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        failed = []
        for attempt in range(min(self.max_retries, len(self.pairs))):
            i = (index + attempt) % len(self.pairs)
            try:
                sample = self._load(i, epoch)
            except self.fatal_errors:
                raise
            except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable image"
                failed.append(f"{self.pairs[i].image}: {type(e).__name__}: {str(e)[:120]}")
                continue
            sample["failed"] = failed
            return sample
        raise PairDataError(f"{len(failed)} consecutive unreadable images starting at pair {index}:\n  "
                            + "\n  ".join(failed))


def collate_pairs(samples: list[dict]) -> dict:
    """Stack tensors (image, tags and, when present, view2 / mask / has_mask); list texts and failures."""
    batch = {"text": [s["text"] for s in samples], "index": torch.tensor([s["index"] for s in samples]),
             "failed": [f for s in samples for f in s["failed"]]}
    for key in ("image", "tags", "view2", "mask"):
        if all(s.get(key) is not None for s in samples):
            batch[key] = torch.stack([s[key] for s in samples])
    if "has_mask" in samples[0]:
        batch["has_mask"] = torch.tensor([bool(s["has_mask"]) for s in samples])
    return batch


def describe_source(source: PairSource) -> str:
    freq = source.tag_frequencies()
    lines = [f"Data: {source.description}: {len(source.pairs)} usable pairs",
             source.skipped.summary("Skipped before training"),
             "Tag frequencies (pairs mentioning each tag):"]
    for name in source.vocabulary.names:
        lines.append(f"  {freq.get(name, 0):7d}  {name}")
    return "\n".join(lines)


__all__ = ["Pair", "PairDataError", "PairDataset", "PairSource", "SkipReport", "build_pairs", "collate_pairs",
           "describe_source", "load_pairs", "manifest_rows", "read_image", "roco_rows", "split_pairs",
           "synthetic_manifest"]
