"""Hand-written nnU-Net 2.8 configurations (what nnUNetv2_plan_experiment would write), for unit tests."""
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager


def configuration(dim: int = 3, residual: bool = False, n_stages: int = 4, base: int = 8,
                  patch=None) -> ConfigurationManager:
    patch = patch or ([16, 32, 32] if dim == 3 else [32, 32])
    first = [1] * dim
    strides = [first] + [[2] * dim for _ in range(n_stages - 1)]
    if dim == 3:
        strides[1] = [1, 2, 2]  # anisotropic, as nnU-Net plans often are
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    kwargs = {
        "n_stages": n_stages,
        "features_per_stage": [min(base * 2 ** i, 64) for i in range(n_stages)],
        "conv_op": conv,
        "kernel_sizes": [[3] * dim] * n_stages,
        "strides": strides,
        "n_conv_per_stage_decoder": [1] * (n_stages - 1),
        "conv_bias": True,
        "norm_op": norm,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if residual:
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        kwargs["n_blocks_per_stage"] = [1] * n_stages
    else:
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
        kwargs["n_conv_per_stage"] = [2] * n_stages
    return ConfigurationManager({
        "data_identifier": "test", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": patch, "spacing": [1.0] * dim, "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "architecture": {"network_class_name": name, "arch_kwargs": kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    })
