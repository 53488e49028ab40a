"""Trainers of the benefit study (``scripts/bench_benefit.py``): equal budget, seeded, plain vs MOSMOS.

Not shipped: this module lives in the ``nnUNet_extTrainer`` folder ``benchmarks/study_trainers/``,
which the study adds to the variable itself; nnU-Net imports it as the TOP-LEVEL module
``nnunet_mosmos_study_trainers`` (hence the unique name and the absolute imports).

The study compares arms at a *fixed iteration budget* chosen per study run (a handful of
iterations for the CI test, a few hundred for the documented run). ``nnUNetv2_train`` has no
option for the schedule or the seed, and a trainer class is all it lets us choose, so these
trainers read them from the environment, which the study sets per run:

* ``MOSMOS_STUDY_EPOCHS``     -> ``num_epochs``
* ``MOSMOS_STUDY_ITERS``      -> ``num_iterations_per_epoch``
* ``MOSMOS_STUDY_VAL_ITERS``  -> ``num_val_iterations_per_epoch`` (only the logged pseudo-Dice)
* ``MOSMOS_STUDY_SEED``       -> seeds ``random``, ``numpy`` and ``torch`` before nnU-Net builds
  anything, so a seed fixes the initial weights and (with ``nnUNet_n_proc_DA=0``) the batches.

They also skip nnU-Net's final validation (on fold ``all`` it would re-score the training cases;
the study scores the held-out test set itself), and they write only what the study reads: no
``checkpoint_best.pth`` / ``checkpoint_latest.pth`` (the study predicts from ``checkpoint_final.pth``
and resumes per run, not per epoch) and the progress plots once, after the last epoch, instead of
every epoch. On the 2-core CPU these per-epoch writes took 55-76 s of a ~600 s run (2026-12-03,
``docs/benchmarks.md``), more for MOSMOS (two plots) than for plain nnU-Net (one). None of it touches
the weights, the batches or the random state.

An unset variable keeps nnU-Net's default. The plain twin subclasses ``nnUNetTrainer`` itself, so
"plain vs MOSMOS" differs only in what MOSMOS adds, never in the schedule.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mosmos.tag_decoder import decoder_preset
from nnunet_mosmos.training.nnUNetTrainerMOSMOS import nnUNetTrainerMOSMOS
from nnunet_mosmos.training.nnUNetTrainerMOSMOSEncoder import nnUNetTrainerMOSMOSEncoder
from pretrain.state import seed_all

#: environment variable -> nnUNetTrainer attribute it sets
SCHEDULE_ENV = {"MOSMOS_STUDY_EPOCHS": "num_epochs", "MOSMOS_STUDY_ITERS": "num_iterations_per_epoch",
                "MOSMOS_STUDY_VAL_ITERS": "num_val_iterations_per_epoch"}
SEED_ENV = "MOSMOS_STUDY_SEED"


def _positive_int(name: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name}={text!r} must be an integer >= {minimum}; fix or unset the variable")
    return value


def study_schedule(environ=os.environ) -> dict:
    """The nnU-Net schedule attributes given by ``MOSMOS_STUDY_*`` (only those that are set)."""
    return {attr: _positive_int(var, environ[var], 1) for var, attr in SCHEDULE_ENV.items() if environ.get(var)}


def study_seed(environ=os.environ) -> int | None:
    return _positive_int(SEED_ENV, environ[SEED_ENV], 0) if environ.get(SEED_ENV) else None


THREADS_ENV = "MOSMOS_STUDY_THREADS"


class StudyBudgetMixin:
    """Seed first (network init happens later, in ``initialize``), then apply the schedule last,
    so it wins over nnU-Net's defaults and over a MOSMOS class ``schedule``.

    ``MOSMOS_STUDY_THREADS`` sets torch's intra-op threads: ``nnUNetv2_train -device cpu`` calls
    ``torch.set_num_threads(cpu_count())`` before it builds the trainer, whatever OMP_NUM_THREADS
    says, so two runs side by side on 2 cores would each spin 2 OpenMP threads (measured: 2.2-2.7 s
    instead of ~1.4 s per 2d iteration)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if os.environ.get(THREADS_ENV):
            torch.set_num_threads(_positive_int(THREADS_ENV, os.environ[THREADS_ENV], 1))
        seed = study_seed()
        if seed is not None:
            seed_all(seed)  # random, numpy and torch, as pre-training seeds them
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attr, value in study_schedule().items():
            setattr(self, attr, value)
        self.print_to_log_file(f"benefit study: seed {seed}, schedule {study_schedule()}")

    #: the only checkpoint the study reads (``nnUNetv2_predict``'s default ``-chk``)
    study_checkpoint = "checkpoint_final.pth"

    def save_checkpoint(self, filename: str) -> None:
        if os.path.basename(filename) == self.study_checkpoint:
            super().save_checkpoint(filename)

    def on_epoch_end(self):
        if self.current_epoch == self.num_epochs - 1:
            super().on_epoch_end()  # the last epoch plots every epoch's values, as nnU-Net's own would
        else:
            with _plots_off(self):
                super().on_epoch_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Skipped: the study trains on fold ``all`` (validation cases = training cases) and scores
        the held-out test set itself; nnU-Net's final validation would only cost time."""
        self.print_to_log_file("benefit study: final validation skipped (fold all; the study evaluates imagesTs)")


@contextmanager
def _plots_off(trainer):
    """Turn the per-epoch progress plots (nnU-Net's ``progress.png``, MOSMOS' ``progress_mosmos.png``)
    into no-ops for one ``on_epoch_end``: an instance attribute shadows the method, deleting it
    brings the method back."""
    targets = [(obj, name) for obj, name in ((trainer.logger, "plot_progress_png"), (trainer, "_plot_mosmos_progress"))
               if hasattr(obj, name)]
    for obj, name in targets:
        setattr(obj, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for obj, name in targets:
            delattr(obj, name)


class nnUNetTrainer_mosmosStudy(StudyBudgetMixin, nnUNetTrainer):
    """Plain nnU-Net with the study's budget and seed (the baseline arm)."""


class nnUNetTrainerMOSMOS_study(StudyBudgetMixin, nnUNetTrainerMOSMOS):
    """MOSMOS with the paper's full branch, pinned here (not inherited) so that a later change of the
    shipped defaults cannot change what a study arm measured: full tag decoder, maps injected into
    every skip at/above the branch, prompt context trained, lambda 0.5. Loads ``$MOSMOS_PRETRAINED``
    when the study sets it."""
    aligning_loss_weight = 0.5
    tag_decoder_kwargs = decoder_preset("full")
    tag_injection_levels = None
    train_prompt_context = True


class nnUNetTrainerMOSMOS_study_scratch(nnUNetTrainerMOSMOS_study):
    use_pretrained = False


class nnUNetTrainerMOSMOS_study_lambda0p1(nnUNetTrainerMOSMOS_study):
    aligning_loss_weight = 0.1


class nnUNetTrainerMOSMOS_study_lambda1p0(nnUNetTrainerMOSMOS_study):
    aligning_loss_weight = 1.0


class nnUNetTrainerMOSMOS_study_noAlign(nnUNetTrainerMOSMOS_study):
    aligning_loss_weight = 0.0


class nnUNetTrainerMOSMOS_study_lean(nnUNetTrainerMOSMOS_study):
    """The lean branch (nnUNetTrainerMOSMOS_lean's three changes); with a checkpoint the decoder takes
    the checkpoint's sizes, so its arm pre-trains with ``--tag-decoder lean``."""
    tag_decoder_kwargs = decoder_preset("lean")
    tag_injection_levels = 2
    train_prompt_context = False


class nnUNetTrainerMOSMOSEncoder_study(StudyBudgetMixin, nnUNetTrainerMOSMOSEncoder):
    """nnU-Net's own network, encoder from ``$MOSMOS_PRETRAINED``, no tag branch."""
