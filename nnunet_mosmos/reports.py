"""Report text for organ-level objectives: sentences, organ assignment, abnormality phrases, templates.

``--objective organ-grounded`` (CT-GLIP) contrasts the features pooled inside each organ's mask
with *that organ's* sentences, so a report must be cut into sentences and each sentence given
to the organs it talks about. The same tag rules as the MOSMOS tags decide ("hepatic" -> liver),
so the two objectives never disagree about which organ a sentence describes. An editable
abnormality dictionary then supplies hard negatives: the same organ described in the opposite
state ("the liver contains a hypodense lesion" against a normal liver sentence).

``--objective negative-free`` (GTGM) needs text for images that have none. The default is a
plain template from the label map's organ names and volumes; any callable taking the context
dict can replace it (:func:`load_text_generator`), e.g. a local captioning model.

Format and rules: ``docs/report_text.md``. Standard library + numpy only (runs in data workers).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from nnunet_mosmos.tags import TagVocabulary, find_mentions, label_to_prompt

__all__ = [
    "AbnormalityDictionary",
    "AbnormalityDictionaryError",
    "assign_sentences",
    "generate_text",
    "load_text_generator",
    "split_sentences",
    "template_report",
]

DEFAULT_DICTIONARY_PATH = Path(__file__).resolve().parent / "data" / "abnormality_dictionary.json"
DICTIONARY_FORMAT = "mosmos-abnormality-dictionary"
POLARITIES = ("normal", "abnormal")

# --------------------------------------------------------------------------- sentence splitting
#: Report section names that are layout, not content; removed wherever they stand before a colon.
_SECTION_NAMES = (
    "findings", "impression", "impressions", "conclusion", "conclusions", "history", "clinical history",
    "clinical information", "clinical indication", "indication", "indications", "reason for exam",
    "reason for examination", "comparison", "comparisons", "technique", "examination", "exam", "procedure",
    "report", "result", "results", "recommendation", "recommendations", "opinion", "summary", "diagnosis",
    "addendum", "final report")
_SECTION_RX = re.compile(r"(?<![\w-])(?:%s)\s*:" % "|".join(
    re.escape(s).replace(r"\ ", r"\s+") for s in sorted(_SECTION_NAMES, key=len, reverse=True)), re.IGNORECASE)
_SECTION_ONLY_RX = re.compile(r"^(?:%s)\W*$" % "|".join(re.escape(s) for s in _SECTION_NAMES), re.IGNORECASE)
#: A period after these never ends a sentence ("Dr. Sellars", "e.g. the liver", "approx. 3 cm").
_ABBREVIATIONS = frozenset(
    "dr mr mrs ms prof pr st e.g i.e approx vs cf fig figs no nos ca incl resp al ref pt pts sr jr".split())
#: ... and after these only when a capitalised word (not an anonymisation token) follows.
_WEAK_ABBREVIATIONS = frozenset("etc a.m p.m".split())
_ANONYMISED = re.compile(r"\bX{2,}\b")
_END_RX = re.compile(r"[.!?]+(?=\s|$)")
_GLUED_END_RX = re.compile(r"(?<=[a-z]{3}[.!?])(?=[A-Z][a-z]{2})")  # "axial image.Pulmonary trunk"
_BULLET_RX = re.compile(r"^(?:[-*\u2022\u00b7\u2013\u2014>]+|\(?(?:\d{1,2}|[A-Ha-h])[.)])\s+")
_HEADER_RX = re.compile(r"^([A-Za-z][\w&/ -]{0,40}?)\s*:\s+")  # "Chest: ", "Left knee: ", "LIVER: "
_NEWLINE_RX = re.compile(r"[ \t]*\n\s*")


def split_sentences(report: str, vocabulary: TagVocabulary | None = None) -> list[str]:
    """Sentences of a radiology report, cleaned for a text encoder.

    Rules (docs/report_text.md): a sentence ends at ``.``/``!``/``?`` followed by white space,
    except after abbreviations (Dr., e.g., i.e., approx., vs., R.E.N.A.L.) and inside decimals
    ("1.5 cm" never splits because no space follows the point). A line break ends a sentence
    unless the next line starts in lower case (a wrapped line). Enumeration markers ("1.",
    "2)", "B."), bullets and section headers ("FINDINGS:", "IMPRESSION:", "Chest:") are removed,
    but a header naming an organ ("LIVER: normal.") is kept because it says which organ the
    sentence is about (``vocabulary``: the tag rules that decide this, default vocabulary if None).
    ``XXXX`` anonymisation tokens stay; a sentence made only of them, of
    punctuation or of a header is dropped. White space is collapsed. Never returns "".
    """
    if not isinstance(report, str):
        raise TypeError(f"report must be a str, got {type(report).__name__}")
    text = report.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    text = _SECTION_RX.sub("\n", text)
    text = _GLUED_END_RX.sub(" ", text)
    sentences = []
    for chunk in _join_wrapped_lines(text):
        for raw in _split_chunk(chunk):
            sentence = _clean_sentence(raw, vocabulary)
            if sentence:
                sentences.append(sentence)
    return sentences


def _join_wrapped_lines(text: str) -> list[str]:
    """Chunks separated by meaningful line breaks; wrapped lines (next starts lower-case) are joined."""
    chunks: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            chunks.append("")
            continue
        if chunks and chunks[-1] and line[0].islower():
            chunks[-1] += " " + line
        else:
            chunks.append(line)
    return [c for c in chunks if c]


def _split_chunk(chunk: str) -> list[str]:
    pieces, start = [], 0
    for end in _END_RX.finditer(chunk):
        before = chunk[start:end.start()]
        last_word = before.rsplit(None, 1)[-1] if before.strip() else ""
        token = last_word.lower().lstrip("([\"'")
        is_first_token = len(before.split()) == 1
        following = chunk[end.end():].split(None, 1)
        next_word = following[0] if following else ""
        if token in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.){1,}[a-z]", token):
            continue  # "Dr.", "e.g.", "R.E.N.A.L."
        if token in _WEAK_ABBREVIATIONS and not (next_word[:1].isupper() and not _ANONYMISED.match(next_word)):
            continue
        if is_first_token and re.fullmatch(r"\(?(?:\d{1,2}|[a-h])\)?", token) and end.group() == ".":
            continue  # enumeration marker "1." / "B." at the start of a sentence
        if re.fullmatch(r"[A-H]", last_word) and before.rstrip()[:-1].rstrip().endswith((")", "]")):
            cut = start + len(before.rstrip()) - 1  # caption panels: "... (arrow) B. contrast-enhanced CT ..."
            pieces.append(chunk[start:cut])
            start = cut
            continue
        pieces.append(chunk[start:end.end()])
        start = end.end()
    pieces.append(chunk[start:])
    return pieces


def _clean_sentence(raw: str, vocabulary: TagVocabulary | None) -> str:
    sentence = " ".join(raw.split())
    previous = None
    while sentence != previous:  # "IMPRESSION: 1. - Chest: ..." peels off in several rounds
        previous = sentence
        sentence = _BULLET_RX.sub("", sentence)
        header = _HEADER_RX.match(sentence)
        if header and len(header.group(1).split()) <= 4 and not find_mentions(header.group(1), vocabulary):
            sentence = sentence[header.end():]
        if re.fullmatch(r"(?:\d{1,2}|[A-Ha-h])[.)]?", sentence):
            sentence = ""  # a lone enumeration marker ("5." at the end of a list)
    sentence = re.sub(r"\s*([.!?])(?:\s*[.!?])+$", r"\1", sentence)  # "effusion.." / "findings. ."
    sentence = re.sub(r"\s+([.,;:!?])", r"\1", sentence).strip()
    content = _ANONYMISED.sub("", sentence)
    if not re.search(r"[A-Za-z0-9]", content) or _SECTION_ONLY_RX.match(sentence):
        return ""
    return sentence


# --------------------------------------------------------------------------- organ assignment
def assign_sentences(report: str, vocabulary: TagVocabulary | None = None) -> dict[str, list[str]]:
    """Organ tag -> the report's sentences that mention it, in report order.

    A mention is whatever :func:`nnunet_mosmos.tags.find_mentions` finds in the sentence (the
    MOSMOS tag rules: synonyms, adjectives, parts, organ-specific findings, ambiguity resolved
    inside the sentence). Negated mentions count ("no focal liver lesion" describes the liver).
    A sentence naming two organs goes to both; sentences naming none are dropped. Organs are
    listed in order of first mention.
    """
    assigned: dict[str, list[str]] = {}
    for sentence in split_sentences(report, vocabulary):
        for tag in dict.fromkeys(m.tag for m in find_mentions(sentence, vocabulary)):
            assigned.setdefault(tag, []).append(sentence)
    return assigned


# --------------------------------------------------------------------------- abnormality dictionary
class AbnormalityDictionaryError(ValueError):
    """A malformed abnormality dictionary; the message names the file and the entry."""


# Negation (NegEx-style, English grammar rather than organ vocabulary, hence in code):
# a trigger before an abnormal cue negates it until a clause terminator; a trigger right after
# it ("effusion is not seen") negates it too; pseudo-negations are no negations at all.
_PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without)\s+(?:significant\s+|interval\s+|further\s+|appreciable\s+)?(?:change|increase|progression)\w*"
    r"|\bnot\s+(?:only|necessarily|excluded|ruled\s+out)\b|\bcan\s*not\s+(?:be\s+)?(?:exclude|excluded|rule|ruled)\b"
    r"|\bcannot\s+(?:be\s+)?(?:exclude|excluded|rule|ruled)\w*(?:\s+out)?", re.IGNORECASE)
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|negative\s+for|free\s+of|clear\s+of|absence\s+of|absent|neither|nor|resolution\s+of|"
    r"resolved|never|non)\b", re.IGNORECASE)
_NEGATION_AFTER = re.compile(
    r"^[\w\s-]{0,30}?\b(?:(?:is|are|was|were|has|have|been)\s+)*(?:not\s+(?:seen|identified|present|visible|"
    r"visualized|visualised|demonstrated|evident|appreciated|noted|detected|found|enlarged|dilated)|absent|"
    r"resolved|ruled\s+out|excluded|no\s+longer)\b", re.IGNORECASE)
_SCOPE_END = re.compile(
    r"[;:]|[.!?](?=\s|$)|\b(?:but|however|although|though|whereas|while|except|apart|aside|which|who|whose|yet)\b"
    r"|,\s*(?:the|there|this|it|its)\b|\band\s+(?:the|there|a|an|is|are|has|have)\b", re.IGNORECASE)
_CLAUSE_BREAK = re.compile(r"[,;:]|[.!?](?=\s|$)|\b(?:but|however|although|though|whereas|while|with|and|also)\b",
                           re.IGNORECASE)
_NOT_BEFORE_NORMAL = re.compile(r"\b(?:not|non|no\s+longer)\s+(?:\w+\s+){0,2}$", re.IGNORECASE)


@dataclass
class AbnormalityDictionary:
    """Per-organ normal/abnormal phrases (extra negatives) and the cue words that classify a sentence.

    ``entries``: organ tag -> {"normal": [...], "abnormal": [...]}; the "_default" entry holds
    generic phrases with "{organ}" for organs without an entry. ``cues``: {"normal": [...],
    "abnormal": [...]} regular expressions matched as whole words, case-insensitive.
    """

    entries: dict[str, dict[str, list[str]]]
    cues: dict[str, list[str]]
    source: str = field(default="<dict>", compare=False)
    vocabulary: TagVocabulary | None = field(default=None, compare=False, repr=False)  # None: default tags

    def __post_init__(self):
        self._cue_rx = {p: re.compile(r"\b(?:%s)\b" % "|".join(f"(?:{c})" for c in self.cues[p]), re.IGNORECASE)
                        for p in POLARITIES}

    @classmethod
    def default(cls) -> "AbnormalityDictionary":
        """The shipped dictionary (``nnunet_mosmos/data/abnormality_dictionary.json``)."""
        return cls.from_json(DEFAULT_DICTIONARY_PATH)

    @classmethod
    def from_json(cls, path: str | os.PathLike, vocabulary: TagVocabulary | None = None) -> "AbnormalityDictionary":
        """A user-edited copy; every problem raises :class:`AbnormalityDictionaryError` naming ``path``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AbnormalityDictionaryError(
                f"abnormality dictionary {path} does not exist (start from a copy of {DEFAULT_DICTIONARY_PATH})") \
                from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AbnormalityDictionaryError(f"abnormality dictionary {path} is not readable JSON: {e}") from None
        return cls.from_dict(data, source=str(path), vocabulary=vocabulary)

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "<dict>",
                  vocabulary: TagVocabulary | None = None) -> "AbnormalityDictionary":
        return _parse_dictionary(data, source, vocabulary or TagVocabulary.default())

    # ------------------------------------------------------------------ classification
    def polarity(self, organ: str, sentence: str) -> str | None:
        """"normal", "abnormal" or None (no cue) for what ``sentence`` says about ``organ``.

        Cues are looked for in the clauses that mention the organ ("Heart size normal, lung
        nodule" -> heart normal), else in the whole sentence. A negated abnormal cue reads as
        normal ("no focal liver lesion", "lesion is not seen"); "not normal" reads abnormal.
        Any un-negated abnormal cue wins over normal cues ("mildly enlarged, otherwise normal").
        """
        text = _PSEUDO_NEGATION.sub(lambda m: " " * len(m.group()), sentence)
        cues = [(m.start(), m.end(), p) for p in POLARITIES for m in self._cue_rx[p].finditer(text)]
        if not cues:
            return None
        spans = _organ_clauses(organ, text, self.vocabulary)
        local = [c for c in cues if any(s <= c[0] < e for s, e in spans)]
        votes = set()
        for start, end, kind in local or cues:
            negated = _negated(text, start, end) if kind == "abnormal" else bool(
                _NOT_BEFORE_NORMAL.search(text[:start]))
            votes.add(kind if not negated else ("normal" if kind == "abnormal" else "abnormal"))
        return "abnormal" if "abnormal" in votes else "normal"

    def negatives(self, organ: str, sentence: str, k: int = 1,
                  rng: np.random.Generator | None = None) -> list[str]:
        """``k`` phrases describing ``organ`` in the state opposite to ``sentence``.

        Undecided sentences count as normal (most report sentences about an organ are), so they
        get abnormal phrases. Organs without an entry use "_default" with "{organ}" filled in.
        Always exactly ``k`` phrases (repeating when the list is shorter), so negatives stack
        into a tensor. Without ``rng`` the choice depends only on the sentence (reproducible).
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        opposite = "normal" if self.polarity(organ, sentence) == "abnormal" else "abnormal"
        phrases = self.phrases(organ, opposite)
        if rng is None:
            offset = zlib.crc32(f"{organ}\n{sentence}".encode("utf-8")) % len(phrases)
            order = phrases[offset:] + phrases[:offset]
        else:
            order = [phrases[i] for i in rng.permutation(len(phrases))]
        return [order[i % len(order)] for i in range(k)]

    def phrases(self, organ: str, polarity: str) -> list[str]:
        """The organ's ``polarity`` phrases (the "_default" ones with the organ name filled in)."""
        if polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
        if organ in self.entries:
            return list(self.entries[organ][polarity])
        return [p.replace("{organ}", organ) for p in self.entries["_default"][polarity]]


def _organ_clauses(organ: str, text: str, vocabulary: TagVocabulary | None) -> list[tuple[int, int]]:
    """Character spans of the clauses that mention ``organ`` (by the tag rules)."""
    mentions = [m for m in find_mentions(text, vocabulary) if m.tag == organ]
    if not mentions:
        return []
    bounds = [0] + [m.start() for m in _CLAUSE_BREAK.finditer(text)] + [len(text)]
    spans = []
    for s, e in zip(bounds, bounds[1:]):
        if any(s <= m.start < e for m in mentions):
            spans.append((s, e))
    return spans


def _negated(text: str, start: int, end: int) -> bool:
    """NegEx-style: a negation trigger earlier in the same scope, or a post-negation right after."""
    scope_start = 0
    for m in _SCOPE_END.finditer(text, 0, start):
        scope_start = m.end()
    if _NEGATION_BEFORE.search(text, scope_start, start):
        return True
    after = text[end:]
    stop = _SCOPE_END.search(after)
    return bool(_NEGATION_AFTER.match(after[:stop.start()] if stop else after))


def _parse_dictionary(data, source: str, vocabulary: TagVocabulary) -> AbnormalityDictionary:
    def fail(msg: str):
        raise AbnormalityDictionaryError(
            f"abnormality dictionary {source}: {msg} (format: docs/report_text.md, example: "
            f"{DEFAULT_DICTIONARY_PATH})")

    def phrase_list(obj, where: str) -> list[str]:
        if not isinstance(obj, list) or not obj or not all(isinstance(s, str) and s.strip() for s in obj):
            fail(f"{where} must be a non-empty list of non-empty strings")
        return [" ".join(s.split()) for s in obj]

    if not isinstance(data, Mapping):
        fail("top level must be a JSON object with 'cues' and 'organs'")
    if data.get("format", DICTIONARY_FORMAT) != DICTIONARY_FORMAT:
        fail(f"'format' is {data.get('format')!r}, expected {DICTIONARY_FORMAT!r}")
    unknown_keys = set(data) - {"format", "version", "description", "cues", "organs"}
    if unknown_keys:
        fail(f"unknown top-level keys {sorted(unknown_keys)}")
    cues, organs = data.get("cues"), data.get("organs")
    if not isinstance(cues, Mapping) or set(cues) != set(POLARITIES):
        fail("'cues' must be an object with exactly the keys 'normal' and 'abnormal'")
    cues = {p: phrase_list(cues[p], f"cues[{p!r}]") for p in POLARITIES}
    for p in POLARITIES:
        for cue in cues[p]:
            try:
                re.compile(cue)
            except re.error as e:
                fail(f"cue {cue!r} under {p!r} is not a valid regular expression: {e}")
    if not isinstance(organs, Mapping) or not organs:
        fail("'organs' must be a non-empty object: organ tag -> {'normal': [...], 'abnormal': [...]}")
    if "_default" not in organs:
        fail("'organs' needs a '_default' entry (generic phrases with '{organ}') for organs without one")
    unknown = sorted(set(organs) - set(vocabulary.names) - {"_default"})
    if unknown:
        fail(f"organs {unknown} are not tags of the vocabulary {vocabulary.source}; valid: {vocabulary.names}")
    entries = {}
    for organ, entry in organs.items():
        if not isinstance(entry, Mapping) or set(entry) - {"normal", "abnormal", "comment"}:
            fail(f"organ {organ!r} must map to {{'normal': [...], 'abnormal': [...]}}")
        entries[organ] = {p: phrase_list(entry.get(p), f"organ {organ!r} {p!r}") for p in POLARITIES}
    dictionary = AbnormalityDictionary(entries, cues, source, vocabulary)
    for organ, entry in entries.items():  # a negative that reads as the wrong state would teach the opposite
        for p in POLARITIES:
            for phrase in entry[p]:
                if organ == "_default" and "{organ}" not in phrase:
                    fail(f"'_default' phrase {phrase!r} lacks the '{{organ}}' placeholder")
                name = "liver" if organ == "_default" else organ
                filled = phrase.replace("{organ}", name)
                if organ != "_default" and organ not in {m.tag for m in find_mentions(filled, vocabulary)}:
                    fail(f"organ {organ!r} phrase {phrase!r} does not name the organ (the tag rules find no "
                         f"{organ!r} in it)")
                read = dictionary.polarity(name, filled)
                if read is not None and read != p:
                    fail(f"organ {organ!r} phrase {phrase!r} is listed as {p!r} but the cues read it as {read!r}")
    return dictionary


# --------------------------------------------------------------------------- text for images without a report
_MODALITY_NAMES = {
    "ct": "CT volume", "mr": "MR volume", "mri": "MR volume", "pt": "PET volume", "pet": "PET volume",
    "cr": "X-ray image", "dx": "X-ray image", "xr": "X-ray image", "x-ray": "X-ray image", "xray": "X-ray image",
    "us": "Ultrasound image", "ultrasound": "Ultrasound image", "mg": "Mammogram", "nm": "Nuclear medicine image",
}
#: Metadata rendered into the text; a whitelist, so identifiers (PatientName, IDs, paths) never reach it.
_METADATA_FIELDS = (
    (("body_part", "bodypartexamined", "region"), "Body region"),
    (("description", "seriesdescription", "studydescription"), "Description"),
    (("contrast", "contrastbolusagent"), "Contrast"),
    (("phase",), "Phase"),
)


def _volume_text(ml: float) -> str:
    """Rounded like a report would: 1514 -> "1510 mL", 42.4 -> "42 mL", 0.3 -> "small"."""
    if ml < 1:
        return "small"
    if ml >= 100:
        return f"{int(round(ml, -1))} mL"
    return f"{int(round(ml))} mL"


def template_report(organs: dict[str, float], modality: str | None = None, metadata: dict | None = None) -> str:
    """Generated text for an image without a report (GTGM's role for a captioner, done by a template).

    ``organs``: label name -> volume in mL (label names become readable prompts, "kidney_right"
    -> "right kidney"); organs with volume 0 are absent and skipped; largest first. ``modality``
    (or ``metadata["modality"]``) gives the first sentence; whitelisted metadata fields follow.
    Never empty: without anything to say it is "Medical image.".
    """
    metadata = {str(k).lower().replace(" ", "").replace("_", "") if k else k: v
                for k, v in (metadata or {}).items()}
    modality = modality or metadata.get("modality")
    sentences = []
    if isinstance(modality, str) and modality.strip():
        key = modality.strip().lower()
        sentences.append(_MODALITY_NAMES.get(key, f"{modality.strip()} image") + ".")
    visible = []
    for name, ml in organs.items():
        try:
            ml = float(ml)
        except (TypeError, ValueError):
            raise ValueError(f"organ {name!r}: volume {ml!r} is not a number (expected mL)") from None
        if not math.isfinite(ml) or ml < 0:
            raise ValueError(f"organ {name!r}: volume {ml!r} must be a finite number of mL >= 0")
        if ml > 0:
            visible.append((-ml, label_to_prompt(name), ml))
    if visible:
        items = ", ".join(f"{prompt} ({_volume_text(ml)})" for _, prompt, ml in sorted(visible))
        sentences.append(f"Visible organs: {items}.")
    for keys, title in _METADATA_FIELDS:
        value = next((metadata[k.replace("_", "")] for k in keys if metadata.get(k.replace("_", ""))), None)
        if isinstance(value, (str, int, float)) and str(value).strip() and len(str(value)) <= 80:
            sentences.append(f"{title}: {' '.join(str(value).split()).rstrip('.').lower()}.")
    if not sentences:
        return "Medical image."
    if not (isinstance(modality, str) and modality.strip()):
        sentences.insert(0, "Medical image.")
    return " ".join(sentences)


def generate_text(context: dict) -> str:
    """The default text generator: :func:`template_report` of the context's organs and metadata.

    ``context`` = {"image": path str, "organs": {label name: mL}, "modality": str | None,
    "spacing": tuple, "shape": tuple, "metadata": dict}. A replacement takes the same dict and
    returns a non-empty str (see :func:`load_text_generator`).
    """
    if not isinstance(context, Mapping):
        raise TypeError(f"text generator context must be a dict, got {type(context).__name__}")
    return template_report(context.get("organs") or {}, context.get("modality"), context.get("metadata"))


_GENERATOR_SIGNATURE = "def generate(context: dict) -> str  (context keys: image, organs, modality, spacing, " \
                       "shape, metadata)"


class _CheckedGenerator:
    """A user generator that must return a non-empty str; pickles as its spec (data-loader workers)."""

    def __init__(self, spec: str, function: Callable[[dict], str]):
        self.spec, self.function = spec, function

    def __call__(self, context: dict) -> str:
        text = self.function(context)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text generator {self.spec!r} returned {text!r}; it must return a non-empty str "
                             f"({_GENERATOR_SIGNATURE})")
        return text

    def __reduce__(self):
        return load_text_generator, (self.spec,)

    def __repr__(self) -> str:
        return f"TextGenerator({self.spec!r})"


def load_text_generator(spec: str | None) -> Callable[[dict], str]:
    """The text generator named by ``spec``: None -> :func:`generate_text`.

    ``"package.module:function"`` imports a module; ``"path/to/file.py:function"`` loads a file.
    This is the hook for a captioning model (an LLM/VLM run locally): nothing is downloaded here.
    Every failure raises one ValueError naming the spec and the expected signature.
    """
    if spec is None:
        return generate_text
    if not isinstance(spec, str) or ":" not in spec.strip(":") or not spec.rsplit(":", 1)[1].strip():
        raise ValueError(f"text generator {spec!r} must look like 'package.module:function' or "
                         f"'path/to/file.py:function' ({_GENERATOR_SIGNATURE})")
    target, attribute = (s.strip() for s in spec.rsplit(":", 1))
    try:
        if target.endswith(".py") or os.sep in target or "/" in target:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"file {path} does not exist")
            module_name = f"_mosmos_text_generator_{zlib.crc32(str(path).encode()):08x}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as e:  # noqa: BLE001 - any import failure gets the same actionable message
        raise ValueError(f"text generator {spec!r}: cannot import {target!r} ({type(e).__name__}: {e}); "
                         f"expected {_GENERATOR_SIGNATURE}") from e
    function = getattr(module, attribute, None)
    if function is None:
        raise ValueError(f"text generator {spec!r}: {target!r} has no attribute {attribute!r}; "
                         f"expected {_GENERATOR_SIGNATURE}")
    if not callable(function):
        raise ValueError(f"text generator {spec!r}: {attribute!r} is a {type(function).__name__}, not callable; "
                         f"expected {_GENERATOR_SIGNATURE}")
    return _CheckedGenerator(spec, function)
