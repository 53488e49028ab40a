"""The MOSMOS trainers; ``nnunet_ext/`` re-exports everything listed in ``__all__``."""
from nnunet_mosmos.training.nnUNetTrainerMOSMOS import nnUNetTrainerMOSMOS
from nnunet_mosmos.training.nnUNetTrainerMOSMOSEncoder import nnUNetTrainerMOSMOSEncoder
from nnunet_mosmos.training.variants import (
    nnUNetTrainerMOSMOS_5epochs,
    nnUNetTrainerMOSMOS_50epochs,
    nnUNetTrainerMOSMOS_demo,
    nnUNetTrainerMOSMOS_250epochs,
    nnUNetTrainerMOSMOS_frozenPrompt,
    nnUNetTrainerMOSMOS_full,
    nnUNetTrainerMOSMOS_lambda0p1,
    nnUNetTrainerMOSMOS_lean,
    nnUNetTrainerMOSMOS_lambda1p0,
    nnUNetTrainerMOSMOS_noAlign,
    nnUNetTrainerMOSMOS_scratch,
    nnUNetTrainerMOSMOS_tiny,
    nnUNetTrainerMOSMOS_tiny_noAlign,
    nnUNetTrainerMOSMOS_tiny_scratch,
    nnUNetTrainerMOSMOS_trainPrompt,
)

__all__ = [
    "nnUNetTrainerMOSMOS",
    "nnUNetTrainerMOSMOSEncoder",
    "nnUNetTrainerMOSMOS_lean",
    "nnUNetTrainerMOSMOS_full",
    "nnUNetTrainerMOSMOS_trainPrompt",
    "nnUNetTrainerMOSMOS_5epochs",
    "nnUNetTrainerMOSMOS_50epochs",
    "nnUNetTrainerMOSMOS_demo",
    "nnUNetTrainerMOSMOS_250epochs",
    "nnUNetTrainerMOSMOS_frozenPrompt",
    "nnUNetTrainerMOSMOS_lambda0p1",
    "nnUNetTrainerMOSMOS_lambda1p0",
    "nnUNetTrainerMOSMOS_noAlign",
    "nnUNetTrainerMOSMOS_scratch",
    "nnUNetTrainerMOSMOS_tiny",
    "nnUNetTrainerMOSMOS_tiny_noAlign",
    "nnUNetTrainerMOSMOS_tiny_scratch",
]
