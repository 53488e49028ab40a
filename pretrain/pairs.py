"""The pre-training data's core types: a :class:`Pair`, why pairs were skipped, the data errors.

Every source (``pretrain/sources/``) turns its rows into the same list of :class:`Pair` (image path,
caption, tag indices), so the engine never knows where pairs came from. Bad pairs are skipped and
counted, never fatal, because real collections always contain some (ROCO figures whose download
failed, captions without an organ): cheap problems (missing file, empty / non-UTF-8 caption, no
tag) are found here, before training starts; unreadable images are found when loaded
(``pretrain/datasets.py``), replaced by the next readable pair and reported at the end. Only a wrong
layout, a malformed manifest or *zero* usable pairs is a hard error.

This module imports nothing else of ``pretrain``: sources, data sets and the engine all build on it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_mosmos.tags import TagVocabulary, extract_tags

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


class PairDataError(ValueError):
    """No usable pairs, or a manifest/data folder that cannot be read; the message says why."""


class GeometryError(PairDataError):
    """A label map that is not on its image's voxel grid (the user's data error: never skipped)."""


class ConstantImageError(ValueError):
    """An image or volume whose every value is the same (all black): it carries nothing to learn from,
    so it is replaced by the next pair and counted, like an unreadable image."""


def is_volume(path: Path) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


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


def describe_source(source: PairSource) -> str:
    freq = source.tag_frequencies()
    lines = [f"Data: {source.description}: {len(source.pairs)} usable pairs",
             source.skipped.summary("Skipped before training"),
             "Tag frequencies (pairs mentioning each tag):"]
    for name in source.vocabulary.names:
        lines.append(f"  {freq.get(name, 0):7d}  {name}")
    return "\n".join(lines)


__all__ = ["ConstantImageError", "GeometryError", "Pair", "PairDataError", "PairSource", "SkipReport",
           "VOLUME_SUFFIXES", "build_pairs", "describe_source", "is_volume", "split_pairs"]
