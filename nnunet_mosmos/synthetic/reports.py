"""Free-text radiology reports that are true about a phantom.

Rules that keep the text usable as weak supervision for the project's tag extractor:

* every present organ is named affirmatively at least once, as the subject of its sentence, with
  a word a radiologist would use ("liver", "spleen", "kidney", "stomach", "aorta", "gallbladder");
  adjectives ("hepatic", "splenic", "renal", "gastric") only appear alongside that;
* an absent organ is mentioned ONLY through its removal word ("splenectomy", "nephrectomy",
  "cholecystectomy"), which the extractor reads as not-an-organ-mention;
* no negated organ phrases ("no splenic lesion") and no words for structures that have no label
  (bowel, bones, lymph nodes), so the tags a report yields are exactly the labels in the image.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .phantoms import LABELS, ORGANS, Findings

_NORMAL = {
    "liver": [
        "The liver is normal in size and attenuation.",
        "The liver is normal in size, measuring {size} cm.",
        "The liver measures {size} cm in craniocaudal length, within normal limits.",
        "The liver is unremarkable, with normal hepatic contour.",
    ],
    "spleen": [
        "The spleen is normal in size.",
        "The spleen is unremarkable.",
        "The spleen measures {size} cm, within normal limits.",
        "The spleen is normal in size, measuring {size} cm.",
    ],
    "stomach": [
        "The stomach is unremarkable.",
        "The stomach is normal in appearance.",
        "The stomach is partially distended and unremarkable.",
        "The stomach shows normal gastric wall thickness.",
    ],
    "aorta": [
        "The abdominal aorta is normal in caliber.",
        "The aorta is of normal caliber.",
        "The abdominal aorta is unremarkable.",
    ],
    "gallbladder": [
        "The gallbladder is unremarkable.",
        "The gallbladder is normal in appearance.",
        "The gallbladder is normally distended.",
    ],
}
_ENLARGED = {
    "liver": [
        "The liver is enlarged, measuring {size} cm.",
        "Hepatomegaly: the liver is enlarged, measuring {size} cm in craniocaudal length.",
        "The liver is enlarged at {size} cm.",
    ],
    "spleen": [
        "The spleen is enlarged, measuring {size} cm.",
        "Splenomegaly: the spleen is enlarged, measuring {size} cm.",
        "The spleen is enlarged at {size} cm.",
    ],
}
# One-line variants for single slices: whole-organ measurements aren't visible in one slice.
_SHORT_NORMAL = {
    "liver": ["The liver is unremarkable.", "The liver appears normal."],
    "spleen": ["The spleen is unremarkable.", "The spleen appears normal."],
    "stomach": ["The stomach is unremarkable.", "The stomach appears normal."],
    "aorta": ["The aorta is normal in caliber.", "The abdominal aorta is unremarkable."],
    "gallbladder": ["The gallbladder is unremarkable.", "The gallbladder appears normal."],
}
_SHORT_ENLARGED = {
    "liver": ["The liver is enlarged.", "The liver appears enlarged."],
    "spleen": ["The spleen is enlarged.", "The spleen appears enlarged."],
}
_BOTH_KIDNEYS = [
    "Both kidneys are unremarkable.",
    "The kidneys are normal in size and enhance symmetrically.",
    "Both kidneys are normal in size, with normal renal enhancement.",
]
_ONE_KIDNEY = [
    "The {side} kidney is unremarkable.",
    "The {side} kidney is normal in size.",
    "The {side} kidney enhances normally.",
]
_REMAINING_KIDNEY = [
    "The remaining {side} kidney is normal in size.",
    "The solitary {side} kidney is unremarkable.",
]
_REMOVED = {
    "spleen": ["Status post splenectomy.", "The patient is status post splenectomy.",
               "Prior splenectomy."],
    "gallbladder": ["Status post cholecystectomy.", "Prior cholecystectomy.",
                    "The patient is status post cholecystectomy."],
    "kidney": ["Status post {side} nephrectomy.", "Prior {side} nephrectomy.",
               "The patient is status post {side} nephrectomy."],
}
_IMPRESSION_REMOVED = {
    "spleen": "Postsurgical changes of splenectomy.",
    "gallbladder": "Postsurgical changes of cholecystectomy.",
    "kidney": "Postsurgical changes of {side} nephrectomy.",
}
_HEADERS = [
    "EXAMINATION: CT abdomen with intravenous contrast.",
    "EXAMINATION: Contrast-enhanced CT of the abdomen.",
    "EXAMINATION: CT ABDOMEN WITH CONTRAST.",
]
_FILLERS = ["No free fluid.", "No free air.", "No ascites."]
_SLICE_HEADERS = [
    "Axial contrast-enhanced CT image of the abdomen.",
    "Axial CT slice of the abdomen.",
    "Contrast-enhanced axial CT image.",
]


def _side(organ: str) -> str:
    return organ.split("_")[1]


def _pick(rng: np.random.Generator, options: list[str], **fmt) -> str:
    return options[int(rng.integers(len(options)))].format(**fmt)


def _organ_sentence(organ: str, findings: Findings, rng, short: bool) -> str:
    size = findings.size_cm.get(organ)
    big = organ in findings.enlarged
    if short:
        table = _SHORT_ENLARGED if big else _SHORT_NORMAL
    else:
        table = _ENLARGED if big else _NORMAL
    options = table[organ]
    if size is None:
        options = [o for o in options if "{size}" not in o]
    return _pick(rng, options, size=f"{size:.1f}" if size is not None else "")


def _kidney_sentences(visible: Iterable[str], findings: Findings, rng, short: bool) -> list[str]:
    visible = [o for o in ("kidney_right", "kidney_left") if o in visible]
    if len(visible) == 2:
        return [_pick(rng, _BOTH_KIDNEYS[:1] if short else _BOTH_KIDNEYS)]
    if len(visible) == 1:
        removed = [o for o in ("kidney_right", "kidney_left") if o in findings.absent]
        options = _ONE_KIDNEY if short or not removed else _ONE_KIDNEY + _REMAINING_KIDNEY
        return [_pick(rng, options, side=_side(visible[0]))]
    return []


def _removal_sentences(findings: Findings, rng) -> list[str]:
    out = []
    for organ in ORGANS:  # label order keeps the text stable for a given findings
        if organ not in findings.absent:
            continue
        if organ.startswith("kidney"):
            out.append(_pick(rng, _REMOVED["kidney"], side=_side(organ)))
        else:
            out.append(_pick(rng, _REMOVED[organ]))
    return out


def _findings_sentences(organs: Iterable[str], findings: Findings, rng, short: bool) -> list[str]:
    """Organ sentences in the order a radiologist dictates: liver → aorta."""
    organs = set(organs)
    out = []
    for organ in ("liver", "gallbladder", "spleen", "stomach"):
        if organ in organs:
            out.append(_organ_sentence(organ, findings, rng, short))
    out += _kidney_sentences(organs, findings, rng, short)
    if "aorta" in organs:
        out.append(_organ_sentence("aorta", findings, rng, short))
    return out


def case_report(findings: Findings, rng: np.random.Generator) -> str:
    """Full report (header, FINDINGS, IMPRESSION) for one 3D phantom; lines joined by '\\n'."""
    body = _removal_sentences(findings, rng) + _findings_sentences(findings.present, findings, rng,
                                                                    short=False)
    if rng.random() < 0.7:
        body.append(_pick(rng, _FILLERS))

    impression = []
    if "liver" in findings.enlarged:
        impression.append("Hepatomegaly.")
    if "spleen" in findings.enlarged:
        impression.append("Splenomegaly.")
    for organ in ORGANS:
        if organ in findings.absent:
            key = "kidney" if organ.startswith("kidney") else organ
            side = _side(organ) if key == "kidney" else ""
            impression.append(_IMPRESSION_REMOVED[key].format(side=side))
    if not impression:
        impression.append(_pick(rng, ["No acute abnormality in the abdomen.",
                                      "Unremarkable CT of the abdomen."]))
    elif rng.random() < 0.5:
        impression.append("No other acute abnormality.")
    return "\n".join([_pick(rng, _HEADERS), "FINDINGS: " + " ".join(body),
                      "IMPRESSION: " + " ".join(impression)]) + "\n"


def slice_report(visible: Iterable[str], findings: Findings, rng: np.random.Generator) -> str:
    """One-line report of the organs ``visible`` in a 2D slice (no measurements, no history)."""
    sentences = _findings_sentences(visible, findings, rng, short=True)
    return " ".join([_pick(rng, _SLICE_HEADERS)] + sentences)


def visible_organs(label_slice: np.ndarray, min_pixels: int = 4) -> list[str]:
    """Organs with at least ``min_pixels`` pixels in a 2D label slice, in label order.

    The threshold keeps a one-pixel sliver at an organ's tip from being "described" in the text.
    """
    counts = np.bincount(label_slice.ravel(), minlength=len(LABELS))
    return [o for o in ORGANS if counts[LABELS[o]] >= min_pixels]
