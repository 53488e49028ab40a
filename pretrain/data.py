"""What a run trains on: the pairs of ``--data`` made into 2D or 3D data sets, and the checks that refuse a run.

Every check here reads headers or config only and runs before the first log line, so a run refused
on its input writes nothing: 2D or 3D (``--dim``), label-map geometry, label names and organ
grounding (organ-grounded objective), the text generator (negative-free objective).
"""
from __future__ import annotations

from nnunet_mosmos.tags import TagVocabulary
from pretrain.config import PretrainConfig, PretrainError
from pretrain.datasets import PairDataset, VolumePairDataset
from pretrain.grounding import OrganGrounding
from pretrain.label_names import LabelNamesError, load_label_names
from pretrain.normalization import Normalizer
from pretrain.pairs import Pair, is_volume
from pretrain.patches import PatchSampler
from pretrain.plans import ZSCORE, PlansError, find_dataset_folder, load_configuration
from pretrain.transforms import PairTransform
from pretrain.volumes import check_pair_geometry, pick_dicom_series


def resolve_dim(cfg: PretrainConfig, pairs: list[Pair]) -> int:
    """2 or 3 from ``--dim``. ``auto``: 3 when every pair's image is a volume (or DICOM folder) and the
    target is 3D (a 3D ``-c``, a 3-value ``--image-size``, or CT-RATE without ``-c``); else 2, which
    keeps the 2D-twin route (random axial slices, export inflated)."""
    wanted = str(cfg.dim)
    if wanted not in ("auto", "2", "3"):
        raise PretrainError(f"--dim must be auto, 2 or 3, got {cfg.dim!r}")
    flat = [p for p in pairs if not (is_volume(p.image) or p.image.is_dir())]
    folders = [p for p in pairs if p.image.is_dir()]
    if wanted == "2":
        if folders:
            raise PretrainError(f"{folders[0].image} is a DICOM folder: DICOM series are read in 3D only (--dim 3)")
        return 2
    if wanted == "3":
        if flat:
            raise PretrainError(f"--dim 3 needs volumes, but {flat[0].id} points to the 2D image {flat[0].image}; "
                                "remove 2D rows from the manifest or pre-train in 2D (--dim 2)")
        return 3
    if flat or not pairs:
        if folders:
            raise PretrainError(f"the data mix 2D images and DICOM folders ({folders[0].image}); pre-train the "
                                "volumes in 3D (--dim 3) without the 2D rows")
        return 2
    if cfg.configuration:
        cm, _ = load_configuration(cfg.dataset, cfg.configuration, cfg.plans)
        return 3 if len(cm.patch_size) == 3 else 2
    if cfg.image_size and len(cfg.image_size) == 3:
        return 3
    return 3 if cfg.data == "ct-rate" or folders else 2


def find_label_names(cfg: PretrainConfig) -> dict:
    """Names of the masks' label values: ``--label-names``, else ``-d``'s dataset.json (raw, then preprocessed)."""
    try:
        if cfg.label_names:
            return load_label_names(cfg.label_names, cfg.label_map_key)
        for var in ("nnUNet_raw", "nnUNet_preprocessed"):
            if cfg.dataset is None:
                break
            try:
                folder = find_dataset_folder(cfg.dataset, (var,))
            except PlansError:
                continue
            if (folder / "dataset.json").is_file():
                return load_label_names(folder / "dataset.json")
    except LabelNamesError as e:
        raise PretrainError(str(e)) from None
    raise PretrainError("--objective organ-grounded needs the names of the mask's label values: pass "
                        "--label-names (nnU-Net dataset.json, a {value: name} JSON, or TotalSegmentator's class "
                        "map with --label-map-key total) or -d of a dataset whose dataset.json names them")


def build_grounding(cfg: PretrainConfig, dim: int, train: list[Pair], vocab: TagVocabulary) -> OrganGrounding:
    """Sentences per (pair, organ) for ``--objective organ-grounded``; refuses when nothing can be grounded."""
    from nnunet_mosmos.reports import AbnormalityDictionary

    if dim != 3:
        raise PretrainError("--objective organ-grounded pools features inside organ masks of 3D volumes: give "
                            "manifest rows with a 'mask' column and pre-train in 3D (-c 3d_fullres or --dim 3)")
    try:
        dictionary = AbnormalityDictionary.from_json(cfg.abnormality_dictionary, vocabulary=vocab) \
            if cfg.abnormality_dictionary else AbnormalityDictionary.default()
    except ValueError as e:
        raise PretrainError(str(e)) from None
    grounding = OrganGrounding(train, find_label_names(cfg), vocab, dictionary, cfg.negatives_per_organ,
                               seed=cfg.seed)
    if grounding.usable == 0:
        raise PretrainError("--objective organ-grounded: no training pair has both a mask and a sentence naming "
                            "one of its organs.\n" + grounding.describe())
    return grounding


def build_datasets(cfg: PretrainConfig, spec, dim: int, train: list[Pair], val: list[Pair], vocab: TagVocabulary,
                   two_views: bool, organ_grounded: bool) -> tuple[PairDataset, PairDataset, list[str]]:
    """(training set, held-out set, notes for the log): 2D images/slices or 3D patches as ``dim`` says."""
    generator = None
    if two_views:
        from nnunet_mosmos.reports import load_text_generator

        try:
            generator = load_text_generator(cfg.text_generator)
        except ValueError as e:
            raise PretrainError(str(e)) from None
    num_tags = len(vocab)
    norm = spec.normalization or {"scheme": ZSCORE, "intensity_properties": None}
    if dim == 2:  # z-score per image (per volume for slices), inside the non-zero region if the plans say so
        normalize = Normalizer(ZSCORE, use_mask_for_norm=True) if norm.get("use_mask_for_norm") else None
        return (PairDataset(train, num_tags, PairTransform(spec.image_size, train=True), cfg.seed,
                            two_views=two_views, text_for_missing=generator, vocabulary=vocab, normalize=normalize),
                PairDataset(val, num_tags, PairTransform(spec.image_size, train=False), cfg.seed,
                            text_for_missing=generator, vocabulary=vocab, normalize=normalize), [])
    notes = []
    for pair in train + val:  # header reads only: a wrong mask stops the run before step 1
        if pair.mask is not None:
            check_pair_geometry(pair.image, pair.mask)
        if pair.image.is_dir():  # say which series of a DICOM folder is used (the rule: most slices)
            notes.append(pick_dicom_series(pair.image)[1])
    try:
        normalizer = Normalizer(norm["scheme"], norm["intensity_properties"], norm.get("use_mask_for_norm", False))
    except ValueError as e:
        raise PretrainError(str(e)) from None
    names = None  # label value -> name, for generated text ("liver (1510 mL)") and grounding
    if any(p.mask is not None for p in train):
        try:
            names = find_label_names(cfg)
        except PretrainError:
            if organ_grounded:
                raise
            names = None  # generated text then says "label_5"; only organ grounding needs names

    def make(pairs, is_train, views):
        return VolumePairDataset(pairs, num_tags, PatchSampler(spec.image_size, spec.spacing, train=is_train),
                                 normalizer, cfg.seed, two_views=views, label_names=names,
                                 text_for_missing=generator, vocabulary=vocab)
    return make(train, True, two_views), make(val, False, False), notes


__all__ = ["build_datasets", "build_grounding", "find_label_names", "resolve_dim"]
