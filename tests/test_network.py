"""The MOSMOS network: nnU-Net's U-Net + tag branch, 2D/3D, PlainConv/ResEnc, DS on/off."""
import pytest
import torch

from nnunet_mosmos.encoders import build_plain_network, stage_for_stride
from nnunet_mosmos.network import MOSMOSNetwork, TagBranchConfig, TrainingOutput
from plans_fixtures import configuration

CASES = [(2, False), (3, False), (2, True), (3, True)]


def _pair(dim, residual, ds=True, num_classes=4, text_dim=16):
    torch.manual_seed(0)
    cm = configuration(dim, residual)
    plain = build_plain_network(cm, 1, num_classes, ds)
    stage = stage_for_stride(cm.pool_op_kernel_sizes, 16)
    cfg = TagBranchConfig(num_tags=num_classes - 1, text_dim=text_dim, stage=stage, d_model=32,
                          num_heads=4, ffn_dim=64)
    torch.manual_seed(0)
    net = MOSMOSNetwork(build_plain_network(cm, 1, num_classes, ds), cfg)
    return cm, plain, net


@pytest.mark.parametrize("dim,residual", CASES)
def test_zero_initialised_branch_leaves_nnunet_output_unchanged(dim, residual):
    cm, plain, net = _pair(dim, residual, ds=False)
    net.load_state_dict(plain.state_dict(), strict=False)
    net.tag_branch.tag_embeddings.normal_()
    x = torch.randn(2, 1, *cm.patch_size)
    plain.eval(), net.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), net(x))


@pytest.mark.parametrize("dim,residual", CASES)
def test_nnunet_keys_are_kept_and_branch_has_its_own_prefix(dim, residual):
    _, plain, net = _pair(dim, residual)
    plain_keys, keys = set(plain.state_dict()), set(net.state_dict())
    assert plain_keys <= keys
    assert all(k.startswith("tag_branch.") for k in keys - plain_keys)
    assert "tag_branch.tag_embeddings" in keys and "tag_branch.prompt.ctx" in keys


@pytest.mark.parametrize("dim,residual", CASES)
@pytest.mark.parametrize("ds", [True, False])
def test_training_output_shapes_and_attention_maps_sum_to_one(dim, residual, ds):
    cm, plain, net = _pair(dim, residual, ds=ds)
    x = torch.randn(2, 1, *cm.patch_size)
    net.train()
    out = net(x)
    assert isinstance(out, TrainingOutput)
    seg = out.seg[0] if ds else out.seg
    assert seg.shape == (2, 4, *cm.patch_size)
    if ds:
        assert isinstance(out.seg, list) and len(out.seg) == len(cm.pool_op_kernel_sizes) - 1
    stage = net.branch_config.stage
    import numpy as np
    grid = (np.array(cm.patch_size) // np.prod(np.array(cm.pool_op_kernel_sizes[:stage + 1]), axis=0)).tolist()
    assert out.attention.shape == (2, 3, *grid)
    assert out.tag_logits.shape == (2, 3)
    assert torch.all(out.attention >= 0)
    sums = out.attention.flatten(2).sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    net.eval()
    with torch.no_grad():
        assert isinstance(net(x), (torch.Tensor, list))


def test_tag_embedding_override_changes_the_maps():
    cm, _, net = _pair(3, False)
    net.train()
    x = torch.randn(1, 1, *cm.patch_size)
    torch.manual_seed(1)
    a = net(x, tag_embeddings=torch.randn(3, 16)).attention
    b = net(x, tag_embeddings=torch.randn(3, 16)).attention
    assert not torch.allclose(a, b)


def test_invalid_stage_is_a_clear_error():
    cm = configuration(2)
    with pytest.raises(ValueError, match="stage 9 does not exist"):
        MOSMOSNetwork(build_plain_network(cm, 1, 3), TagBranchConfig(num_tags=2, text_dim=8, stage=9))


def test_branch_config_roundtrip_ignores_unknown_keys():
    cfg = TagBranchConfig(num_tags=3, text_dim=8, stage=2, d_model=64)
    assert TagBranchConfig.from_dict({**cfg.to_dict(), "future_key": 1}) == cfg


def test_stage_for_stride_picks_in_plane_stride_16():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert stage_for_stride(strides, 16) == 4
    assert stage_for_stride([[1, 1], [2, 2], [2, 2]], 16) == 2
