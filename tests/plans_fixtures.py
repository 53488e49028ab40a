"""Small nnU-Net 2.8 configurations for unit tests: ``benchmarks.common.plans_like_configuration`` (the one
plans generator of tests and benchmarks) at test sizes, as a ConfigurationManager."""
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from benchmarks.common import plans_like_configuration


def configuration(dim: int = 3, residual: bool = False, n_stages: int = 4, base: int = 8,
                  patch=None) -> ConfigurationManager:
    """``n_stages`` stages of stride 2 (3D: the first in-plane only, anisotropic as nnU-Net plans often
    are), features ``base`` doubling up to 64, one conv per decoder stage."""
    patch = patch or ([16, 32, 32] if dim == 3 else [32, 32])
    strides = [[1] * dim] + [[2] * dim for _ in range(n_stages - 1)]
    if dim == 3:
        strides[1] = [1, 2, 2]
    return ConfigurationManager(plans_like_configuration(patch, base_features=base, max_features=64, strides=strides,
                                                         n_conv_decoder=1, residual=residual))


def mosmos_checkpoint(cm: ConfigurationManager, *, text_dim: int = 16, stage=None, vocabulary=("liver", "kidney"),
                      version=None, seed: int = 0, projections: bool = False,
                      use_mask_for_norm: bool = False) -> dict:
    """A checkpoint payload shaped like `mosmos-pretrain`'s (pretrain/export.py) whose encoder is the one
    nnU-Net builds for ``cm``: the one hand-built checkpoint of the tests. ``stage`` defaults to the
    deepest encoder stage; ``version`` to the current format (1 leaves out what version 2 added)."""
    import torch

    from nnunet_mosmos.checkpoint import FORMAT, VERSION
    from nnunet_mosmos.encoders import build_plain_network
    from nnunet_mosmos.tag_decoder import TagDecoder

    version = VERSION if version is None else version
    torch.manual_seed(seed)
    encoder = build_plain_network(cm, 1, 2, deep_supervision=False).encoder
    stage = len(encoder.output_channels) - 1 if stage is None else stage
    decoder = TagDecoder(encoder.output_channels[stage], text_dim, d_model=32, num_heads=4, ffn_dim=64)
    arch = cm.configuration["architecture"]
    dim = len(cm.patch_size)
    preprocessing = {"channels": 1, "normalization": "zscore-per-image", "image_size": list(cm.patch_size)}
    if version >= 2:
        preprocessing.update(dim=dim, use_mask_for_norm=use_mask_for_norm)
    payload = {
        "format": FORMAT, "version": version,
        "encoder": {"arch_class_name": arch["network_class_name"], "arch_kwargs": arch["arch_kwargs"],
                    "arch_kwargs_req_import": list(arch["_kw_requires_import"]), "input_channels": 1,
                    "dim": dim, "state_dict": encoder.state_dict()},
        "tag_decoder": {"config": decoder.config, "stage": stage, "state_dict": decoder.state_dict()},
        "prompt_context": torch.randn(4, text_dim),
        "text_encoder": {"name_or_path": "tiny", "dim": text_dim, "trained": False},
        "vocabulary": list(vocabulary),
        "preprocessing": preprocessing,
        "provenance": {"data": "test", "steps": 3, "history": [{"step": 1, "loss": 2.5}], "seed": seed},
    }
    if projections:
        payload["projections"] = {"image": {"weight": torch.randn(8, 4)}, "text": {"weight": torch.randn(8, text_dim)},
                                  "temperature": 0.07, "embed_dim": 8}
    return payload
