"""Tiny subclasses of :class:`nnUNetTrainerMOSMOS`, one changed class attribute each (nnU-Net style).

Names follow nnU-Net's conventions (``_lambda0p1`` = 0.1, ``_5epochs``); use them with ``-tr``.
"""
from nnunet_mosmos.tag_decoder import decoder_preset
from nnunet_mosmos.training.nnUNetTrainerMOSMOS import nnUNetTrainerMOSMOS


# --- the lambda sweep of the paper (Fig. 5) and the ablation without the aligning loss ---------
class nnUNetTrainerMOSMOS_lambda0p1(nnUNetTrainerMOSMOS):
    aligning_loss_weight = 0.1


class nnUNetTrainerMOSMOS_lambda1p0(nnUNetTrainerMOSMOS):
    aligning_loss_weight = 1.0


class nnUNetTrainerMOSMOS_noAlign(nnUNetTrainerMOSMOS):
    """Same network, the branch is trained only through the segmentation loss."""
    aligning_loss_weight = 0.0


class nnUNetTrainerMOSMOS_frozenPrompt(nnUNetTrainerMOSMOS):
    """The prompt context stays at its initial value (tag embeddings computed once); the default
    since the lean branch is, kept so that earlier commands keep working."""
    train_prompt_context = False


class nnUNetTrainerMOSMOS_trainPrompt(nnUNetTrainerMOSMOS):
    """The lean branch, but the prompt context keeps training through the frozen text encoder."""
    train_prompt_context = True


# --- the two branches (docs/benchmarks.md: the overhead targets, and the CHAOS study's verdict) ----
class nnUNetTrainerMOSMOS_lean(nnUNetTrainerMOSMOS):
    """Small tag decoder (1 layer, d_model 128), maps injected only at the branch stage and the one
    above it, prompt context frozen (tag embeddings cached once, text encoder released). This is the
    default of :class:`nnUNetTrainerMOSMOS` since the CHAOS study; the class pins it so that its model
    folders mean the same whatever the default becomes. With a pre-training checkpoint the decoder
    takes the checkpoint's sizes (``mosmos-pretrain`` writes lean ones by default)."""
    tag_decoder_kwargs = decoder_preset("lean")
    tag_injection_levels = 2
    train_prompt_context = False


class nnUNetTrainerMOSMOS_full(nnUNetTrainerMOSMOS):
    """The full branch the project started with: tag decoder 2 layers, d_model 256, FFN 1024; maps
    injected into every skip at or above the branch stage; the prompt context trained through the
    frozen text encoder every step. Pre-train its checkpoint with ``mosmos-pretrain --tag-decoder full``."""
    tag_decoder_kwargs = decoder_preset("full")
    tag_injection_levels = None
    train_prompt_context = True


# --- shorter schedules ---------------------------------------------------------------------------
class nnUNetTrainerMOSMOS_5epochs(nnUNetTrainerMOSMOS):
    schedule = {"num_epochs": 5}


class nnUNetTrainerMOSMOS_50epochs(nnUNetTrainerMOSMOS):
    schedule = {"num_epochs": 50}


class nnUNetTrainerMOSMOS_250epochs(nnUNetTrainerMOSMOS):
    schedule = {"num_epochs": 250}


class nnUNetTrainerMOSMOS_tiny(nnUNetTrainerMOSMOS):
    """Smoke-test size for CPU and CI: 2 epochs of 4 + 2 iterations and a small tag decoder."""
    schedule = {"num_epochs": 2, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 2,
                "save_every": 1}
    tag_decoder_kwargs = dict(d_model=64, num_heads=4, num_layers=2, ffn_dim=128, dropout=0.1,
                              self_attention=True)


class nnUNetTrainerMOSMOS_tiny_noAlign(nnUNetTrainerMOSMOS_tiny):
    aligning_loss_weight = 0.0


# --- fair comparisons ----------------------------------------------------------------------------
class nnUNetTrainerMOSMOS_scratch(nnUNetTrainerMOSMOS):
    """Same network, never loads a pre-training checkpoint (the from-scratch twin)."""
    use_pretrained = False


class nnUNetTrainerMOSMOS_tiny_scratch(nnUNetTrainerMOSMOS_tiny):
    use_pretrained = False


class nnUNetTrainerMOSMOS_demo(nnUNetTrainerMOSMOS):
    """The schedule of `mosmos-demo` (2d: the whole demo in under 10 minutes on 2 idle CPU cores; 16 and
    14 epochs took 10 min 31 s and 10 min 18 s, docs/demo.md)."""
    schedule = {"num_epochs": 12, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 3}
    tag_decoder_kwargs = dict(d_model=128, num_heads=4, num_layers=2, ffn_dim=256, dropout=0.1,
                              self_attention=True)
