"""Which encoder to pre-train: the one a dataset's nnU-Net plans describe, or a documented default.

``-d DATASET -c CONFIG [-p PLANS]`` reads ``$nnUNet_preprocessed/DatasetXXX_Name/<PLANS>.json``
exactly as ``nnUNetv2_train`` would, and the 2D twin of that configuration is pre-trained (same
stages, features, convs, in-plane kernels and strides), so export can hand nnU-Net an encoder that
loads key-for-key. Environment variables are read at call time (not at import, unlike
``nnunetv2.paths``) so one process can serve several nnU-Net folders, e.g. in tests.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_mosmos.encoders import twin_2d_arch_kwargs

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
REQ_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
DEFAULT_IMAGE_SIZE = 256
#: default output, relative to the dataset's preprocessed folder (the fine-tuning trainer looks here)
OUTPUT_SUBFOLDER = "mosmos_pretrained"


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
    """What to build: nnU-Net network class + plans-style kwargs (2D), and where it came from."""
    arch_class_name: str
    arch_kwargs: dict
    arch_kwargs_req_import: list
    image_size: tuple[int, int]
    target: dict | None = None  # {dataset, plans, configuration, input_channels, plans_file, folder}

    @property
    def strides(self) -> list:
        return self.arch_kwargs["strides"]


def default_arch_kwargs(image_size) -> dict:
    """nnU-Net's 2D PlainConvUNet recipe for a square-ish input: 3x3 convs, 2 per stage, features
    32 doubling up to 512, stride-2 stages until the smallest side is 4 (a 256 input gets 7 stages)."""
    side = min(image_size)
    n_stages = 1
    while side // 2 ** n_stages >= 4 and n_stages < 8:
        n_stages += 1
    return {
        "n_stages": n_stages,
        "features_per_stage": [min(32 * 2 ** i, 512) for i in range(n_stages)],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * n_stages,
        "strides": [[1, 1]] + [[2, 2]] * (n_stages - 1),
        "n_conv_per_stage": [2] * n_stages,
        "n_conv_per_stage_decoder": [2] * (n_stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
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
                 image_size=None) -> EncoderSpec:
    """The 2D encoder to pre-train: the 2D twin of ``configuration`` or the default topology."""
    if configuration and dataset is None:
        raise PlansError("-c/--configuration needs -d/--dataset (the nnU-Net dataset whose plans to use)")
    if not configuration:
        size = _pair(image_size or DEFAULT_IMAGE_SIZE)
        return EncoderSpec(PLAIN_UNET, default_arch_kwargs(size), list(REQ_IMPORT), size)
    cm, target = load_configuration(dataset, configuration, plans)
    kwargs = twin_2d_arch_kwargs(cm.network_arch_init_kwargs)
    size = _pair(image_size or cm.patch_size[-2:])
    return EncoderSpec(cm.network_arch_class_name, kwargs, list(cm.network_arch_init_kwargs_req_import), size,
                       target)


def default_output(target: dict) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_Name/mosmos_pretrained/<plans>__<configuration>.pt``."""
    return Path(target["folder"]) / OUTPUT_SUBFOLDER / f"{target['plans']}__{target['configuration']}.pt"


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = [int(s) for s in size]
    return (size[0], size[0]) if len(size) == 1 else (size[-2], size[-1])
