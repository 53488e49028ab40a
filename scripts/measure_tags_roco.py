#!/usr/bin/env python
"""Measure organ-tag extraction on real ROCO captions, with the UMLS CUIs as weak gold.

    python scripts/measure_tags_roco.py [ROCO_ROOT] --judgements docs/tags_roco_judgements.csv

Prints, per organ: support (captions carrying the CUI), recall of the extractor against the CUI,
CUI precision (tagged captions that carry the CUI) and, with --judgements, the numbers after a
person read the disagreements: the CUIs miss many real mentions ("hepatic cyst") and carry some
wrong ones ("splenic flexure" -> spleen). ``--fp-out``/``--fn-out`` write the disagreements for
reading; ``--count`` prints how many captions each tag of a vocabulary gets (how the 20 tags
were chosen, with ``--vocab docs/tags_candidates.json``).
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnunet_mosmos.tags import TagVocabulary, extract_tags, find_mentions  # noqa: E402
from pretrain.sources.roco import ORGAN_CUIS, read_roco  # noqa: E402


def load_judgements(path: str | None) -> dict[tuple[str, str, str], str]:
    """(kind, organ, ROCO id) -> verdict, from a CSV with header kind,organ,id,verdict,note.

    kind FP (tagged, no CUI): verdict ``mention`` (a real organ mention) or ``not``;
    kind FN (CUI, not tagged): verdict ``miss`` (the rules should have tagged it) or ``not``.
    """
    if not path:
        return {}
    with open(path, encoding="utf-8", newline="") as f:
        return {(row["kind"], row["organ"], row["id"]): row["verdict"].strip() for row in csv.DictReader(f)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roco_root", nargs="?", default=str(REPO / ".." / "shared" / "data" / "roco"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--subset", default="radiology")
    parser.add_argument("--vocab", help="vocabulary JSON (default: the shipped one)")
    parser.add_argument("--count", action="store_true", help="print captions per tag and exit")
    parser.add_argument("--fp-out", help="write tagged captions without the CUI here, per organ")
    parser.add_argument("--fn-out", help="write captions with the CUI but not tagged here, per organ")
    parser.add_argument("--judgements", help="CSV kind,organ,id,verdict,note of read disagreements")
    args = parser.parse_args(argv)

    try:
        vocab = TagVocabulary.from_json(args.vocab) if args.vocab else TagVocabulary.default()
        records = read_roco(args.roco_root, args.split, args.subset)
    except ValueError as e:  # bad vocabulary or not a ROCO folder: say which file, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    tagged = {r.id: extract_tags(r.caption, vocab) for r in records}

    if args.count:
        counts = Counter(t for tags in tagged.values() for t in tags)
        print(f"{len(records)} captions ({args.split}/{args.subset}); captions per tag:")
        for rank, (tag, n) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])), start=1):
            print(f"{rank:3d}  {tag:22s} {n:5d}")
        return 0

    judgements = load_judgements(args.judgements)
    fp_lines, fn_lines = [], []
    print(f"{len(records)} captions ({args.split}/{args.subset}), vocabulary {vocab.source}")
    header = f"{'organ':12s} {'support':>7s} {'tagged':>6s} {'recall':>6s} {'CUI-prec':>8s}"
    if judgements:
        header += f" {'FP read':>7s} {'FP=mention':>10s} {'FN=miss':>7s} {'unread':>6s} {'corr-rec':>8s} {'corr-prec':>9s}"
    print(header)
    by_id = {r.id: r for r in records}
    for organ, cui in ORGAN_CUIS.items():
        gold = {r.id for r in records if cui in r.cuis}
        pred = {rid for rid, tags in tagged.items() if organ in tags}
        tp, fps, fns = gold & pred, sorted(pred - gold), sorted(gold - pred)
        line = f"{organ:12s} {len(gold):7d} {len(pred):6d} {_ratio(len(tp), len(gold)):6.3f} {_ratio(len(tp), len(pred)):8.3f}"
        if judgements:
            fp_verdicts = [judgements.get(("FP", organ, rid)) for rid in fps]
            fn_verdicts = [judgements.get(("FN", organ, rid)) for rid in fns]
            mentions = sum(v == "mention" for v in fp_verdicts)
            misses = sum(v != "not" for v in fn_verdicts)  # an unread miss counts as a miss
            unread = sum(v is None for v in fp_verdicts + fn_verdicts)  # unread FPs count as wrong
            correct = len(tp) + mentions  # agreement with the CUI is taken as correct (not read)
            line += (f" {sum(v is not None for v in fp_verdicts):7d} {mentions:10d} {misses:7d} {unread:6d}"
                     f" {_ratio(correct, correct + misses):8.3f} {_ratio(correct, len(pred)):9.3f}")
        print(line)
        for kind, ids, out in (("FP", fps, fp_lines), ("FN", fns, fn_lines)):
            for rid in ids:
                why = sorted({m.text for m in find_mentions(by_id[rid].caption, vocab) if m.tag == organ})
                out.append(f"{kind}\t{organ}\t{rid}\t{'|'.join(why)}\t{by_id[rid].caption}")
    for path, lines in ((args.fp_out, fp_lines), (args.fn_out, fn_lines)):
        if path:
            Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
            print(f"wrote {len(lines)} rows to {path}")
    return 0


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


if __name__ == "__main__":
    sys.exit(main())
