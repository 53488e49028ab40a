"""Names of a label map's values, from any of the three usual files (one reader for every CLI).

``mosmos-pretrain --label-names`` (organ-grounded objective) and ``mosmos-zeroshot --label-names``
both need to know that value 5 is "liver": from nnU-Net's ``dataset.json``, a plain ``{value: name}``
map, or TotalSegmentator's class map (several maps in one file, chosen with ``--label-map-key``).
"""
from __future__ import annotations

import json
from pathlib import Path


class LabelNamesError(ValueError):
    """A label-names file that cannot be read or does not name label values; says which and how."""


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelNamesError(f"label names file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelNamesError(f"label names file {path} is not readable JSON: {e}") from None


def parse_label_names(data: dict, source: str = "label names", key: str | None = None) -> dict[int, str]:
    """``{id: name}`` (background dropped) from any of the three usual spellings.

    * ``{"1": "spleen", ...}`` -- plain id -> name;
    * nnU-Net ``dataset.json`` -- ``{"labels": {"background": 0, "spleen": 1}}`` (name -> id);
    * TotalSegmentator's class map -- ``{"total": {...}, "total_mr": {...}}``, pick one with ``key``.
    """
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            keys = sorted(data) if isinstance(data, dict) else []
            raise LabelNamesError(f"{source} has no key {key!r}; keys: {keys}")
        data = data[key]
    elif isinstance(data, dict) and "labels" in data:
        labels = data["labels"]
        if not isinstance(labels, dict) or any(isinstance(v, list) for v in labels.values()):
            raise LabelNamesError(f"{source}: 'labels' must map name -> int id (region-based labels are not "
                                "supported: presence of a region is not one label value)")
        data = {str(v): k for k, v in labels.items()}
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        raise LabelNamesError(f"{source} holds several label maps ({sorted(data)}); pick one with "
                            "--label-map-key (e.g. total or total_mr for TotalSegmentator's class map)")
    if not isinstance(data, dict) or not data:
        raise LabelNamesError(f"{source} must be a JSON object: {{\"1\": \"spleen\", ...}}, a dataset.json "
                            "with 'labels', or a class map with --label-map-key")
    names = {}
    for k, v in data.items():
        try:
            label = int(k)
        except (TypeError, ValueError):
            raise LabelNamesError(f"{source}: key {k!r} is not an integer label id") from None
        if not isinstance(v, str) or not v.strip():
            raise LabelNamesError(f"{source}: label {k} must have a non-empty name, got {v!r}")
        if label != 0 and v.lower() != "background":
            names[label] = v.strip()
    if not names:
        raise LabelNamesError(f"{source} names no foreground label")
    return dict(sorted(names.items()))


def load_label_names(path, key: str | None = None) -> dict[int, str]:
    return parse_label_names(read_json(path), str(path), key)
