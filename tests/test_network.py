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


def test_training_and_inference_builds_have_identical_state_dicts():
    """nnU-Net predicts with build_network_architecture(..., enable_deep_supervision=False) and a
    strict load of the trained weights: both builds must agree key-for-key, shape-for-shape."""
    from nnunet_mosmos.training import nnUNetTrainerMOSMOS

    cm = configuration(3, residual=True)
    cfg = TagBranchConfig(num_tags=3, text_dim=16, stage=2, d_model=32, num_heads=4, ffn_dim=64)
    cm.configuration["mosmos_tag_branch"] = {"tag_branch": cfg.to_dict(), "prompts": ["a", "b", "c"]}
    train = nnUNetTrainerMOSMOS.build_network_architecture(None, cm, 1, 4, True)
    infer = nnUNetTrainerMOSMOS.build_network_architecture(None, cm, 1, 4, False)
    a, b = train.state_dict(), infer.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    train.tag_branch.tag_embeddings.normal_()
    infer.load_state_dict(train.state_dict(), strict=True)
    x = torch.randn(1, 1, *cm.patch_size)
    train.eval(), infer.eval()
    train.decoder.deep_supervision = False
    with torch.no_grad():
        assert torch.equal(train(x), infer(x))


def test_inference_build_without_the_plans_block_says_what_to_do():
    from nnunet_mosmos.training import nnUNetTrainerMOSMOS

    class FakePlans:
        dataset_name = "Dataset001_X"

    with pytest.raises(RuntimeError, match="mosmos_tag_branch.*trained with nnUNetTrainerMOSMOS"):
        nnUNetTrainerMOSMOS.build_network_architecture(FakePlans(), configuration(2), 1, 3, False)


@pytest.mark.slow
def test_network_compiles_as_one_graph_for_training_and_inference():
    """nnU-Net compiles the network by default on CUDA; the branch must not break the graph.
    (aot_eager checks capture + autograd without needing a GPU or a C++ toolchain.)"""
    cm, _, net = _pair(3, False)
    x = torch.randn(2, 1, *cm.patch_size)
    emb = torch.randn(3, 16, requires_grad=True)
    out = torch.compile(net, backend="aot_eager", fullgraph=True)(x, tag_embeddings=emb)
    (out.seg[0].sum() + out.attention.sum() + out.tag_logits.sum()).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        compiled = torch.compile(net, backend="aot_eager", fullgraph=True)(x)
        assert torch.allclose(compiled[0], net(x)[0], atol=1e-5)


# --------------------------------------------------------------------------- map semantics
def test_rescaled_maps_are_mean_one_and_uniform_attention_is_one_everywhere():
    from nnunet_mosmos.tag_decoder import rescaled_maps

    uniform = torch.full((2, 3, 4, 5), 1 / 20)
    assert torch.allclose(rescaled_maps(uniform), torch.ones(2, 3, 4, 5))
    peaked = torch.softmax(torch.randn(2, 3, 4, 5).flatten(2) * 3, -1).reshape(2, 3, 4, 5)
    maps = rescaled_maps(peaked, (8, 10))
    assert maps.shape == (2, 3, 8, 10)
    assert torch.allclose(maps.mean((2, 3)), torch.ones(2, 3), atol=1e-5)  # bilinear x2 keeps the mean


@pytest.mark.parametrize("levels", [None, 1, 2])
def test_injection_adds_the_rescaled_maps_to_exactly_the_injected_skips(levels):
    from nnunet_mosmos.tag_decoder import rescaled_maps

    cm, _, net = _pair(2, False)
    cfg = TagBranchConfig(**{**net.branch_config.to_dict(), "inject_levels": levels})
    net = MOSMOSNetwork(build_plain_network(cm, 1, 4, True), cfg)
    branch, stage = net.tag_branch, cfg.stage
    expected_stages = list(range(stage + 1)) if levels is None else list(range(stage + 1 - levels, stage + 1))
    assert branch.stages == expected_stages == cfg.injected_stages()
    assert len(branch.injections) == len(expected_stages)
    with torch.no_grad():
        for conv in branch.injections:  # every output channel := sum of the K maps
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    skips = [torch.zeros(1, c, 32 // 2 ** j, 32 // 2 ** j) for j, c in enumerate(net.encoder.output_channels)]
    attention = torch.softmax(torch.randn(1, 3, *skips[stage].shape[2:]).flatten(2), -1).reshape(1, 3, *skips[stage].shape[2:])
    out = branch.inject(skips, attention)
    for j, s in enumerate(out):
        if j in expected_stages:
            want = rescaled_maps(attention, s.shape[2:]).sum(1, keepdim=True).expand_as(s)
            assert torch.allclose(s, want, atol=1e-5), j
        else:
            assert torch.equal(s, skips[j]), j


def test_lean_branch_is_still_an_exact_no_op_at_init_and_has_fewer_parameters():
    from nnunet_mosmos.tag_decoder import decoder_preset

    cm, plain, full = _pair(2, False, ds=False)
    lean_cfg = TagBranchConfig(num_tags=3, text_dim=16, stage=full.branch_config.stage, inject_levels=2,
                               **decoder_preset("lean"))
    lean = MOSMOSNetwork(build_plain_network(cm, 1, 4, False), lean_cfg)
    lean.load_state_dict(plain.state_dict(), strict=False)
    lean.tag_branch.tag_embeddings.normal_()
    x = torch.randn(2, 1, *cm.patch_size)
    plain.eval(), lean.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), lean(x))
    assert lean.tag_branch.decoder.config["num_layers"] == 1 and lean.tag_branch.decoder.d_model == 128
    assert set(lean.state_dict()) - set(plain.state_dict()) >= {"tag_branch.injections.0.weight",
                                                              "tag_branch.injections.1.weight"}
    assert "tag_branch.injections.2.weight" not in lean.state_dict()


def test_tag_maps_are_what_the_decoder_is_fed():
    from nnunet_mosmos.tag_decoder import rescaled_maps

    cm, _, net = _pair(2, False)
    net.eval()
    x = torch.randn(1, 1, *cm.patch_size)
    with torch.no_grad():
        logits, maps = net.tag_maps(x)
        skips = net.encoder(x)
        tags = net.tags(skips)
    assert maps.shape == (1, 3, *cm.patch_size)
    assert torch.allclose(logits, tags.logits)
    assert torch.allclose(maps, rescaled_maps(tags.attention, cm.patch_size))


def test_invalid_inject_levels_is_a_clear_error():
    cm, _, net = _pair(2, False)
    cfg = TagBranchConfig(**{**net.branch_config.to_dict(), "inject_levels": 0})
    with pytest.raises(ValueError, match="inject_levels must be >= 1"):
        MOSMOSNetwork(build_plain_network(cm, 1, 4, True), cfg)


def test_branch_defaults_have_one_source():
    """The trainer, the network config and pre-training take the tag-branch sizes from the same constants."""
    from nnunet_mosmos.encoders import DEFAULT_TAG_STRIDE
    from nnunet_mosmos.tag_decoder import DECODER_PRESETS, DEFAULT_DECODER_PRESET
    from nnunet_mosmos.text import DEFAULT_CONTEXT_INIT, DEFAULT_N_CTX
    from nnunet_mosmos.training import nnUNetTrainerMOSMOS

    default = DECODER_PRESETS[DEFAULT_DECODER_PRESET]
    assert nnUNetTrainerMOSMOS.tag_decoder_kwargs == default
    assert TagBranchConfig(num_tags=1, text_dim=8, stage=0).decoder_kwargs() == default
    assert (nnUNetTrainerMOSMOS.n_ctx, nnUNetTrainerMOSMOS.context_init) == (DEFAULT_N_CTX, DEFAULT_CONTEXT_INIT)
    assert nnUNetTrainerMOSMOS.tag_branch_stride == DEFAULT_TAG_STRIDE
