"""Initialising the MOSMOS network from a pre-training checkpoint: inflation, channels, errors."""
import pytest
import torch

from nnunet_mosmos.checkpoint import CheckpointError, load_mosmos_checkpoint, save_mosmos_checkpoint
from nnunet_mosmos.encoders import build_plain_network, stage_for_stride
from nnunet_mosmos.network import MOSMOSNetwork, TagBranchConfig
from nnunet_mosmos.pretrained import PretrainedMismatchError, load_pretrained
from plans_fixtures import configuration, mosmos_checkpoint

TEXT_DIM = 16


def _mosmos(dim, in_channels=1, base=8):
    cm = configuration(dim, base=base)
    stage = stage_for_stride(cm.pool_op_kernel_sizes, 16)
    cfg = TagBranchConfig(num_tags=3, text_dim=TEXT_DIM, stage=stage, d_model=32, num_heads=4, ffn_dim=64)
    return MOSMOSNetwork(build_plain_network(cm, in_channels, 4), cfg)


def _checkpoint(base=8):
    """A valid 2D pre-training checkpoint (what mosmos-pretrain writes for the default topology)."""
    cm = configuration(2, base=base)
    return mosmos_checkpoint(cm, text_dim=TEXT_DIM, stage=stage_for_stride(cm.pool_op_kernel_sizes, 16), seed=3)


def test_2d_checkpoint_inflates_into_a_3d_network_with_equal_values():
    ckpt = _checkpoint()
    net = _mosmos(3)
    reports = load_pretrained(net, ckpt)
    assert reports["encoder"]["inflated"] and not reports["encoder"]["mismatched"]
    key = "stages.0.0.convs.0.conv.weight"
    w2, w3 = ckpt["encoder"]["state_dict"][key], net.encoder.state_dict()[key]
    kd = w3.shape[2]
    assert torch.allclose(w3.sum(2), w2, atol=1e-6)          # mean over depth restored
    assert torch.allclose(w3[:, :, 0] * kd, w2, atol=1e-6)
    dec = net.tag_branch.decoder.state_dict()
    assert all(torch.equal(dec[k], v) for k, v in ckpt["tag_decoder"]["state_dict"].items())
    assert torch.equal(net.tag_branch.prompt.ctx.data, ckpt["prompt_context"])


def test_inflated_stem_gives_the_2d_response_on_a_depth_constant_volume():
    ckpt = _checkpoint()
    net = _mosmos(3)
    load_pretrained(net, ckpt)
    conv3 = net.encoder.stages[0][0].convs[0].conv
    conv2 = torch.nn.Conv2d(1, conv3.out_channels, 3, padding=1)
    conv2.load_state_dict({"weight": ckpt["encoder"]["state_dict"]["stages.0.0.convs.0.conv.weight"],
                           "bias": ckpt["encoder"]["state_dict"]["stages.0.0.convs.0.conv.bias"]})
    img = torch.randn(1, 1, 8, 8)
    vol = img.unsqueeze(2).repeat(1, 1, 5, 1, 1)
    out3 = conv3(torch.nn.functional.pad(vol, (0, 0, 0, 0, 1, 1), mode="replicate"))
    assert torch.allclose(out3[:, :, 2], conv2(img), atol=1e-5)


def test_stem_is_adapted_to_four_mri_channels():
    ckpt = _checkpoint()
    net = _mosmos(2, in_channels=4)
    reports = load_pretrained(net, ckpt)
    key = "stages.0.0.convs.0.conv.weight"
    assert key in reports["encoder"]["adapted"]
    w = net.encoder.state_dict()[key]
    assert w.shape[1] == 4
    # the same image on all four channels gives the pre-trained response
    assert torch.allclose(w.sum(1), ckpt["encoder"]["state_dict"][key][:, 0], atol=1e-6)


def test_checkpoint_of_another_topology_is_a_clear_error():
    with pytest.raises(PretrainedMismatchError, match="mosmos-pretrain -d"):
        load_pretrained(_mosmos(2, base=8), _checkpoint(base=4))


def test_not_a_mosmos_checkpoint_names_the_file_and_the_fix(tmp_path):
    plain = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"a": torch.zeros(1)}, "trainer_name": "nnUNetTrainer"}, plain)
    with pytest.raises(CheckpointError, match="checkpoint_final.pth.*plain nnU-Net"):
        load_mosmos_checkpoint(plain)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_mosmos_checkpoint(junk)


def test_gpu_saved_checkpoint_loads_on_a_cpu_only_machine(tmp_path, monkeypatch):
    from torch import serialization

    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as m:  # record every storage as living on cuda:0, as a GPU run would
        m.setattr(serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(_checkpoint(), path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            torch.load(path, weights_only=True)  # what a naive loader would hit
    ckpt = load_mosmos_checkpoint(path)
    assert ckpt["prompt_context"].device.type == "cpu"
    load_pretrained(_mosmos(3), ckpt)


def test_save_is_atomic_and_validated(tmp_path):
    bad = dict(_checkpoint())
    del bad["tag_decoder"]
    with pytest.raises(CheckpointError):
        save_mosmos_checkpoint(tmp_path / "x.pt", bad)
    assert not list(tmp_path.iterdir())
