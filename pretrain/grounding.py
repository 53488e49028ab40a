"""Organ-level pairs for ``--objective organ-grounded``: which organ of which scan gets which text.

At start-up every report is split into sentences and each sentence assigned to the organ tags it
names (``nnunet_mosmos.reports.assign_sentences``, the same tag extractor as the MOSMOS tags). Label
values of the masks are mapped to tags by name (``label_to_tag``: kidney_left and kidney_right are
both "kidney", so they pool as one region and share the report's kidney sentences). Per batch, an
organ of a patch becomes a pair when its mask has at least ``min_voxels`` voxels in the patch and the
report has sentences for it; each pair also gets ``negatives_per_organ`` opposite-state phrases from
the abnormality dictionary. Reports without any assignable sentence are counted and take part in the
global losses only.
"""
from __future__ import annotations

import numpy as np
import torch

from nnunet_mosmos.tags import TagVocabulary, label_to_tag
from pretrain.pairs import SkipReport
from pretrain.objectives import MIN_ORGAN_VOXELS

NO_SENTENCE = "organ-grounded: report with no sentence naming an organ of the tag vocabulary"
NO_MASK = "organ-grounded: pair without a mask"


class OrganGrounding:
    """Sentences per (pair, organ tag) and the mask values of each tag; builds per-batch organ pairs."""

    def __init__(self, pairs, label_names: dict[int, str], vocabulary: TagVocabulary, dictionary,
                 negatives_per_organ: int = 2, min_voxels: int = MIN_ORGAN_VOXELS, seed: int = 0):
        from nnunet_mosmos.reports import assign_sentences

        self.dictionary, self.k, self.min_voxels = dictionary, negatives_per_organ, min_voxels
        self.rng = np.random.default_rng(seed)
        self.skipped = SkipReport()
        self.tag_values: dict[str, list[int]] = {}
        for value, name in sorted(label_names.items()):
            tag = label_to_tag(name, vocabulary)
            if tag is not None:
                self.tag_values.setdefault(tag, []).append(int(value))
        self.sentences: list[dict[str, str]] = []
        for pair in pairs:
            assigned = {tag: " ".join(s) for tag, s in assign_sentences(pair.text, vocabulary).items()
                        if tag in self.tag_values} if pair.text else {}
            if pair.mask is None:
                self.skipped.add(NO_MASK, pair.id)
            elif not assigned:
                self.skipped.add(NO_SENTENCE, pair.id)
            self.sentences.append(assigned)
        self.usable = sum(1 for p, s in zip(pairs, self.sentences) if p.mask is not None and s)

    def describe(self) -> str:
        tags = ", ".join(f"{t} {v}" for t, v in self.tag_values.items())
        return (f"Organ-grounded objective: {self.usable} pairs with a mask and assignable sentences; mask values "
                f"per tag: {tags or 'none (check --label-names)'}\n" + self.skipped.summary("  not grounded"))

    def batch(self, masks: torch.Tensor, indices) -> dict:
        """Organ pairs of one batch: {"items": [(b, values)], "texts", "negatives", "mask"}."""
        items, texts, negatives = [], [], []
        for b, index in enumerate(indices.tolist()):
            for tag, text in self.sentences[index].items():
                values = self.tag_values[tag]
                region = torch.isin(masks[b], torch.tensor(values, device=masks.device))
                if int(region.sum()) < self.min_voxels:
                    continue
                items.append((b, tuple(values)))
                texts.append(text)
                negatives.append(self.dictionary.negatives(tag, text, k=self.k, rng=self.rng) if self.k else [])
        return {"items": items, "texts": texts, "negatives": negatives, "mask": masks}


__all__ = ["NO_MASK", "NO_SENTENCE", "OrganGrounding"]
