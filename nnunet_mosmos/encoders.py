"""nnU-Net's own encoder, built from plans: the full network, the 2D twin of a 3D configuration,
where the tag branch attaches, and moving 2D weights into 3D (inflation, stem adaptation).

Everything goes through nnU-Net's ``get_network_from_plans`` so the network is exactly the one
``nnUNetv2_train`` builds (PlainConvUNet, ResidualEncoderUNet or any plans-named class with the
dynamic-network-architectures encoder/decoder interface).
"""
from __future__ import annotations

import math
from copy import deepcopy

import numpy as np
import torch
from torch import nn


def network_from_architecture(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import, num_input_channels: int,
                              num_output_channels: int = 2, deep_supervision: bool = False) -> nn.Module:
    """nnU-Net's ``get_network_from_plans`` with nnU-Net's init: the one place any network is built from
    an architecture description (plans, a checkpoint's ``encoder`` entry, a pre-training spec)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, num_input_channels,
                                  num_output_channels, allow_init=True, deep_supervision=deep_supervision)


def encoder_from_architecture(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import,
                              num_input_channels: int) -> nn.Module:
    """The ``.encoder`` of that network (what pre-training trains and checkpoints carry)."""
    return network_from_architecture(arch_class_name, arch_kwargs, arch_kwargs_req_import, num_input_channels).encoder


def build_plain_network(configuration_manager, num_input_channels: int, num_output_channels: int,
                        deep_supervision: bool = True) -> nn.Module:
    """The network plain nnU-Net builds for this configuration (same call, same init)."""
    cm = configuration_manager
    return network_from_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, num_input_channels,
                                     num_output_channels, deep_supervision)


def cumulative_strides(strides) -> list[list[int]]:
    """Per-stage total downsampling factor per axis, e.g. [[1,1],[2,2],[4,4],...]."""
    return [list(map(int, s)) for s in np.cumprod(np.array(strides, dtype=int), axis=0)]


#: the tag branch reads the encoder stage whose in-plane stride is closest to this (both stages)
DEFAULT_TAG_STRIDE = 16


def stage_for_stride(strides, target_stride: int = DEFAULT_TAG_STRIDE) -> int:
    """Index of the encoder stage whose in-plane stride is closest to ``target_stride``.

    In-plane (the last two axes) because 3D plans are often anisotropic along z; ties go to the
    higher-resolution stage (more tokens, finer maps).
    """
    cum = cumulative_strides(strides)
    distances = [abs(math.log2(max(c[-2:])) - math.log2(target_stride)) for c in cum]
    return int(np.argmin(distances))


def twin_2d_arch_kwargs(arch_kwargs: dict) -> dict:
    """The 2D twin of a 3D architecture: same stages, features, convs; in-plane kernels and strides.

    Works on the plans' ``network_arch_init_kwargs`` (op names as strings) and returns a new dict.
    """
    kw = deepcopy(arch_kwargs)
    if "Conv3d" not in str(kw.get("conv_op", "")):
        return kw
    kw["conv_op"] = str(kw["conv_op"]).replace("Conv3d", "Conv2d")
    for key in ("norm_op", "dropout_op"):
        if kw.get(key):
            kw[key] = str(kw[key]).replace("3d", "2d").replace("3D", "2D")
    for key in ("kernel_sizes", "strides"):
        if key in kw:
            kw[key] = [list(v)[-2:] if isinstance(v, (list, tuple)) else v for v in kw[key]]
    return kw


def inflate_tensor(weight_2d: torch.Tensor, shape_3d: torch.Size) -> torch.Tensor:
    """I3D inflation of a conv kernel ``O x I x kh x kw`` to ``O x I x kd x kh x kw``.

    The 2D kernel is repeated along depth and divided by ``kd``, so a depth-constant input gives the
    same response as the 2D network on one slice.
    """
    if weight_2d.ndim + 1 != len(shape_3d) or tuple(weight_2d.shape[:2]) != tuple(shape_3d[:2]) \
            or tuple(weight_2d.shape[2:]) != tuple(shape_3d[3:]):
        raise ValueError(f"cannot inflate {tuple(weight_2d.shape)} to {tuple(shape_3d)}")
    kd = shape_3d[2]
    return weight_2d.unsqueeze(2).repeat(1, 1, kd, *([1] * (weight_2d.ndim - 2))) / kd


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stem kernel for a new number of input channels (e.g. 1 pre-trained -> 4 MRI channels).

    The mean over the source channels is repeated and rescaled by ``src/dst`` so that identical
    inputs on every channel give the pre-trained response.
    """
    src = weight.shape[1]
    if src == in_channels:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, *([1] * (weight.ndim - 2))) * (src / in_channels)
