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
