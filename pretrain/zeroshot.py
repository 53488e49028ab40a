"""Zero-shot organ identification: does a pre-trained checkpoint know which organs an image shows?

No segmentation training happens here. Every evaluation *unit* (an axial slice for a 2D checkpoint,
a z-slab of patch depth for a 3D one) gets one score per organ from natural-language prompts, and
the label maps only say which units really contain the organ (>= ``min_voxels`` voxels). The
per-organ ROC AUC over all units then measures how well the score ranks slices with the organ
above slices without it, independent of any threshold or calibration.

Two scorers, both open-vocabulary (any label name works, not only the pre-training tags):

* ``tag-decoder`` -- MOSMOS' own recognition head: the query for an organ is the learned prompt
  context followed by the organ's words (``label_to_prompt``), score = sigmoid of its logit. The
  decoder has self-attention among queries, so a query's logit depends on its companions; each
  organ is therefore asked *together with the pre-training vocabulary* (the set the decoder was
  trained on), so its score does not depend on which other organs the user happens to evaluate,
  and an organ that is a vocabulary tag scores exactly as in pre-training.
* ``contrastive`` -- CLIP-style: cosine between the projected, globally pooled deepest encoder
  stage and the projected sentence embedding of a template ("a CT image showing the liver").

Preprocessing mirrors pre-training. 2D: the volume is z-scored as a whole (``read_image``), each
axial slice (array axis 0) goes through the deterministic evaluation transform (centre crop to the
training aspect ratio, resize); the label counts use the same crop. 3D: nnU-Net's normalisation
scheme (``pretrain.normalization.Normalizer``) and resampling to the checkpoint's spacing, then slabs of patch depth at full in-plane
extent with a stride of half a patch.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_mosmos.tags import label_to_prompt
from pretrain.label_names import parse_label_names, read_json
from pretrain.pairs import VOLUME_SUFFIXES

METHODS = ("tag-decoder", "contrastive")
DEFAULT_TEMPLATE = "a {modality} image showing the {organ}"
DEFAULT_MIN_VOXELS = 10


class ZeroShotError(ValueError):
    """Inputs cannot be evaluated; the message names the file(s) and the fix."""


# --------------------------------------------------------------------------- inputs
@dataclass
class Case:
    name: str
    image: Path
    label: Path


@dataclass
class Organ:
    label: int
    name: str
    prompt: str = ""

    def __post_init__(self):
        self.prompt = self.prompt or label_to_prompt(self.name)


def select_organs(names: dict[int, str], only: list[str] | None = None,
                  prompts: dict[str, str] | None = None) -> list[Organ]:
    """Organs to score (all named labels, or those in ``only``); ``prompts`` overrides the text."""
    prompts = prompts or {}
    if only:
        unknown = [o for o in only if o not in names.values()]
        if unknown:
            raise ZeroShotError(f"--organs {unknown} are not label names; known: {list(names.values())}")
    return [Organ(i, n, prompts.get(n, "")) for i, n in names.items() if not only or n in only]


def _case_name(path: Path) -> str:
    stem = path.name.split(".")[0]
    return stem[:-5] if stem.endswith("_0000") else stem


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))


def pair_cases(images: list, labels: list) -> list[Case]:
    """Pairs from two equally long file lists (in order) or from one image + one label folder.

    In folders, ``CASE_0000.nii.gz`` / ``CASE.nii.gz`` images match ``CASE.nii.gz`` labels (nnU-Net's
    layout); other channels (``_0001``...) are ignored because the checkpoints read one channel.
    """
    images, labels = [Path(p) for p in images], [Path(p) for p in labels]
    if len(images) == 1 and len(labels) == 1 and images[0].is_dir() and labels[0].is_dir():
        other_channel = re.compile(r"_(?!0000)\d{4}$")
        image_files = {_case_name(p): p for p in _volume_files(images[0])
                       if not other_channel.search(p.name.split(".")[0])}
        label_files = {_case_name(p): p for p in _volume_files(labels[0])}
        unmatched = sorted(set(label_files) - set(image_files))
        if unmatched:
            raise ZeroShotError(f"label maps in {labels[0]} without an image in {images[0]}: {unmatched[:5]}")
        cases = [Case(c, image_files[c], label_files[c]) for c in sorted(label_files)]
        if not cases:
            raise ZeroShotError(f"no label maps (.nii.gz/.nii/.mha/.nrrd) in {labels[0]}")
        return cases
    if len(images) != len(labels):
        raise ZeroShotError(f"--images gives {len(images)} file(s) but --labels {len(labels)}; give one label "
                            "map per image, in the same order (or one image folder and one label folder)")
    missing = [str(p) for p in images + labels if not p.is_file()]
    if missing:
        raise ZeroShotError(f"not found: {', '.join(missing)}")
    return [Case(_case_name(i), i, lab) for i, lab in zip(images, labels)]


def dataset_cases(dataset, split: str = "Ts") -> tuple[list[Case], dict[int, str], str]:
    """Cases, label names and modality of a raw nnU-Net / mosmos-synthetic dataset in $nnUNet_raw."""
    from pretrain.plans import PlansError, find_dataset_folder

    try:
        folder = find_dataset_folder(dataset, ("nnUNet_raw",))
    except PlansError as e:
        raise ZeroShotError(str(e)) from None
    info = read_json(folder / "dataset.json")
    if not (folder / f"labels{split}").is_dir():
        raise ZeroShotError(f"{folder} has no labels{split}/ folder; zero-shot evaluation needs label maps "
                            f"(mosmos-synthetic writes labelsTs/ when --num-test > 0)")
    cases = pair_cases([folder / f"images{split}"], [folder / f"labels{split}"])
    modality = str(info.get("channel_names", {}).get("0", "CT"))
    return cases, parse_label_names(info, str(folder / "dataset.json")), modality


# --------------------------------------------------------------------------- reading volumes
def read_pair(case: Case):
    """(image z,y,x float32, label map z,y,x int, spacing z,y,x) via ``pretrain.volumes``, which checks that
    the label map lies on the image's voxel grid (GeometryError naming both files otherwise).

    A NIfTI shorter than its header says raises ``nnunet_mosmos.images.TruncatedImageError`` (which
    :func:`evaluate` counts as a skipped case); other unreadable files are a ZeroShotError."""
    from nnunet_mosmos.images import TruncatedImageError
    from pretrain.volumes import read_label_map, read_volume

    try:
        volume = read_volume(case.image)
        seg = read_label_map(case.label, volume, case.image)
    except TruncatedImageError:
        raise
    except RuntimeError as e:  # SimpleITK: unreadable file
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise ZeroShotError(f"cannot read {case.image} / {case.label}: {lines[-1]}") from None
    return volume.array, seg.astype(np.int64, copy=False), tuple(volume.spacing)


def check_label_ids(seg: np.ndarray, known_ids: set[int], case: Case, names_source: str) -> None:
    """Every non-zero id in the map must be named: otherwise the names belong to another label set."""
    unknown = sorted(set(np.unique(seg).tolist()) - set(known_ids) - {0})
    if unknown:
        raise ZeroShotError(f"label map {case.label} holds label id(s) {unknown[:10]} that {names_source} does not "
                            "name; pass the matching names (for TotalSegmentator: --label-map-key total for CT, "
                            "total_mr for MR)")


# --------------------------------------------------------------------------- the model
class ZeroShotModel:
    """The pre-training model's parts, rebuilt from a checkpoint for scoring (eval mode, no grads)."""

    def __init__(self, ckpt: dict, text_encoder: str | None = None, device: str = "cpu"):
        from nnunet_mosmos.checkpoint import recognition_modules
        from nnunet_mosmos.text import TextEncoder

        self.ckpt, self.device, self.source = ckpt, torch.device(device), None
        self.dim = int(ckpt["encoder"]["dim"])
        self.encoder, self.decoder = recognition_modules(ckpt, self.device)
        self.stage = int(ckpt["tag_decoder"]["stage"])
        self.text = TextEncoder(text_encoder or ckpt["text_encoder"]["name_or_path"]).to(self.device)
        self.context = ckpt["prompt_context"].to(self.device)
        self.vocabulary = list(ckpt["vocabulary"])
        self.image_proj = self.text_proj = None
        proj = ckpt.get("projections")
        if proj:
            self.image_proj = torch.nn.Linear(*reversed(proj["image"]["weight"].shape)).to(self.device)
            self.image_proj.load_state_dict(proj["image"])
            self.text_proj = torch.nn.Linear(*reversed(proj["text"]["weight"].shape)).to(self.device)
            self.text_proj.load_state_dict(proj["text"])

    @classmethod
    def from_file(cls, path, text_encoder: str | None = None, device: str = "cpu") -> "ZeroShotModel":
        from nnunet_mosmos.checkpoint import load_mosmos_checkpoint

        model = cls(load_mosmos_checkpoint(path), text_encoder, device)
        model.source = str(path)
        return model

    @torch.no_grad()
    def organ_queries(self, prompts: list[str]) -> list[torch.Tensor]:
        """Per organ: ``(V' + 1) x text_dim`` queries, the vocabulary (minus the organ itself) + the organ."""
        vocab = self.text.encode_prompts(self.context, self.vocabulary)
        organs = self.text.encode_prompts(self.context, prompts)
        out = []
        for prompt, query in zip(prompts, organs):
            keep = [i for i, t in enumerate(self.vocabulary) if t.strip().lower() != prompt.strip().lower()]
            out.append(torch.cat([vocab[keep], query[None]]))
        return out

    @torch.no_grad()
    def sentence_embeddings(self, sentences: list[str]) -> torch.Tensor:
        if self.text_proj is None:
            raise ZeroShotError("this checkpoint has no 'projections' (image/text heads), so the contrastive "
                                "method cannot run; use --method tag-decoder or re-export with a current "
                                "mosmos-pretrain")
        return F.normalize(self.text_proj(self.text.encode(sentences)).float(), dim=-1)

    @torch.no_grad()
    def score(self, x: torch.Tensor, queries: list[torch.Tensor] | None,
              sentences: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{method: B x K scores}`` for a batch of units ``x`` (B x 1 x spatial)."""
        skips = self.encoder(x.to(self.device))
        out = {}
        if queries is not None:
            features = skips[self.stage]
            out["tag-decoder"] = torch.stack(
                [torch.sigmoid(self.decoder(features, q).logits[:, -1]) for q in queries], 1).float().cpu()
        if sentences is not None:
            image = F.normalize(self.image_proj(skips[-1].flatten(2).mean(-1)).float(), dim=-1)
            out["contrastive"] = (image @ sentences.T).cpu()
        return out


# --------------------------------------------------------------------------- units
@dataclass
class Units:
    """Model inputs of one case (N x 1 x spatial) and per-unit voxel counts of each organ (N x K)."""
    inputs: torch.Tensor
    counts: np.ndarray
    where: list = field(default_factory=list)  # z range per unit, for reports


def _label_counts(seg: np.ndarray, organs: list[Organ]) -> np.ndarray:
    """``N x K`` voxel counts per unit (``seg`` is N x ...)."""
    flat = seg.reshape(seg.shape[0], -1)
    return np.stack([(flat == o.label).sum(1) for o in organs], 1)


def slice_units(image: np.ndarray, seg: np.ndarray, organs: list[Organ], preprocessing: dict,
                window=None, zscore: str = "volume") -> Units:
    """2D checkpoint: every axial slice, prepared like pre-training's evaluation images
    (:func:`pretrain.transforms.checkpoint_slices`); voxels are counted inside the same crop."""
    from nnunet_mosmos.slices import checkpoint_slices

    inputs, (top, left, ch, cw) = checkpoint_slices(image, preprocessing, zscore, window)
    counts = _label_counts(seg[:, top:top + ch, left:left + cw], organs)
    return Units(inputs, counts, [(z, z + 1) for z in range(image.shape[0])])


def _normalizer(spec, intensity_properties):
    """``pretrain.normalization.Normalizer`` from the checkpoint's spec: a scheme name, or ``Normalizer.as_dict()``."""
    from pretrain.normalization import Normalizer

    if isinstance(spec, dict):
        return Normalizer(spec.get("scheme", "ZScoreNormalization"),
                          spec.get("intensity_properties", intensity_properties), spec.get("use_mask_for_norm", False))
    if spec in (None, "zscore-per-image"):
        spec = "ZScoreNormalization"
    try:
        return Normalizer(spec, intensity_properties)
    except ValueError as e:
        raise ZeroShotError(f"checkpoint preprocessing: {e}") from None


def slab_units(image: np.ndarray, seg: np.ndarray, spacing, organs: list[Organ], preprocessing: dict) -> Units:
    """3D checkpoint: nnU-Net normalisation + resampling, then z-slabs of patch depth (stride half a patch).

    Volumes thinner or narrower than the patch are zero-padded (0 is the normalised mean for z-score).
    Voxel counts are taken on the resampled label map, i.e. in the grid the model sees.
    """
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    patch = [int(p) for p in preprocessing["image_size"]]
    image = _normalizer(preprocessing.get("normalization"), preprocessing.get("intensity_properties"))(image)
    target = preprocessing.get("spacing")
    if target is not None and not np.allclose(target, spacing):
        shape = compute_new_shape(image.shape, spacing, target)
        image = resample_data_or_seg_to_shape(image[None], shape, spacing, target, is_seg=False, order=3,
                                              order_z=0)[0]
        seg = resample_data_or_seg_to_shape(seg[None], shape, spacing, target, is_seg=True, order=1,
                                            order_z=0)[0]
    pad = [(0, max(0, p - s)) for p, s in zip(patch, image.shape)]
    image, seg = np.pad(image, pad), np.pad(seg, pad)
    depth, stride = patch[0], max(1, patch[0] // 2)
    starts = list(range(0, image.shape[0] - depth + 1, stride))
    if starts[-1] + depth < image.shape[0]:
        starts.append(image.shape[0] - depth)
    inputs = torch.stack([torch.from_numpy(np.ascontiguousarray(image[z:z + depth]))[None] for z in starts])
    counts = np.stack([_label_counts(seg[None, z:z + depth], organs)[0] for z in starts])
    return Units(inputs.float(), counts, [(z, z + depth) for z in starts])


# --------------------------------------------------------------------------- metric
def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve = Mann-Whitney U / (n_pos * n_neg); ties count one half; None if one class."""
    from scipy.stats import mannwhitneyu

    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


# --------------------------------------------------------------------------- evaluation
@dataclass
class ZeroShotConfig:
    methods: tuple = METHODS
    template: str = DEFAULT_TEMPLATE
    modality: str = "CT"
    min_voxels: int = DEFAULT_MIN_VOXELS
    batch_size: int = 16
    window: tuple | None = None  # 2D only: clip intensities before z-scoring
    zscore: str = "volume"  # 2D only: "volume" (pre-training's read_image) or "slice"


def evaluate(model: ZeroShotModel, cases: list[Case], organs: list[Organ], cfg: ZeroShotConfig,
             label_names: dict[int, str] | None = None, names_source: str = "the label names", log=None) -> dict:
    """Score every unit of every case and return the JSON-ready result (see docs/zeroshot.md).

    ``label_names`` (all named ids, default: the organs') is what a label map may contain; any other
    id means the names do not belong to the maps, which is an error rather than a silent miss.
    A case whose image or label file is truncated is skipped, logged and listed under ``skipped``
    (the other cases still count); an image with one value everywhere is scored but logged and
    listed under ``constant_images``. Without ``log`` these messages are Python warnings.
    """
    from nnunet_mosmos.images import TruncatedImageError
    from nnunet_mosmos.io_checks import constant_image_warning

    warn = log or (lambda msg: warnings.warn(msg, stacklevel=3))
    known = set(label_names or {}) | {o.label for o in organs}
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise ZeroShotError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if cfg.min_voxels < 1:
        raise ZeroShotError(f"--min-voxels must be >= 1, got {cfg.min_voxels}")
    if not organs:
        raise ZeroShotError("no organs to evaluate")
    pre = model.ckpt["preprocessing"]
    if model.dim == 3 and (cfg.window is not None or cfg.zscore != "volume"):
        raise ZeroShotError("--window/--zscore apply to 2D checkpoints only; a 3D checkpoint normalises "
                            f"with its own scheme ({pre.get('normalization')})")
    try:
        sentences = [cfg.template.format(modality=cfg.modality, organ=o.prompt) for o in organs]
    except (KeyError, IndexError, ValueError) as e:
        raise ZeroShotError(f"--template {cfg.template!r} may use only {{modality}} and {{organ}}: {e}") from None
    queries = model.organ_queries([o.prompt for o in organs]) if "tag-decoder" in cfg.methods else None
    text = model.sentence_embeddings(sentences) if "contrastive" in cfg.methods else None
    scores = {m: [] for m in cfg.methods}
    counts, skipped, constant = [], [], []
    for case in cases:
        try:
            image, seg, spacing = read_pair(case)
        except TruncatedImageError as e:
            skipped.append({"case": case.name, "reason": str(e)})
            warn(f"WARNING: skipped case {case.name}: {e}")
            continue
        check_label_ids(seg, known, case, names_source)
        message = constant_image_warning(image, case.image)
        if message:
            constant.append(case.name)
            warn(message)
        if model.dim == 2:
            units = slice_units(image, seg, organs, pre, cfg.window, cfg.zscore)
        else:
            units = slab_units(image, seg, spacing, organs, pre)
        for start in range(0, len(units.inputs), cfg.batch_size):
            out = model.score(units.inputs[start:start + cfg.batch_size], queries, text)
            for m in cfg.methods:
                scores[m].append(out[m].numpy())
        counts.append(units.counts)
        if log:
            log(f"{case.name}: {len(units.inputs)} {'slices' if model.dim == 2 else 'slabs'}")
    if skipped:
        warn(f"WARNING: skipped {len(skipped)} of {len(cases)} case(s) with truncated files: "
             + ", ".join(s["case"] for s in skipped))
    if not counts:
        raise ZeroShotError(f"all {len(cases)} case(s) were skipped (truncated files); nothing to evaluate")
    counts = np.concatenate(counts)
    present = counts >= cfg.min_voxels
    skipped_names = {s["case"] for s in skipped}
    result = {"checkpoint": model.source, "unit": "axial slice" if model.dim == 2 else "z-slab",
              "min_voxels": cfg.min_voxels, "cases": [c.name for c in cases if c.name not in skipped_names],
              "n_units": int(len(counts)), "skipped": skipped, "constant_images": constant, "methods": {}}
    for m in cfg.methods:
        s = np.concatenate(scores[m])
        per_organ = {}
        for k, organ in enumerate(organs):
            auc = roc_auc(s[:, k], present[:, k])
            per_organ[organ.name] = {"label": organ.label, "prompt": organ.prompt,
                                     "auc": None if auc is None else round(auc, 4),
                                     "n_pos": int(present[:, k].sum()), "n_neg": int((~present[:, k]).sum())}
        defined = [v["auc"] for v in per_organ.values() if v["auc"] is not None]
        entry = {"organs": per_organ, "macro_auc": round(float(np.mean(defined)), 4) if defined else None,
                 "n_organs_defined": len(defined)}
        if m == "contrastive":
            entry["template"] = cfg.template
            entry["modality"] = cfg.modality
        result["methods"][m] = entry
    return result


def table(result: dict) -> str:
    """Short human-readable table: one row per organ, one AUC column per method."""
    def cell(auc):
        return f"{'n/a' if auc is None else f'{auc:.3f}':>12}"

    methods = list(result["methods"])
    first = result["methods"][methods[0]]["organs"]
    width = max([len(n) for n in first] + [5])
    lines = [f"{'organ':<{width}}  {'pos':>5} {'neg':>5}  " + "  ".join(f"{m:>12}" for m in methods)]
    for name, v in first.items():
        aucs = [result["methods"][m]["organs"][name]["auc"] for m in methods]
        lines.append(f"{name:<{width}}  {v['n_pos']:>5} {v['n_neg']:>5}  " + "  ".join(map(cell, aucs)))
    macro = [result["methods"][m]["macro_auc"] for m in methods]
    lines.append(f"{'macro':<{width}}  {'':>5} {'':>5}  " + "  ".join(map(cell, macro)))
    return "\n".join(lines)


__all__ = ["Case", "DEFAULT_MIN_VOXELS", "DEFAULT_TEMPLATE", "METHODS", "Organ", "Units", "ZeroShotConfig",
           "ZeroShotError", "ZeroShotModel", "dataset_cases", "evaluate", "pair_cases",
           "read_pair", "roc_auc", "select_organs", "slab_units", "slice_units", "table"]
