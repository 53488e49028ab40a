"""``nnUNetTrainerMOSMOS``: nnU-Net's trainer with the pixel-tag attention branch and aligning loss.

One behaviour per class, configured by class attributes (see ``variants.py`` for the tiny
subclasses). What this trainer adds to ``nnUNetTrainer``:

* ``build_network_architecture`` (a classmethod, called by nnU-Net at training AND prediction)
  builds :class:`~nnunet_mosmos.network.MOSMOSNetwork` from the ``mosmos_tag_branch`` block this
  trainer writes into the configuration of plans.json, so prediction needs no text model;
* a frozen text encoder held by the trainer (never in the checkpoint), through which the prompt
  context (a network parameter) keeps learning; the resulting tag embeddings are cached in the
  network's buffer before every validation and checkpoint;
* ``loss = nnU-Net Dice+CE (deep supervision) + lambda * pixel-tag aligning loss``, with both parts
  logged every epoch (log file, ``progress_mosmos.png``).

* initialisation from a MOSMOS pre-training checkpoint (encoder, tag decoder, prompt context; 2D
  kernels inflated for 3D, stem adapted to the input channels), found at ``$MOSMOS_PRETRAINED`` or
  at the conventional ``$nnUNet_preprocessed/DatasetXXX/mosmos_pretrained/<plans>__<config>.pt``;
  without one the branch trains from scratch and the log says so.

Environment variables: ``MOSMOS_TEXT_ENCODER`` (HF id or folder; default: the checkpoint's text
encoder, else the offline all-MiniLM-L6-v2 of ``nnunet-mosmos[text]``), ``MOSMOS_PROMPTS`` (JSON
file label name -> prompt), ``MOSMOS_PRETRAINED`` (checkpoint path).
"""
from __future__ import annotations

import os
import warnings

import matplotlib
import numpy as np
import torch
from torch import distributed as dist
from torch._dynamo import OptimizedModule

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_mosmos.checkpoint import load_mosmos_checkpoint, locate_checkpoint
from nnunet_mosmos.encoders import DEFAULT_TAG_STRIDE, stage_for_stride
from nnunet_mosmos.losses import PixelTagAligningLoss
from nnunet_mosmos.network import PLANS_KEY, MOSMOSNetwork, TagBranchConfig, build_mosmos_network
from nnunet_mosmos.pretrained import load_pretrained, refit_hint, summarise, used
from nnunet_mosmos.tag_decoder import DEFAULT_DECODER_PRESET, decoder_preset
from nnunet_mosmos.tags import ENV_PROMPTS, class_prompts
from nnunet_mosmos.text import (DEFAULT_CONTEXT_INIT, DEFAULT_N_CTX, ENV_TEXT_ENCODER, TextEncoder, looks_local,
                                resolve_text_encoder, text_encoder_dim)
from nnunet_mosmos.training.startup import MOSMOSStartError, check_pretrained_fits, guarded_start

EXTRA_LOG_KEYS = ("train_seg_losses", "train_align_losses", "train_align_spatial", "train_align_presence")


class nnUNetTrainerMOSMOS(nnUNetTrainer):
    #: lambda, the weight of the pixel-tag aligning loss (0 disables it; the branch still trains)
    aligning_loss_weight: float = 0.5
    #: weight of the tag-presence term inside the aligning loss
    presence_loss_weight: float = 1.0
    #: the branch reads the encoder stage whose in-plane stride is closest to this ...
    tag_branch_stride: int = DEFAULT_TAG_STRIDE
    #: ... unless a stage index is given here
    tag_branch_stage: int | None = None
    #: tag decoder sizes (tag_decoder.DECODER_PRESETS; default "lean"); a pre-training checkpoint's sizes win
    tag_decoder_kwargs: dict = decoder_preset(DEFAULT_DECODER_PRESET)
    #: inject the maps into this many skips, lowest resolution first; None = every skip at/above the branch.
    #: The lean branch's 2 (the branch stage and the one above) is the default since the CHAOS study
    #: (docs/benchmarks.md); nnUNetTrainerMOSMOS_full keeps the full branch.
    tag_injection_levels: int | None = 2
    #: length of the learnable prompt context and the phrase its vectors start from
    n_ctx: int = DEFAULT_N_CTX
    context_init: str | None = DEFAULT_CONTEXT_INIT
    #: keep training the prompt context through the frozen text encoder (MOSMOS Fig. 3b); False (the
    #: lean default): the tag embeddings are computed once and the text encoder is released (no text
    #: pass per step)
    train_prompt_context: bool = False
    #: nnU-Net schedule overrides, e.g. {"num_epochs": 2, "num_iterations_per_epoch": 4}
    schedule: dict | None = None
    #: look for a pre-training checkpoint ($MOSMOS_PRETRAINED, then the conventional location)
    use_pretrained: bool = True

    @guarded_start  # bad input: one line (MOSMOSStartError), exit 1, no empty model folder left behind
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for key, value in (self.schedule or {}).items():
            setattr(self, key, value)
        if self.label_manager.has_regions:
            raise MOSMOSStartError(f"{self.__class__.__name__} supports label-based datasets only; this "
                                   "dataset.json defines regions. Train it with plain nnUNetTrainer.")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.class_prompts = class_prompts(dataset_json["labels"], os.environ.get(ENV_PROMPTS) or None)
        except ValueError as e:
            raise MOSMOSStartError(f"{self.__class__.__name__} cannot start: {e}. With nnUNetv2_train, point "
                                   f"the environment variable {ENV_PROMPTS} at that JSON file.") from None
        for w in caught:
            self.print_to_log_file(f"WARNING: {w.message}")
        self.pretrained_path = self._locate_pretrained()
        self.pretrained = load_mosmos_checkpoint(self.pretrained_path) if self.pretrained_path else None
        if self.pretrained is not None:
            check_pretrained_fits(self, self._refit_hint())
        self.text_encoder_name = self._choose_text_encoder()
        self._write_branch_plans(self._branch_config(text_encoder_dim(self.text_encoder_name)))
        self.text_encoder: TextEncoder | None = None
        self.aligning_loss = PixelTagAligningLoss(self.presence_loss_weight, self.label_manager.ignore_label)
        for key in EXTRA_LOG_KEYS:
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    # ------------------------------------------------------------------ pre-trained weights
    def _locate_pretrained(self) -> str | None:
        if not self.use_pretrained:
            return None
        return locate_checkpoint(self.preprocessed_dataset_folder_base, self.plans_manager.plans_name,
                                 self.configuration_name)

    def _choose_text_encoder(self) -> str:
        """Explicit $MOSMOS_TEXT_ENCODER > the checkpoint's text encoder (if present here) > default."""
        if os.environ.get(ENV_TEXT_ENCODER) or self.pretrained is None:
            return resolve_text_encoder(None)
        name = self.pretrained["text_encoder"]["name_or_path"]
        if looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
            self.print_to_log_file(f"WARNING: the checkpoint's text encoder {name} is not on this machine; "
                                   f"set {ENV_TEXT_ENCODER} to a copy of it. Using the default instead.")
            return resolve_text_encoder(None)
        return resolve_text_encoder(name)

    # ------------------------------------------------------------------ network + plans
    def _branch_config(self, text_dim: int) -> TagBranchConfig:
        arch = self.configuration_manager.network_arch_init_kwargs
        strides = arch.get("strides", self.configuration_manager.pool_op_kernel_sizes)
        n_stages = len(strides)
        stage = self.tag_branch_stage if self.tag_branch_stage is not None \
            else stage_for_stride(strides, self.tag_branch_stride)
        if not -n_stages <= stage < n_stages:
            raise ValueError(f"{self.__class__.__name__}.tag_branch_stage={stage} but configuration "
                             f"'{self.configuration_name}' has {n_stages} encoder stages")
        decoder_kwargs, n_ctx = dict(self.tag_decoder_kwargs), self.n_ctx
        if self.pretrained is not None:  # shape the branch like the pre-trained one so it loads
            pre = self.pretrained["tag_decoder"]
            fitted = {**decoder_kwargs, **{k: pre["config"][k] for k in decoder_kwargs if k in pre["config"]}}
            pre_ctx = int(self.pretrained["prompt_context"].shape[0])
            changed = {k: (decoder_kwargs[k], fitted[k]) for k in decoder_kwargs if decoder_kwargs[k] != fitted[k]}
            if pre_ctx != n_ctx:
                changed["n_ctx"] = (n_ctx, pre_ctx)
            if changed:
                self.print_to_log_file(
                    "MOSMOS: the tag branch takes the pre-training checkpoint's sizes so its weights load: "
                    + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
            decoder_kwargs, n_ctx = fitted, pre_ctx
            features = arch.get("features_per_stage", [])
            pre_stage = int(pre.get("stage", -1))
            if self.tag_branch_stage is None and 0 <= pre_stage < n_stages \
                    and features[pre_stage] == pre["config"].get("visual_channels"):
                stage = pre_stage
        return TagBranchConfig(num_tags=len(self.class_prompts), text_dim=text_dim, stage=stage % n_stages,
                               n_ctx=n_ctx, inject_levels=self.tag_injection_levels, **decoder_kwargs)

    def _write_branch_plans(self, config: TagBranchConfig) -> None:
        """Store the branch in plans.json (nnU-Net copies it into the model folder at train start)."""
        block = {"tag_branch": config.to_dict(), "prompts": list(self.class_prompts),
                 "text_encoder": self.text_encoder_name}
        self.plans_manager.plans["configurations"][self.configuration_name][PLANS_KEY] = block
        self.configuration_manager.configuration[PLANS_KEY] = block

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> MOSMOSNetwork:
        block = configuration_manager.configuration.get(PLANS_KEY)
        if block is None:
            raise RuntimeError(
                f"The plans of dataset {plans_manager.dataset_name} have no '{PLANS_KEY}' block in this "
                f"configuration, so {cls.__name__} cannot rebuild its network. Use the plans.json of a model "
                "folder trained with nnUNetTrainerMOSMOS (nnU-Net writes it there at training start).")
        return build_mosmos_network(configuration_manager, num_input_channels, num_output_channels,
                                    TagBranchConfig.from_dict(block["tag_branch"]), enable_deep_supervision)

    def _net(self) -> MOSMOSNetwork:
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def initialize(self):
        super().initialize()
        self.text_encoder = TextEncoder(self.text_encoder_name).to(self.device)
        prompt = self._net().tag_branch.prompt
        with torch.no_grad():
            prompt.ctx.copy_(self.text_encoder.context_init(self.context_init, prompt.ctx.shape[0]))
        self._load_pretrained()
        self.print_to_log_file(
            f"MOSMOS: text encoder {self.text_encoder_name}; prompts {self.class_prompts}; tag branch "
            f"{self._net().branch_config}; lambda={self.aligning_loss_weight}")
        self.refresh_tag_embeddings()
        if not self.train_prompt_context:
            # the context never changes, so the cached embeddings are final: no text pass per step, and
            # the text encoder (87 MB for MiniLM) is not kept resident
            self.text_encoder = None
            self.print_to_log_file("MOSMOS: prompt context frozen; tag embeddings cached once, text encoder released")

    def configure_optimizers(self):
        """A frozen prompt context is taken out of training before the optimizer and DDP see it (DDP
        would otherwise wait for a gradient that never comes)."""
        if not self.train_prompt_context:
            net = self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network
            net.tag_branch.prompt.ctx.requires_grad_(False)
        return super().configure_optimizers()

    def _refit_hint(self) -> str:
        return refit_hint(self.plans_manager.dataset_name, self.configuration_name, self.plans_manager.plans_name,
                          "nnUNetTrainerMOSMOS_scratch")

    def _load_pretrained(self) -> None:
        if self.pretrained is None:
            self.print_to_log_file(
                "MOSMOS: no pre-training checkpoint (set MOSMOS_PRETRAINED or run `mosmos-pretrain -d "
                f"{self.plans_manager.dataset_name} -c {self.configuration_name}`): the encoder starts from "
                "nnU-Net's random init and the tag branch trains from scratch.")
            return
        reports = load_pretrained(self._net(), self.pretrained, self.pretrained_path, self._refit_hint())
        self.print_to_log_file(f"MOSMOS: initialised from {self.pretrained_path}")
        for part, report in reports.items():
            partial = report["missing"] or report["mismatched"]
            prefix = "WARNING: partial fit, " if partial and used(report) else ""
            self.print_to_log_file("MOSMOS:", prefix + summarise(part, report))

    # ------------------------------------------------------------------ tag embeddings
    def _tag_embeddings(self) -> torch.Tensor:
        return self._net().tag_branch.prompt(self.text_encoder, self.class_prompts)

    @torch.no_grad()
    def refresh_tag_embeddings(self) -> None:
        """Cache the current prompt embeddings in the network (what prediction will use)."""
        if self.text_encoder is not None:
            branch = self._net().tag_branch
            branch.tag_embeddings.copy_(self._tag_embeddings().to(branch.tag_embeddings.dtype))

    # ------------------------------------------------------------------ training
    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            emb = self._tag_embeddings() if self.train_prompt_context else None
            out = self.network(data, tag_embeddings=emb)
            seg_loss = self.loss(out.seg, target)
            align = self.aligning_loss(out.attention, out.tag_logits,
                                       target[0] if isinstance(target, list) else target)
            loss = seg_loss + self.aligning_loss_weight * align["loss"]

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy(), "seg_loss": seg_loss.detach().cpu().numpy(),
                "align_loss": align["loss"].detach().cpu().numpy(),
                "align_spatial": align["spatial"].cpu().numpy(), "align_presence": align["presence"].cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: list):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        for key, name in zip(EXTRA_LOG_KEYS, ("seg_loss", "align_loss", "align_spatial", "align_presence")):
            value = np.mean(outputs[name])
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.mean(gathered))
            self.logger.log(key, value, self.current_epoch)

    def on_validation_epoch_start(self):
        self.refresh_tag_embeddings()
        super().on_validation_epoch_start()

    def on_epoch_end(self):
        log = self.logger.local_logger.my_fantastic_logging
        self.print_to_log_file("train_seg_loss", np.round(log["train_seg_losses"][-1], 4),
                               "train_align_loss", np.round(log["train_align_losses"][-1], 4),
                               f"(spatial {np.round(log['train_align_spatial'][-1], 4)}, "
                               f"presence {np.round(log['train_align_presence'][-1], 4)})")
        super().on_epoch_end()
        if self.local_rank == 0:
            self._plot_mosmos_progress()

    def _plot_mosmos_progress(self) -> None:
        matplotlib.use("agg")
        import matplotlib.pyplot as plt

        log = self.logger.local_logger.my_fantastic_logging
        n = min(len(log[k]) for k in ("train_losses", "val_losses") + EXTRA_LOG_KEYS)
        fig, ax = plt.subplots(figsize=(10, 6))
        for key, style in (("train_losses", "b-"), ("val_losses", "r-"), ("train_seg_losses", "b--"),
                           ("train_align_losses", "m-"), ("train_align_spatial", "m:"),
                           ("train_align_presence", "c:")):
            ax.plot(range(n), log[key][:n], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(f"MOSMOS losses (lambda={self.aligning_loss_weight})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(self.output_folder, "progress_mosmos.png"))
        plt.close(fig)

    def save_checkpoint(self, filename: str) -> None:
        self.refresh_tag_embeddings()
        super().save_checkpoint(filename)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.refresh_tag_embeddings()
        super().perform_actual_validation(save_probabilities)
