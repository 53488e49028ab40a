"""Where pairs come from: ROCO, a manifest of your own, the synthetic phantoms, CT-RATE.

Each source module turns its files into rows ``(id, image, text[, mask[, info]])``;
:func:`load_pairs` resolves ``--data`` to one of them and ``pretrain.pairs.build_pairs`` makes the
rows usable pairs (the rest skipped and counted). Sources never import the data sets or the engine.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_mosmos.tags import TagVocabulary
from pretrain.pairs import PairDataError, PairSource, SkipReport, build_pairs
from pretrain.sources.ctrate import read_ct_rate
from pretrain.sources.manifest import MANIFEST_HELP, manifest_rows
from pretrain.sources.roco import roco_rows
from pretrain.sources.synthetic import synthetic_manifest

DATA_SOURCES = ("roco", "manifest", "synthetic", "ct-rate")


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
        rows, ct_skipped = read_ct_rate(ct_rate_root, split)
        rows = [(rid, image, text, None, info) for rid, image, text, info in rows]
        skipped.merge(ct_skipped)
        where = f"CT-RATE {ct_rate_root} split={split}"
    else:
        raise PairDataError(f"unknown --data {data!r}; use {', '.join(DATA_SOURCES)}")
    pairs, skipped = build_pairs(rows, vocabulary, keep_untagged, skipped, allow_missing_text)
    if not pairs:
        raise PairDataError(f"no usable image-text pairs in {where} ({len(rows)} rows read).\n"
                            f"{skipped.summary()}\nCheck the image paths and that captions name organs "
                            f"of the tag vocabulary ({', '.join(vocabulary.names[:8])}, ...).")
    return PairSource(pairs, skipped, where, vocabulary)


__all__ = ["DATA_SOURCES", "load_pairs"]
