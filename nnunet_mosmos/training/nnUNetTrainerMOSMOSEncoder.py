"""``nnUNetTrainerMOSMOSEncoder``: plain nnU-Net whose encoder starts from MOSMOS pre-training.

nnU-Net's own network, loss, schedule and inference, with no tag branch: only the encoder's
initial weights come from a MOSMOS pre-training checkpoint (``$MOSMOS_PRETRAINED`` or the
conventional ``$nnUNet_preprocessed/DatasetXXX/mosmos_pretrained/<plans>__<configuration>.pt``).
It answers "does the pre-trained encoder transfer?" apart from "does the branch help?", and it
is the way to use report pre-training where a model must stay a plain nnU-Net model (prediction
and the model folder are exactly plain nnU-Net's).

nnU-Net's ``-pretrained_weights`` cannot do this: it demands every key of the whole network, and
a MOSMOS checkpoint holds an encoder (2D, inflated to 3D where the configuration is 3D).
"""
from __future__ import annotations

import torch
from torch._dynamo import OptimizedModule

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mosmos.checkpoint import ENV_PRETRAINED, load_mosmos_checkpoint, locate_checkpoint
from nnunet_mosmos.pretrained import load_pretrained_encoder, refit_hint, summarise
from nnunet_mosmos.training.startup import MOSMOSStartError, check_pretrained_fits, guarded_start


class nnUNetTrainerMOSMOSEncoder(nnUNetTrainer):
    @guarded_start  # bad input: one line (MOSMOSStartError), exit 1, no empty model folder left behind
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pretrained_path = locate_checkpoint(self.preprocessed_dataset_folder_base,
                                                 self.plans_manager.plans_name, configuration)
        if self.pretrained_path is None:
            raise MOSMOSStartError(
                f"{self.__class__.__name__} needs a MOSMOS pre-training checkpoint: set {ENV_PRETRAINED}=FILE.pt "
                f"or run `mosmos-pretrain -d {self.plans_manager.dataset_name} -c {configuration}` (it writes the "
                "conventional file this trainer looks for). Without one, train plain nnUNetTrainer.")
        self.pretrained = load_mosmos_checkpoint(self.pretrained_path)
        check_pretrained_fits(self, self._refit_hint())

    def _refit_hint(self) -> str:
        return refit_hint(self.plans_manager.dataset_name, self.configuration_name, self.plans_manager.plans_name,
                          "plain nnUNetTrainer")

    def initialize(self):
        super().initialize()
        net = self.network.module if self.is_ddp else self.network
        net = net._orig_mod if isinstance(net, OptimizedModule) else net
        report = load_pretrained_encoder(net.encoder, self.pretrained, self.pretrained_path, self._refit_hint())
        self.print_to_log_file(f"MOSMOS: encoder initialised from {self.pretrained_path} (no tag branch)")
        self.print_to_log_file("MOSMOS:", summarise("encoder", report))
