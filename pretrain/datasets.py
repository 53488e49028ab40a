"""Map-style data sets over pairs: 2D images (:class:`PairDataset`) and 3D volumes (:class:`VolumePairDataset`).

A sample is a pure function of (seed, epoch, index), whatever the worker count, so ``--resume``
replays the exact same samples. An image that cannot be read (or is constant) is replaced by the
next readable pair, so batch sizes, and therefore DDP, stay in step; the replaced paths travel in
the batch (``failed``) to be reported at the end. One collate serves both data sets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from nnunet_mosmos.slices import zscore
from nnunet_mosmos.tags import TagVocabulary, extract_tags
from pretrain.normalization import Normalizer
from pretrain.pairs import ConstantImageError, GeometryError, Pair, PairDataError, is_volume
from pretrain.patches import PatchSampler, organ_volumes_ml
from pretrain.transforms import PairTransform
from pretrain.volumes import Volume, read_label_map, read_volume


def check_not_constant(array: np.ndarray, path) -> None:
    """ConstantImageError when every value of an image (or of a whole volume) is the same."""
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise ConstantImageError(f"every value of {path} is {low:g} (zero variance, e.g. an all-black export)")


def read_image(path: Path, rng: np.random.Generator | None, normalize=None) -> np.ndarray:
    """A normalised 2D float32 image: the picture itself, or one axial slice (array axis 0) of a volume.

    ``normalize`` (default: z-score; a ``pretrain.normalization.Normalizer`` for the plans'
    ``use_mask_for_norm``) sees the whole image; volumes are normalised over the whole volume (as
    nnU-Net normalises a case), then one slice is taken: a random one when ``rng`` is given, the
    middle one otherwise. A constant image or volume raises ConstantImageError (a constant *slice*
    of a varying volume is fine).
    """
    normalize = normalize or zscore
    if is_volume(path):
        volume = read_volume(path).array
        check_not_constant(volume, path)
        volume = normalize(volume)
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
    check_not_constant(array, path)
    return normalize(array)


class PairDataset(Dataset):
    """Map-style data set over pairs. Keys are ``(index, epoch)`` (or a bare index = epoch 0).

    The per-sample generator is seeded from (seed, epoch, index): augmentation is identical
    whatever the worker count, and ``--resume`` replays the exact same samples.
    ``two_views`` adds ``view2`` (a second augmentation of the same image, negative-free objective);
    a pair without text gets ``text_for_missing(context)`` and the tags found in that text.
    An unreadable image is replaced by the next pair and listed in the sample's ``failed``, a
    constant one likewise in ``constant``.
    """

    max_retries = 16
    #: errors that are the user's data problem (e.g. a mask off its image's grid): raised, never skipped
    fatal_errors: tuple = ()

    def __init__(self, pairs: list[Pair], num_tags: int, transform: PairTransform, seed: int = 0,
                 two_views: bool = False, text_for_missing=None, vocabulary: TagVocabulary | None = None,
                 normalize: Callable[[np.ndarray], np.ndarray] | None = None):
        self.pairs, self.num_tags, self.transform, self.seed = pairs, num_tags, transform, seed
        self.two_views, self.text_for_missing = two_views, text_for_missing
        self.vocabulary = vocabulary or TagVocabulary.default()
        self.normalize = normalize

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
        raw = read_image(pair.image, rng, self.normalize)
        sample = {"image": self.transform(raw, rng), "index": index}
        if self.two_views:
            sample["view2"] = self.transform(raw, rng)
        context = {"image": str(pair.image), "organs": {}, "modality": None, "spacing": None,
                   "shape": tuple(raw.shape), "metadata": {}} if not pair.text and self.text_for_missing else {}
        sample["text"], sample["tags"] = self.text_and_tags(pair, context)
        return sample

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        failed, constant = [], []
        for attempt in range(min(self.max_retries, len(self.pairs))):
            i = (index + attempt) % len(self.pairs)
            try:
                sample = self._load(i, epoch)
            except self.fatal_errors:
                raise
            except ConstantImageError:
                constant.append(str(self.pairs[i].image))
                continue
            except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable image"
                failed.append(f"{self.pairs[i].image}: {type(e).__name__}: {str(e)[:240]}")
                continue
            sample["failed"], sample["constant"] = failed, constant
            return sample
        raise PairDataError(f"{len(failed) + len(constant)} consecutive unreadable or constant images starting at "
                            f"pair {index}:\n  " + "\n  ".join(failed + [f"{c}: constant" for c in constant]))


def collate_pairs(samples: list[dict]) -> dict:
    """Stack tensors (image, tags and, when present, view2 / mask / has_mask); list texts and replaced images."""
    batch = {"text": [s["text"] for s in samples], "index": torch.tensor([s["index"] for s in samples]),
             "failed": [f for s in samples for f in s["failed"]],
             "constant": [c for s in samples for c in s.get("constant", ())]}
    for key in ("image", "tags", "view2", "mask"):
        if all(s.get(key) is not None for s in samples):
            batch[key] = torch.stack([s[key] for s in samples])
    if "has_mask" in samples[0]:
        batch["has_mask"] = torch.tensor([bool(s["has_mask"]) for s in samples])
    return batch


class VolumePairDataset(PairDataset):
    """Pairs of (3D volume [+ label map], report) -> patches; retry/replace logic from :class:`PairDataset`.

    Item: ``image`` (1, Z, Y, X), ``view2`` (only with ``two_views``), ``mask`` (Z, Y, X) long, all
    zeros without a label map, ``has_mask``, ``text``, ``tags`` (num_tags), ``index``, ``failed``.
    A pair with empty text gets ``text_for_missing(context)``; context = {"image", "organs"
    ({name: ml} over the whole label map), "modality", "spacing", "shape", "metadata"}.
    ``pair.info["rescale"] = (slope, intercept)`` is passed to :func:`read_volume`.
    """

    fatal_errors = (GeometryError,)

    def __init__(self, pairs: list[Pair], num_tags: int, sampler: PatchSampler, normalizer: Normalizer, seed=0,
                 two_views: bool = False, label_names: dict[int, str] | None = None,
                 text_for_missing: Callable[[dict], str] | None = None, vocabulary=None):
        super().__init__(pairs, num_tags, transform=None, seed=seed, two_views=two_views,
                         text_for_missing=text_for_missing, vocabulary=vocabulary)
        self.sampler, self.normalizer, self.label_names = sampler, normalizer, label_names

    def _load(self, index: int, epoch: int) -> dict:
        pair = self.pairs[index]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.sampler.train else None
        volume = read_volume(pair.image, (pair.info or {}).get("rescale"))
        check_not_constant(volume.array, pair.image)
        mask = None if pair.mask is None else read_label_map(pair.mask, volume, pair.image)
        context = self._context(pair, volume, mask) if not pair.text and self.text_for_missing else {}
        text, tags = self.text_and_tags(pair, context)
        volume.array = self.normalizer(volume.array, inplace=True)
        patch = self.sampler.sample(volume, mask, rng, two_views=self.two_views)
        sample = {"image": patch["image"],
                  "mask": patch["mask"] if mask is not None else torch.zeros(self.sampler.patch_size, dtype=torch.long),
                  "has_mask": mask is not None, "text": text, "tags": tags, "index": index}
        if self.two_views:
            sample["view2"] = patch["view2"]
        return sample

    def _context(self, pair: Pair, volume: Volume, mask) -> dict:
        organs = {} if mask is None else organ_volumes_ml(mask, volume.spacing, self.label_names)
        return {"image": str(pair.image), "organs": organs, "modality": volume.metadata.get("modality"),
                "spacing": tuple(volume.spacing), "shape": tuple(volume.array.shape), "metadata": dict(volume.metadata)}


__all__ = ["PairDataset", "VolumePairDataset", "collate_pairs", "read_image"]
