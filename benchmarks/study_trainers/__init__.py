"""The benefit study's trainers, in an ``nnUNet_extTrainer`` folder of their own (not installed).

nnU-Net imports the modules of an ``nnUNet_extTrainer`` folder as TOP-LEVEL names, so the one
module here has a unique name (``nnunet_mosmos_study_trainers``) and imports ``nnunet_mosmos``
absolutely; this ``__init__`` is not one of the modules nnU-Net scans. The shipped shim does not
expose these trainers: whatever runs ``nnUNetv2_train -tr nnUNetTrainer*_study*`` sets the
variable with :func:`ext_trainer_value`.
"""
from __future__ import annotations

import os

import nnunet_mosmos

#: the folder to list in ``nnUNet_extTrainer`` for the study trainers
STUDY_TRAINERS_DIR = os.path.dirname(os.path.abspath(__file__))


def ext_trainer_value(existing: str | None) -> str:
    """``nnunet_mosmos.ext_trainer_value(existing)`` (our shipped trainers) with
    :data:`STUDY_TRAINERS_DIR` appended once."""
    parts = nnunet_mosmos.ext_trainer_value(existing).split(os.pathsep)
    if STUDY_TRAINERS_DIR not in parts:
        parts.append(STUDY_TRAINERS_DIR)
    return os.pathsep.join(parts)
