"""Which encoder to pre-train: the one a dataset's nnU-Net plans describe, or a documented default.

``-d DATASET -c CONFIG [-p PLANS]`` reads ``$nnUNet_preprocessed/DatasetXXX_Name/<PLANS>.json``
exactly as ``nnUNetv2_train`` would, and the 2D twin of that configuration is pre-trained (same
stages, features, convs, in-plane kernels and strides), so export can hand nnU-Net an encoder that
loads key-for-key. Environment variables are read at call time (not at import, unlike
``nnunetv2.paths``) so one process can serve several nnU-Net folders, e.g. in tests.
"""
from __future__ import annotations

import json
import math
import os
import re
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

from nnunet_mosmos.encoders import twin_2d_arch_kwargs

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
REQ_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
DEFAULT_IMAGE_SIZE = 256
DEFAULT_PATCH_SIZE_3D = (64, 64, 64)
ZSCORE = "ZScoreNormalization"
#: default output, relative to the dataset's preprocessed folder (the fine-tuning trainer looks here)


class PlansError(ValueError):
    """Unknown dataset, missing plans or configuration; the message names the file and the fix."""


def _dataset_id(dataset) -> int:
    m = re.fullmatch(r"(?:Dataset)?(\d{1,3})(?:_.*)?", str(dataset).strip())
    if not m:
        raise PlansError(f"-d {dataset!r} is not a dataset id (e.g. 901) nor a DatasetXXX_Name folder name")
    return int(m.group(1))


def find_dataset_folder(dataset, env_vars=("nnUNet_preprocessed",)) -> Path:
    """``<$VAR>/DatasetXXX_Name`` for the first variable (in order) that holds it."""
    did = _dataset_id(dataset)
    looked = []
    for var in env_vars:
        root = os.environ.get(var)
        if not root:
            looked.append(f"${var} (not set)")
            continue
        hits = sorted(Path(root).glob(f"Dataset{did:03d}_*"))
        if hits:
            return hits[0]
        looked.append(f"${var}={root}")
    hint = ("run `nnUNetv2_plan_and_preprocess -d {0}` on the raw dataset first" if "nnUNet_preprocessed" in env_vars
            else "create it (e.g. `mosmos-synthetic -d {0}`) or set the variable").format(did)
    raise PlansError(f"unknown dataset id {did}: no Dataset{did:03d}_* folder in {', '.join(looked)}; {hint}")


@dataclass
class EncoderSpec:
    """What to build: nnU-Net network class + plans-style kwargs (2D or 3D), and where it came from.

    ``image_size`` is the training input: (H, W) in 2D, the patch (Z, Y, X) in 3D. 3D specs also say
    how volumes are brought to the encoder: ``spacing`` (None = keep each volume's own) and
    ``normalization`` (nnU-Net scheme name + the dataset fingerprint's intensity properties). Both
    carry the plans' ``use_mask_for_norm`` of channel 0 (z-score inside the non-zero region, as
    nnU-Net does for e.g. skull-stripped MRI); 2D inputs are z-scored (ROCO figures carry no HU).
    """
    arch_class_name: str
    arch_kwargs: dict
    arch_kwargs_req_import: list
    image_size: tuple
    target: dict | None = None  # {dataset, plans, configuration, input_channels, plans_file, folder}
    spacing: tuple | None = None
    normalization: dict | None = None  # {"scheme": str, "intensity_properties": dict | None}

    @property
    def strides(self) -> list:
        return self.arch_kwargs["strides"]

    @property
    def dim(self) -> int:
        return 3 if "3d" in str(self.arch_kwargs.get("conv_op", "")).lower() else 2


def default_arch_kwargs(image_size) -> dict:
    """nnU-Net's PlainConvUNet recipe for a cube-ish input (2 or 3 sizes): 3x3(x3) convs, 2 per
    stage, features 32 doubling up to 512 (320 in 3D, nnU-Net's caps), stride-2 stages until the
    smallest side is 4 (a 256 image gets 7 stages, a 64^3 patch 5)."""
    dim = len(image_size)
    side = min(image_size)
    n_stages = 1
    while side // 2 ** n_stages >= 4 and n_stages < 8:
        n_stages += 1
    suffix = f"{dim}d"
    return {
        "n_stages": n_stages,
        "features_per_stage": [min(32 * 2 ** i, 512 if dim == 2 else 320) for i in range(n_stages)],
        "conv_op": f"torch.nn.modules.conv.Conv{suffix}",
        "kernel_sizes": [[3] * dim] * n_stages,
        "strides": [[1] * dim] + [[2] * dim] * (n_stages - 1),
        "n_conv_per_stage": [2] * n_stages,
        "n_conv_per_stage_decoder": [2] * (n_stages - 1),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{suffix}",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def load_configuration(dataset, configuration: str, plans: str = "nnUNetPlans"):
    """(ConfigurationManager, target info) of one configuration of a preprocessed dataset."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = find_dataset_folder(dataset)
    plans_file = folder / f"{plans}.json"
    if not plans_file.is_file():
        raise PlansError(f"{plans_file} does not exist; run `nnUNetv2_plan_and_preprocess -d {_dataset_id(dataset)}`"
                         f" (plans name {plans!r}; pick another with -p)")
    try:
        plans_dict = json.loads(plans_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PlansError(f"{plans_file} is not readable JSON: {e}") from None
    available = sorted(plans_dict.get("configurations", {}))
    if configuration not in available:
        raise PlansError(f"configuration {configuration!r} is not in {plans_file}; available: {available}")
    cm = PlansManager(plans_dict).get_configuration(configuration)
    channels = 1
    dataset_json = folder / "dataset.json"
    if dataset_json.is_file():
        ds = json.loads(dataset_json.read_text(encoding="utf-8"))
        channels = len(ds.get("channel_names", ds.get("modality", {"0": ""})))
    target = {"dataset": folder.name, "plans": plans, "configuration": configuration,
              "input_channels": channels, "plans_file": str(plans_file), "folder": str(folder)}
    return cm, target


def encoder_spec(dataset=None, configuration: str | None = None, plans: str = "nnUNetPlans",
                 image_size=None, dim: int = 2) -> EncoderSpec:
    """The encoder to pre-train.

    ``dim=2``: the 2D twin of ``configuration`` (or the default 2D topology), z-scored per image (within
    the non-zero region when the plans' ``use_mask_for_norm`` says so). ``dim=3``: the
    configuration's own 3D encoder, trained on patches of its patch size at its spacing, normalised
    with its scheme, the dataset fingerprint's intensity properties and ``use_mask_for_norm``, i.e. what
    ``nnUNetv2_train`` feeds it (or the default 3D topology, native spacing, z-score).
    """
    if configuration and dataset is None:
        raise PlansError("-c/--configuration needs -d/--dataset (the nnU-Net dataset whose plans to use)")
    if dim not in (2, 3):
        raise PlansError(f"dim must be 2 or 3, got {dim}")
    if not configuration:
        if dim == 2:
            size = _pair(image_size or DEFAULT_IMAGE_SIZE)
        else:
            size = _triple(image_size or DEFAULT_PATCH_SIZE_3D)
        return EncoderSpec(PLAIN_UNET, default_arch_kwargs(size), list(REQ_IMPORT), size,
                           normalization={"scheme": ZSCORE, "intensity_properties": None})
    cm, target = load_configuration(dataset, configuration, plans)
    use_mask = bool(cm.use_mask_for_norm[0]) if cm.use_mask_for_norm else False
    if dim == 2:
        kwargs = twin_2d_arch_kwargs(cm.network_arch_init_kwargs)
        size = _pair(image_size or cm.patch_size[-2:])
        return EncoderSpec(cm.network_arch_class_name, kwargs, list(cm.network_arch_init_kwargs_req_import), size,
                           target, normalization={"scheme": ZSCORE, "intensity_properties": None,
                                                  "use_mask_for_norm": use_mask})
    if len(cm.patch_size) != 3:
        raise PlansError(f"configuration {configuration!r} of {target['plans_file']} is 2D; native 3D pre-training "
                         "needs a 3D one (e.g. -c 3d_fullres), or pre-train in 2D with --dim 2")
    size = _triple(image_size or cm.patch_size)
    scheme = cm.normalization_schemes[0] if cm.normalization_schemes else ZSCORE
    return EncoderSpec(cm.network_arch_class_name, deepcopy(cm.network_arch_init_kwargs),
                       list(cm.network_arch_init_kwargs_req_import), size, target,
                       spacing=tuple(float(s) for s in cm.spacing),
                       normalization={"scheme": scheme, "use_mask_for_norm": use_mask,
                                      "intensity_properties": intensity_properties(target["folder"])})


def check_input_size(spec: EncoderSpec, what: str = "--image-size") -> None:
    """PlansError when the training input is too small for the encoder's strides, named with the minimum.

    Each stride-s stage maps n pixels to ceil(n / s) (3x3 convs, padding 1); when the deepest stage is
    left with a single value per channel, InstanceNorm (nnU-Net's norm) cannot normalise it and the
    run would die at step 1 with a traceback from deep inside torch. Checked before anything is written.
    """
    if "instancenorm" not in str(spec.arch_kwargs.get("norm_op") or "").lower():
        return
    size = [int(s) for s in spec.image_size]
    deepest, total = list(size), [1] * len(size)
    for stride in spec.strides:
        stride = [int(stride)] * len(size) if isinstance(stride, int) else [int(s) for s in stride][-len(size):]
        deepest = [-(-n // s) for n, s in zip(deepest, stride)]
        total = [t * s for t, s in zip(total, stride)]
    if math.prod(deepest) > 1:
        return
    shape = "x".join(map(str, size))
    raise PlansError(f"{what} {shape} is too small for this encoder: its {len(spec.strides)} stages have a total "
                     f"stride of {'x'.join(map(str, total))}, so the deepest stage would hold one value per channel, "
                     f"which InstanceNorm cannot normalise. The minimum is {min(total) + 1} px on at least one axis; "
                     f"nnU-Net's own patches are multiples of the total stride (e.g. "
                     f"{'x'.join(str(2 * t) for t in total)})")


def intensity_properties(folder, channel: int = 0) -> dict | None:
    """Channel ``channel``'s foreground intensity statistics from ``dataset_fingerprint.json``
    (what nnU-Net's CTNormalization clips and scales with), or None when there is no fingerprint."""
    path = Path(folder) / "dataset_fingerprint.json"
    if not path.is_file():
        return None
    try:
        props = json.loads(path.read_text(encoding="utf-8"))["foreground_intensity_properties_per_channel"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise PlansError(f"{path} is not a readable nnU-Net fingerprint ({e}); re-run "
                         "`nnUNetv2_plan_and_preprocess`") from None
    return props.get(str(channel))


def default_output(target: dict) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_Name/mosmos_pretrained/<plans>__<configuration>.pt``."""
    from nnunet_mosmos.checkpoint import conventional_path

    return conventional_path(target["folder"], target["plans"], target["configuration"])


def _triple(size) -> tuple[int, int, int]:
    if isinstance(size, int):
        return size, size, size
    size = [int(s) for s in size]
    if len(size) == 1:
        return size[0], size[0], size[0]
    if len(size) != 3:
        raise PlansError(f"a 3D patch size takes one value (cube) or three (Z Y X), got {size}")
    return tuple(size)


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = [int(s) for s in size]
    return (size[0], size[0]) if len(size) == 1 else (size[-2], size[-1])
