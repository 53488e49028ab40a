"""Organ tags: the closed vocabulary that links report text to segmentation classes.

MOSMOS never asks anyone to annotate tags; they are mined from the report (or caption) by
rules. Those rules live in a JSON vocabulary (``data/organ_tags.json`` by default, format in
``docs/tags.md``) so that a user can adapt them without touching code. This module turns that
vocabulary into regexes once, extracts tags from text, and turns nnU-Net ``dataset.json`` label
names into the text prompts (and, where possible, the tags) used at fine-tuning.

Only the standard library is used: the synthetic-data generator, the pre-training data sets and
the nnU-Net trainers all import this module, some of them in processes without torch.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

__all__ = [
    "ENV_PROMPTS",
    "AmbiguousTerm",
    "TagMention",
    "TagSpec",
    "TagVocabulary",
    "UninformativeLabelWarning",
    "class_prompts",
    "extract_tags",
    "find_mentions",
    "label_to_prompt",
    "label_to_tag",
    "uninformative_prompts",
]

DEFAULT_VOCABULARY_PATH = Path(__file__).resolve().parent / "data" / "organ_tags.json"
#: the environment variable through which nnUNetv2_train users give the prompt override file
ENV_PROMPTS = "MOSMOS_PROMPTS"
VOCABULARY_FORMAT = "mosmos-tag-vocabulary"


# --------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class TagSpec:
    """One canonical tag and every phrase that names it (case-insensitive) or implies it."""

    name: str
    terms: tuple[str, ...] = ()
    abbreviations: tuple[str, ...] = ()  # matched case-sensitively ("IVC", not "ivc" in prose)
    implied_by: tuple[str, ...] = ()  # sub-structures and organ-specific findings


@dataclass(frozen=True)
class AmbiguousTerm:
    """A word whose organ depends on context ("ventricle", "lobe").

    Resolution: the nearest cue in the text wins. Cues are the listed words of each sense plus
    every unambiguous mention of the sense's tag, so "right lobe of the liver" resolves to liver
    without listing "liver" as a cue. Without any cue the ``default`` (may be None) is used.
    A sense whose tag is None marks a non-organ reading ("lobe" of the pituitary gland).
    ``window`` (characters) limits how far a cue may be, which also switches off cues further
    away: "lower lobe" is the lung's unless "of the liver" follows at once, so "right lower lobe
    and liver metastases" keeps both organs.
    """

    term: str
    default: str | None
    senses: tuple[tuple[str | None, tuple[str, ...]], ...]
    window: int | None = None


@dataclass(frozen=True)
class TagVocabulary:
    """Ordered organ tags plus the phrase rules that find them in text.

    Frozen and hashable so compiled regexes can be cached per vocabulary; the order of
    ``tags`` is the order of the tag queries in the networks, so it is part of a checkpoint.
    """

    tags: tuple[TagSpec, ...]
    ambiguous: tuple[AmbiguousTerm, ...] = ()
    not_mentions: tuple[str, ...] = ()
    source: str = field(default="<dict>", compare=False)
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self):
        # hashed on every extraction (regex cache key): compute once, not over ~2,000 phrases each time
        object.__setattr__(self, "_hash", hash((self.tags, self.ambiguous, self.not_mentions)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tags]

    def __len__(self) -> int:
        return len(self.tags)

    @classmethod
    def default(cls) -> "TagVocabulary":
        """The shipped 20-organ vocabulary (chosen from ROCO caption counts, see docs/tags.md)."""
        return _default_vocabulary()

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TagVocabulary":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"tag vocabulary file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"tag vocabulary file {path} is not readable JSON: {e}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "<dict>") -> "TagVocabulary":
        """Validate and build; every error names ``source`` and the offending entry."""
        return _parse_vocabulary(data, source)

    def to_dict(self) -> dict:
        """JSON-ready form (stored in checkpoints so fine-tuning uses the pre-training tags)."""
        return {
            "format": VOCABULARY_FORMAT,
            "version": 1,
            "tags": [
                {"name": t.name, "terms": list(t.terms), "abbreviations": list(t.abbreviations),
                 "implied_by": list(t.implied_by)}
                for t in self.tags
            ],
            "ambiguous": [
                {"term": a.term, "default": a.default, "window": a.window,
                 "senses": [{"tag": tag, "cues": list(cues)} for tag, cues in a.senses]}
                for a in self.ambiguous
            ],
            "not_mentions": list(self.not_mentions),
        }


class _VocabularyError(ValueError):
    pass


def _parse_vocabulary(data: Mapping, source: str) -> TagVocabulary:
    def fail(msg: str):
        raise _VocabularyError(
            f"tag vocabulary {source}: {msg} (format: docs/tags.md, example: {DEFAULT_VOCABULARY_PATH})")

    def str_list(obj, where: str) -> tuple[str, ...]:
        if obj is None:
            return ()
        if not isinstance(obj, list) or not all(isinstance(s, str) and s.strip() for s in obj):
            fail(f"{where} must be a list of non-empty strings")
        return tuple(s.strip() for s in obj)

    if not isinstance(data, Mapping):
        fail("top level must be a JSON object with a 'tags' list")
    if data.get("format", VOCABULARY_FORMAT) != VOCABULARY_FORMAT:
        fail(f"'format' is {data.get('format')!r}, expected {VOCABULARY_FORMAT!r}")
    raw_tags = data.get("tags")
    if not isinstance(raw_tags, list) or not raw_tags:
        fail("'tags' must be a non-empty list of objects")
    tags, seen = [], set()
    for i, entry in enumerate(raw_tags):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            fail(f"tags[{i}] must be an object with a non-empty string 'name'")
        name = entry["name"].strip()
        if name in seen:
            fail(f"tag {name!r} appears twice")
        seen.add(name)
        unknown = set(entry) - {"name", "terms", "abbreviations", "implied_by", "comment"}
        if unknown:
            fail(f"tag {name!r} has unknown keys {sorted(unknown)}")
        spec = TagSpec(name, str_list(entry.get("terms"), f"tag {name!r} 'terms'"),
                       str_list(entry.get("abbreviations"), f"tag {name!r} 'abbreviations'"),
                       str_list(entry.get("implied_by"), f"tag {name!r} 'implied_by'"))
        if not (spec.terms or spec.abbreviations or spec.implied_by):
            spec = TagSpec(name, (name,))  # a bare name still matches itself
        tags.append(spec)

    ambiguous = []
    for i, entry in enumerate(data.get("ambiguous") or []):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("term"), str):
            fail(f"ambiguous[{i}] must be an object with a string 'term'")
        default = entry.get("default")
        if default is not None and default not in seen:
            fail(f"ambiguous term {entry['term']!r}: default {default!r} is not a tag name")
        senses = []
        for sense in entry.get("senses") or []:
            if not isinstance(sense, Mapping) or "tag" not in sense:
                fail(f"ambiguous term {entry['term']!r}: each sense needs 'tag' (a tag name or null)")
            if sense["tag"] is not None and sense["tag"] not in seen:
                fail(f"ambiguous term {entry['term']!r}: sense tag {sense['tag']!r} is not a tag name")
            senses.append((sense["tag"], str_list(sense.get("cues"), f"ambiguous term {entry['term']!r} cues")))
        window = entry.get("window")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 0):
            fail(f"ambiguous term {entry['term']!r}: 'window' must be a non-negative int or null")
        ambiguous.append(AmbiguousTerm(entry["term"].strip(), default, tuple(senses), window))
    not_mentions = str_list(data.get("not_mentions"), "'not_mentions'")
    vocab = TagVocabulary(tuple(tags), tuple(ambiguous), not_mentions, source)
    try:
        _compile(vocab)
    except re.error as e:  # only reachable through odd characters in phrases
        fail(f"a phrase does not compile: {e}")
    return vocab


@lru_cache(maxsize=1)
def _default_vocabulary() -> TagVocabulary:
    return TagVocabulary.from_json(DEFAULT_VOCABULARY_PATH)


# --------------------------------------------------------------------------- phrase -> regex
_WORD_BEFORE = r"(?<![\w])"
_WORD_AFTER = r"(?![\w])"


def _word_regex(word: str) -> str:
    """``*`` is a wildcard for word characters; a hyphen may also be a space or nothing."""
    out = []
    for piece in re.split(r"(\*|-)", word):
        if piece == "*":
            out.append(r"\w*")
        elif piece == "-":
            out.append(r"[-\s]?")
        else:
            out.append(re.escape(piece))
    return "".join(out)


def _plural(word_rx: str, word: str) -> str:
    """Regular English plurals of the last word, so that vocabularies list singulars only."""
    if word.endswith("*") or not word[-1:].isalpha():
        return word_rx
    if re.search(r"[^aeiou]y$", word):
        return word_rx[:-1] + "(?:y|ies)"
    if re.search(r"(s|x|ch|sh)$", word):
        return word_rx + "(?:es)?"
    return word_rx + "s?"


def phrase_regex(phrase: str, plural: bool = True) -> str:
    """Regex source for a vocabulary phrase: words separated by any space or hyphen."""
    words = phrase.split()
    parts = [_word_regex(w) for w in words]
    if plural:
        parts[-1] = _plural(parts[-1], words[-1])
    return _WORD_BEFORE + r"[\s-]*".join(parts) + _WORD_AFTER


class _Compiled(NamedTuple):
    not_mentions: re.Pattern | None
    phrases: re.Pattern | None
    phrase_targets: tuple  # group index -> ("tags", frozenset) or ("ambiguous", index)
    abbreviations: re.Pattern | None
    abbreviation_tags: dict
    cues: tuple  # per ambiguous term: tuple of (tag, compiled cue regex or None)


def _alternation(items: Iterable[tuple[str, str]]) -> re.Pattern | None:
    """One regex with a named group per phrase (``items``: group name, phrase), longest first.

    Python tries alternatives in order, so listing long phrases first makes "left ventricle"
    win over "ventricle" and "hepatic flexure" (colon) over "hepatic" (liver). Branches are
    grouped by their first letter behind one word-start check: trying ~1,500 branches at every
    character made a caption cost 20 ms instead of well under 1 ms.
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, phrase in sorted(items, key=lambda kv: -len(kv[1])):
        first = phrase[0].lower()
        groups.setdefault(first if first.isalnum() else "", []).append((key, phrase))
    if not groups:
        return None
    parts = []
    for first, members in sorted(groups.items(), key=lambda kv: kv[0] == ""):  # wildcard starts last
        branches = "|".join(f"(?P<{key}>{phrase_regex(p)[len(_WORD_BEFORE):]})" for key, p in members)
        parts.append(f"(?={re.escape(first)})(?:{branches})" if first else f"(?:{branches})")
    return re.compile(f"{_WORD_BEFORE}(?=\\w)(?:{'|'.join(parts)})", re.IGNORECASE)


@lru_cache(maxsize=32)
def _compile(vocab: TagVocabulary) -> _Compiled:
    not_mentions = _alternation((f"m{i}", p) for i, p in enumerate(vocab.not_mentions))

    phrase_tags: dict[str, set] = {}
    for tag in vocab.tags:
        for phrase in tag.terms + tag.implied_by:
            phrase_tags.setdefault(phrase.lower(), set()).add(tag.name)
    targets, items = [], []
    for phrase, names in phrase_tags.items():
        items.append((f"g{len(targets)}", phrase))
        targets.append(("tags", frozenset(names)))
    for i, amb in enumerate(vocab.ambiguous):
        if amb.term.lower() in phrase_tags:
            continue  # an explicit tag phrase always wins over an ambiguity rule
        items.append((f"g{len(targets)}", amb.term.lower()))
        targets.append(("ambiguous", i))
    phrases = _alternation(items)

    abbreviation_tags: dict[str, set] = {}
    for tag in vocab.tags:
        for abbr in tag.abbreviations:
            abbreviation_tags.setdefault(abbr, set()).add(tag.name)
    abbreviations = None
    if abbreviation_tags:
        alts = "|".join(re.escape(a) for a in sorted(abbreviation_tags, key=len, reverse=True))
        abbreviations = re.compile(rf"(?<![\w])(?:{alts})(?![\w])")

    cues = tuple(
        tuple((tag, re.compile("|".join(phrase_regex(c) for c in words), re.IGNORECASE) if words else None)
              for tag, words in amb.senses)
        for amb in vocab.ambiguous)
    return _Compiled(not_mentions, phrases, tuple(targets), abbreviations,
                     {k: frozenset(v) for k, v in abbreviation_tags.items()}, cues)


# --------------------------------------------------------------------------- extraction
class TagMention(NamedTuple):
    """One organ mention: which tag, where, and the words that triggered it."""

    tag: str
    start: int
    end: int
    text: str


_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2212"})


def _masked(text: str, compiled: _Compiled) -> str:
    """Blank out non-mentions (procedure names, fluids, removals) keeping character offsets."""
    text = text.translate(_DASHES)
    if compiled.not_mentions is None:
        return text
    return compiled.not_mentions.sub(lambda m: " " * len(m.group()), text)


def find_mentions(text: str, vocabulary: TagVocabulary | None = None) -> list[TagMention]:
    """All organ mentions in ``text`` in reading order (useful to see *why* a tag was given)."""
    if not isinstance(text, str):
        raise TypeError(f"report text must be a str, got {type(text).__name__}")
    vocab = vocabulary or TagVocabulary.default()
    compiled = _compile(vocab)
    masked = _masked(text, compiled)
    mentions: list[TagMention] = []
    pending: list[tuple[int, re.Match]] = []
    if compiled.phrases is not None:
        for m in compiled.phrases.finditer(masked):
            kind, value = compiled.phrase_targets[int(m.lastgroup[1:])]
            if kind == "tags":
                mentions.extend(TagMention(t, m.start(), m.end(), m.group()) for t in sorted(value))
            else:
                pending.append((value, m))
    if compiled.abbreviations is not None:
        for m in compiled.abbreviations.finditer(masked):
            for t in sorted(compiled.abbreviation_tags[m.group()]):
                mentions.append(TagMention(t, m.start(), m.end(), m.group()))
    plain = list(mentions)
    for index, m in pending:
        tag = _resolve(vocab.ambiguous[index], compiled.cues[index], m, masked, plain)
        if tag is not None:
            mentions.append(TagMention(tag, m.start(), m.end(), m.group()))
    mentions.sort(key=lambda x: (x.start, x.tag))
    return mentions


def _resolve(amb: AmbiguousTerm, cues, match: re.Match, text: str, plain: list[TagMention]) -> str | None:
    """Pick the sense whose cue (or own unambiguous mention) is nearest to ``match``."""
    best: tuple[int, str | None] | None = None

    def consider(start: int, end: int, tag: str | None):
        nonlocal best
        if start < match.end() and end > match.start():
            return  # the ambiguous word itself
        gap = match.start() - end if end <= match.start() else start - match.end()
        if amb.window is not None and gap > amb.window:
            return
        if best is None or gap < best[0]:
            best = (gap, tag)

    for tag, rx in cues:
        if rx is not None:
            for c in rx.finditer(text):
                consider(c.start(), c.end(), tag)
        if tag is not None:
            for mention in plain:
                if mention.tag == tag:
                    consider(mention.start, mention.end, tag)
    return amb.default if best is None else best[1]


def extract_tags(text: str, vocabulary: TagVocabulary | None = None) -> set[str]:
    """Canonical tags of the organs a report or caption mentions.

    A mention counts even when negated ("no focal liver lesion" shows the liver), but not inside
    procedure/fluid names ("transesophageal", "cerebrospinal fluid") nor in removal words
    ("splenectomy"): the synthetic report generator states absent organs that way.
    """
    return {m.tag for m in find_mentions(text, vocabulary)}


# --------------------------------------------------------------------------- label names -> prompts
#: Whole label names used by public data sets that no general rule can read.
_LABEL_NAMES = {
    "celiac_aa": "celiac artery",
    "myo": "myocardium",  # MM-WHS / ACDC style abbreviations
    "mlv": "left ventricular myocardium",
    "lvc": "left ventricle cavity",
    "lv": "left ventricle",
    "rv": "right ventricle",
    "la": "left atrium",
    "ra": "right atrium",
    "aa": "ascending aorta",
    "pa": "pulmonary artery",
    "ivc": "inferior vena cava",
    "svc": "superior vena cava",
    "et": "enhancing tumor",  # BraTS region abbreviations
    "tc": "tumor core",
    "wt": "whole tumor",
}
#: Single words rewritten inside names: Latin kept by TotalSegmentator, typos kept by AMOS/BTCV
#: copies, and side letters ("Kidney(R)").
_LABEL_WORDS = {
    "clavicula": "clavicle",
    "autochthon": "autochthonous back muscle",
    "postcava": "inferior vena cava",
    "arota": "aorta",
    "pancrease": "pancreas",
    "l": "left",
    "r": "right",
    "lt": "left",
    "rt": "right",
}
_SIDES = ("left", "right")
_ORDINALS = ("zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
             "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth").split()
_LEVEL = re.compile(r"^[CTLS]\d{1,2}$", re.IGNORECASE)


def _label_words(name: str) -> list[str]:
    """Lower-case words of a label name; CamelCase, ``_``, ``/`` and "(R)" all split words."""
    name = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    name = re.sub(r"\s*[/,]\s*", " or ", name.strip())
    tokens = [t for t in re.split(r"[\s_()\[\].:]+", name) if re.search(r"[A-Za-z0-9]", t)]
    words = []
    for i, token in enumerate(tokens):
        low = token.lower()
        if _LEVEL.match(token):
            words.append(token.upper())  # vertebral level: L1, T12
        elif low == "vena" and (i + 1 == len(tokens) or tokens[i + 1].lower() != "cava"):
            words.append("vein")  # TotalSegmentator "iliac_vena_left"
        else:
            words.extend(_LABEL_WORDS.get(low, low).split())
    return words


def label_to_prompt(name: str) -> str:
    """Readable text for an nnU-Net ``dataset.json`` label name ("kidney_right" -> "right kidney").

    The prompt is what the text encoder sees at fine-tuning, so it should read like report text:
    side first, Latin/abbreviated spellings expanded, vertebra and rib numbers spelled naturally.
    """
    if not isinstance(name, str):
        raise TypeError(f"label name must be a str, got {type(name).__name__}: {name!r}")
    prompt = _LABEL_NAMES.get(name.strip().lower()) or _arrange(_label_words(name))
    if not prompt:
        raise ValueError(
            f"label {name!r} gives an empty text prompt; give it one in a prompt override JSON "
            f'file such as {{"{name}": "<organ name>"}} (class_prompts(..., override=PATH))')
    return prompt


def _arrange(words: list[str]) -> str:
    """Reorder tokens of names like "lung_upper_lobe_left" or "rib_left_3" into English."""
    side = [w for w in words if w in _SIDES]
    rest = [w for w in words if w not in _SIDES]
    if not rest:
        return " ".join(side)
    if len(rest) == 2 and rest[0] in ("vertebra", "vertebrae") and _LEVEL.match(rest[1]):
        rest = [rest[1].upper(), "vertebra"]
    elif len(rest) == 2 and rest[1].isdigit() and 0 < int(rest[1]) < len(_ORDINALS):
        rest = [_ORDINALS[int(rest[1])], rest[0]]  # rib 3 -> third rib
    elif "lobe" in rest and rest[0] not in ("upper", "middle", "lower", "lobe"):
        cut = next(i for i, w in enumerate(rest) if w in ("upper", "middle", "lower", "lobe"))
        if cut > 0 and rest[-1] == "lobe":
            rest = rest[cut:] + ["of"] + rest[:cut]  # lung upper lobe -> upper lobe of lung
    return " ".join(side + rest)


def _foreground(labels: Mapping) -> list[tuple[str, object]]:
    """Foreground classes in network output order, as nnU-Net's LabelManager orders them."""
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError("dataset.json 'labels' must be a non-empty mapping of name -> label value")
    items = []
    region_based = False
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            region_based = True
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"label {name!r}: region value {value!r} must be a list of ints")
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"label {name!r}: value {value!r} must be an int or a list of ints")
        if name == "ignore" or name == "background" or value == 0 or value == [0]:
            continue
        items.append((name, value))
    if not region_based:
        items.sort(key=lambda kv: kv[1])
    if not items:
        raise ValueError("dataset.json 'labels' has no foreground class")
    return items


def _load_override(override: str | os.PathLike | Mapping) -> tuple[dict, str]:
    if isinstance(override, Mapping):
        data, source = override, "prompt override dict"
    else:
        source = f"prompt override file {override}"
        try:
            data = json.loads(Path(override).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{source} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{source} is not readable JSON: {e}") from None
    if not isinstance(data, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()):
        raise ValueError(f'{source} must be a JSON object mapping label name -> non-empty prompt text, '
                         f'e.g. {{"kidney_right": "right kidney"}}')
    return dict(data), source


class UninformativeLabelWarning(UserWarning):
    """Label names such as "1" or "label_3" became prompts that name no organ."""


#: words that name no organ: placeholders of exported label maps ("label_3", "class 2", "ROI 1", "Segment_1")
_NO_ORGAN_WORDS = {"label", "labels", "lbl", "class", "classes", "cls", "structure", "region", "roi", "object",
                   "mask", "seg", "segment", "segmentation", "foreground", "fg", "target", "organ", "area", "part",
                   "other", "unknown", "misc", "value", "id", "index", "number", "no", "nr", "num", "of", "the",
                   "and", "or", *_SIDES, *_ORDINALS}


def uninformative_prompts(prompts: Mapping[str, str]) -> list[str]:
    """The label names whose prompt (``{label name: prompt}``) holds no word that could name an organ:
    only numbers, single letters, sides, ordinals and placeholders such as "label" or "class"."""
    def informative(word: str) -> bool:
        return len(word) > 1 and not word.isdigit() and word.lower() not in _NO_ORGAN_WORDS

    return [name for name, prompt in prompts.items()
            if not any(informative(w) for w in re.findall(r"[^\W_]+", prompt))]


def class_prompts(labels: Mapping, override: str | os.PathLike | Mapping | None = None) -> list[str]:
    """One text prompt per foreground class of a ``dataset.json`` ``labels`` dict, in output order.

    ``override`` (a JSON file or a dict, label name -> text) wins over the automatic prompt, so
    a cryptic label ("L3") can be described without renaming the data set. Automatic prompts that
    name no organ ("1", "label_3" -> "third label") give one :class:`UninformativeLabelWarning`
    naming the labels and the fix: the text encoder would otherwise embed digits and placeholders,
    and the branch would run with queries that say nothing about the organ.
    """
    classes = _foreground(labels)
    overrides: dict = {}
    if override is not None:
        overrides, source = _load_override(override)
        unknown = sorted(set(overrides) - {name for name, _ in classes})
        if unknown:
            raise ValueError(f"{source} names {unknown}, which are not foreground labels of this data "
                             f"set; valid names: {[name for name, _ in classes]}")
    automatic = {name: label_to_prompt(name) for name, _ in classes if name not in overrides}
    vague = uninformative_prompts(automatic)
    if vague:
        example = json.dumps({name: "<organ name>" for name in vague[:2]})
        warnings.warn(
            f"label name(s) {vague} in dataset.json name no organ, so their text prompts "
            f"{[automatic[n] for n in vague]} tell the text encoder nothing; give each class its organ in a JSON "
            f"file label name -> prompt text, e.g. {example}, and point {ENV_PROMPTS} at it (or pass it as "
            "class_prompts(..., override=PATH))", UninformativeLabelWarning, stacklevel=2)
    return [overrides[name].strip() if name in overrides else automatic[name] for name, _ in classes]


#: Words a class name may carry around its organ and still *be* that organ.
_PART_WORDS = {"left", "right", "bilateral", "upper", "middle", "lower", "lobe", "lobes", "of", "the",
               "whole", "entire", "ascending", "descending", "thoracic", "abdominal", "gland", "or", "and"}


def label_to_tag(name: str, vocabulary: TagVocabulary | None = None) -> str | None:
    """The vocabulary tag a segmentation class *is* ("kidney_right" -> "kidney"), else None.

    Stricter than :func:`extract_tags`: a caption saying "splenic vein" shows the spleen, but a
    class called "portal vein and splenic vein" is a vessel, so every word of the prompt must be
    covered by mentions of one single tag, apart from side/lobe words. Open-set classes
    (duodenum, urinary bladder, tumours) get None and a purely text-derived query.
    """
    prompt = label_to_prompt(name)
    mentions = find_mentions(prompt, vocabulary)
    tags = {m.tag for m in mentions}
    if len(tags) != 1:
        return None
    covered = [False] * len(prompt)
    for m in mentions:
        covered[m.start:m.end] = [True] * (m.end - m.start)
    for word in re.finditer(r"[\w/-]+", prompt):
        if not all(covered[word.start():word.end()]) and word.group().lower() not in _PART_WORDS:
            return None
    return tags.pop()
