"""The only module nnU-Net imports from ``nnUNet_extTrainer`` (as a TOP-LEVEL name).

It re-exports the real trainer classes with absolute imports, so the class nnU-Net finds is
``nnunet_mosmos.training....`` itself (pickling by reference keeps working in DA workers and
checkpoints). Keep this file name unique: while nnU-Net searches, this folder is ``sys.path[0]``.
"""
from nnunet_mosmos.training import *  # noqa: F401,F403
