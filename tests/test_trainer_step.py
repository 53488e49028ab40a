"""``nnUNetTrainerMOSMOS.train_step`` and friends on one synthetic batch (fast, no nnU-Net run).

What a user relies on and a log line cannot show: lambda really weights the aligning term in the
loss that is back-propagated, the prompt context learns when it should (and is frozen, with the text
encoder released, when it should not), and the cached embeddings are what prediction uses.
"""
import pytest
import torch

from benchmarks.common import build_trainer, plans_like, plans_like_configuration, workspace_env
from nnunet_mosmos.tag_decoder import decoder_preset
from nnunet_mosmos.training import nnUNetTrainerMOSMOS, nnUNetTrainerMOSMOS_lean

SMALL = dict(d_model=32, num_heads=4, num_layers=1, ffn_dim=64, dropout=0.0, self_attention=True)


def _make(tmp_path, tiny_text_encoder, base=nnUNetTrainerMOSMOS, **attrs):
    cls = type("Trainer_" + "_".join(attrs) if attrs else "TrainerUnderTest", (base,),
               {"tag_decoder_kwargs": SMALL, **attrs})
    plans, dataset_json = plans_like({"2d": plans_like_configuration([32, 32], max_stages=3)})
    with workspace_env(tmp_path, str(tiny_text_encoder), False, None):
        trainer = build_trainer(cls, plans, "2d", dataset_json, torch.device("cpu"))
    return trainer


def _batch(trainer, seed=0):
    from benchmarks.overhead import trainer_batch

    return trainer_batch(trainer, seed=seed)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_lambda_weights_the_aligning_term_of_the_backpropagated_loss(tmp_path, tiny_text_encoder, weight):
    trainer = _make(tmp_path, tiny_text_encoder, aligning_loss_weight=weight)
    out = trainer.train_step(_batch(trainer))
    assert float(out["align_loss"]) > 0
    assert float(out["loss"]) == pytest.approx(float(out["seg_loss"]) + weight * float(out["align_loss"]), rel=1e-5)
    # the presence classifier feeds only the aligning loss: its gradient exists iff lambda > 0
    grad = trainer._net().tag_branch.decoder.classifier.weight.grad
    assert grad is not None
    assert (grad.abs().sum() > 0) == (weight > 0)


def test_prompt_context_gets_a_gradient_and_moves_when_it_trains(tmp_path, tiny_text_encoder):
    trainer = _make(tmp_path, tiny_text_encoder, train_prompt_context=True)
    ctx = trainer._net().tag_branch.prompt.ctx
    before = ctx.detach().clone()
    trainer.train_step(_batch(trainer))
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert not torch.equal(before, ctx.detach())


def test_frozen_prompt_context_gets_no_gradient_and_releases_the_text_encoder(tmp_path, tiny_text_encoder):
    trainer = _make(tmp_path, tiny_text_encoder)  # the default (lean) trainer freezes the context
    net = trainer._net()
    cached = net.tag_branch.tag_embeddings.clone()
    assert cached.abs().sum() > 0  # cached once at initialize, before the encoder went
    assert trainer.text_encoder is None
    assert not net.tag_branch.prompt.ctx.requires_grad
    before = net.tag_branch.prompt.ctx.detach().clone()
    trainer.train_step(_batch(trainer))
    assert net.tag_branch.prompt.ctx.grad is None
    assert torch.equal(before, net.tag_branch.prompt.ctx)
    assert torch.equal(cached, net.tag_branch.tag_embeddings)
    trainer.refresh_tag_embeddings()  # a no-op without the encoder, never a crash
    assert torch.equal(cached, net.tag_branch.tag_embeddings)


def test_cached_embeddings_are_what_prediction_uses(tmp_path, tiny_text_encoder):
    trainer = _make(tmp_path, tiny_text_encoder, train_prompt_context=True)
    trainer.train_step(_batch(trainer))  # the context has moved: the cache must follow
    trainer.refresh_tag_embeddings()
    net = trainer._net()
    with torch.no_grad():
        live = trainer._tag_embeddings()
    assert torch.allclose(net.tag_branch.tag_embeddings, live, atol=1e-6)
    # prediction: nnU-Net's static builder from the plans block + strict load, then forward(x)
    rebuilt = type(trainer).build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, net.decoder.seg_layers[-1].out_channels,
        enable_deep_supervision=False)
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    net.decoder.deep_supervision = False
    net.eval(), rebuilt.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), net(x, tag_embeddings=live), atol=1e-5)


def test_lean_variant_builds_the_lean_branch(tmp_path, tiny_text_encoder):
    trainer = _make(tmp_path, tiny_text_encoder, base=nnUNetTrainerMOSMOS_lean,
                    tag_decoder_kwargs=decoder_preset("lean"))
    cfg = trainer._net().branch_config
    assert cfg.inject_levels == 2 and cfg.num_layers == 1 and cfg.d_model == 128
    assert trainer.text_encoder is None
    block = trainer.plans_manager.plans["configurations"]["2d"]["mosmos_tag_branch"]["tag_branch"]
    assert block["inject_levels"] == 2  # travels to prediction in plans.json
    out = trainer.train_step(_batch(trainer))
    assert torch.isfinite(torch.as_tensor(out["loss"]))


def test_default_trainer_is_the_lean_branch_and_full_variant_keeps_the_full_one(tmp_path, tiny_text_encoder):
    """The CHAOS study's decision (docs/benchmarks.md): nnUNetTrainerMOSMOS is the lean branch."""
    from nnunet_mosmos.tag_decoder import DEFAULT_DECODER_PRESET
    from nnunet_mosmos.training import nnUNetTrainerMOSMOS_full

    assert DEFAULT_DECODER_PRESET == "lean"
    assert nnUNetTrainerMOSMOS.tag_decoder_kwargs == decoder_preset("lean")
    assert nnUNetTrainerMOSMOS.tag_injection_levels == 2 and not nnUNetTrainerMOSMOS.train_prompt_context
    trainer = _make(tmp_path, tiny_text_encoder, base=nnUNetTrainerMOSMOS_full,
                    tag_decoder_kwargs=decoder_preset("full"))
    cfg = trainer._net().branch_config
    assert cfg.inject_levels is None and cfg.num_layers == 2 and cfg.d_model == 256
    assert trainer.text_encoder is not None and trainer._net().tag_branch.prompt.ctx.requires_grad
