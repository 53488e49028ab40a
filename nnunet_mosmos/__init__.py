"""nnunet-mosmos: MOSMOS report-supervised pre-training and fine-tuning as an nnU-Net v2 plugin.

This module must stay import-light (no torch): it is imported by console scripts such as
``mosmos-ext-path`` that only need the location of the trainer shim folder.
"""
import os

__version__ = "0.1.0"

#: The ONLY folder nnU-Net should scan for our trainers (value for ``nnUNet_extTrainer``).
EXT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def ext_trainer_value(existing: str | None) -> str:
    """``existing`` (an ``nnUNet_extTrainer`` value, may be empty) with :data:`EXT_DIR` appended once."""
    parts = [p for p in (existing or "").split(os.pathsep) if p]
    if EXT_DIR not in parts:
        parts.append(EXT_DIR)
    return os.pathsep.join(parts)
