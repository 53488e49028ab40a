"""The checkpoint contract round trip: what pre-training writes is what fine-tuning loads, bit for bit."""
import pytest
import torch

from nnunet_mosmos.checkpoint import (FORMAT, VERSION, CheckpointError, load_mosmos_checkpoint,
                                      save_mosmos_checkpoint, validate_checkpoint)
from nnunet_mosmos.encoders import build_plain_network, stage_for_stride
from nnunet_mosmos.network import MOSMOSNetwork, TagBranchConfig
from nnunet_mosmos.pretrained import load_pretrained
from plans_fixtures import configuration, mosmos_checkpoint

TEXT_DIM = 16


def _payload(version=VERSION):
    """A checkpoint shaped like `mosmos-pretrain`'s for a small 2D topology, zero-shot heads included."""
    cm = configuration(2, base=8)
    return mosmos_checkpoint(cm, text_dim=TEXT_DIM, stage=stage_for_stride(cm.pool_op_kernel_sizes, 16),
                             vocabulary=("liver", "kidney", "spleen"), version=version, seed=7, projections=True,
                             use_mask_for_norm=True)  # not the default: the round trip must keep it


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_save_then_load_returns_every_entry_unchanged(tmp_path):
    payload = _payload()
    path = save_mosmos_checkpoint(tmp_path / "ckpt.pt", payload)
    loaded = load_mosmos_checkpoint(path)
    assert _equal(payload, loaded)
    # plain containers only: opens without executing code, on a machine without a GPU
    assert _equal(payload, torch.load(path, map_location="cpu", weights_only=True))


def test_fine_tuning_network_receives_the_saved_tensors(tmp_path):
    payload = _payload()
    loaded = load_mosmos_checkpoint(save_mosmos_checkpoint(tmp_path / "ckpt.pt", payload))
    cm = configuration(2, base=8)
    cfg = TagBranchConfig(num_tags=3, text_dim=TEXT_DIM, stage=payload["tag_decoder"]["stage"], d_model=32,
                          num_heads=4, ffn_dim=64)
    net = MOSMOSNetwork(build_plain_network(cm, 1, 4), cfg)
    load_pretrained(net, loaded)
    encoder = net.encoder.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in payload["encoder"]["state_dict"].items())
    decoder = net.tag_branch.decoder.state_dict()
    assert all(torch.equal(decoder[k], v) for k, v in payload["tag_decoder"]["state_dict"].items())
    assert torch.equal(net.tag_branch.prompt.ctx.data, payload["prompt_context"])


def test_version_1_files_still_load_and_newer_ones_are_refused(tmp_path):
    old = _payload(version=1)
    assert "dim" not in old["preprocessing"]
    assert load_mosmos_checkpoint(save_mosmos_checkpoint(tmp_path / "v1.pt", old))["version"] == 1
    with pytest.raises(CheckpointError, match=rf"version {VERSION + 1} is newer .* upgrade nnunet-mosmos"):
        validate_checkpoint({**_payload(), "version": VERSION + 1}, source="new.pt")


def test_save_fills_in_format_and_version(tmp_path):
    payload = _payload()
    del payload["format"], payload["version"]
    loaded = load_mosmos_checkpoint(save_mosmos_checkpoint(tmp_path / "ckpt.pt", payload))
    assert loaded["format"] == FORMAT and loaded["version"] == VERSION == 2
