"""What a pre-training run depends on: :class:`PretrainConfig` (the CLI fills it; tests build it directly)."""
from __future__ import annotations

from dataclasses import dataclass, field

from nnunet_mosmos.text import DEFAULT_N_CTX

#: MOSMOS' own losses are always on (weights may be 0); the others are added with --objective
OBJECTIVES = ("mosmos", "organ-grounded", "negative-free")


@dataclass
class PretrainConfig:
    """Everything a run depends on (the CLI fills it; tests may build it directly)."""
    data: str = "synthetic"
    roco_root: str | None = None
    split: str = "train"
    subset: str = "radiology"
    manifest: str | None = None
    text_encoder: str | None = None
    dataset: str | None = None
    configuration: str | None = None
    plans: str = "nnUNetPlans"
    image_size: list | None = None
    batch_size: int = 32
    epochs: int = 10
    max_steps: int | None = None
    lr: float = 3e-4
    tag_decoder_lr: float | None = None  # None: the same as lr
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    contrastive_weight: float = 1.0
    tag_weight: float = 1.0
    num_workers: int = 4
    device: str = "auto"
    seed: int = 0
    resume: str | None = None
    overwrite: bool = False  # start over an earlier run with the same output (else refused)
    output: str | None = None
    val_fraction: float = 0.05
    save_every: int = 500
    eval_every: int | None = None
    log_every: int = 10
    stop_after: int | None = None
    amp: str = "auto"
    keep_untagged: bool = False
    vocabulary: str | None = None
    embed_dim: int = 256
    decoder: dict = field(default_factory=dict)
    n_ctx: int = DEFAULT_N_CTX
    progress_bar: bool = True
    report_cache: bool = True  # the frozen text encoder's features cached per caption (pretrain/text_cache.py)
    command: str = ""
    # hospital-shaped data (docs/pretraining.md, "3D reports and the extra objectives")
    ct_rate_root: str | None = None
    dim: str = "auto"  # "auto", "2" or "3"
    objectives: list = field(default_factory=lambda: ["mosmos"])
    organ_weight: float = 1.0
    negative_free_weight: float = 0.01
    label_names: str | None = None
    label_map_key: str | None = None
    abnormality_dictionary: str | None = None
    negatives_per_organ: int = 2
    text_generator: str | None = None


class PretrainError(ValueError):
    """A run cannot start or continue (bad option, too little data, bad last.pt); message says why."""


__all__ = ["OBJECTIVES", "PretrainConfig", "PretrainError"]
