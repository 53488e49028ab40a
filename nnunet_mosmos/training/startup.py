"""A trainer that cannot start says so in one line, exits non-zero and leaves no empty model folder.

Why a ``SystemExit``: ``nnUNetv2_train`` is nnU-Net's entry point, not ours, and it lets every
exception from the trainer's ``__init__`` escape as a 20-40 line traceback whose last line (often
the third of a chain) is the only useful one. Python prints a ``SystemExit`` carrying a string as
just that string and exits with status 1, so :class:`MOSMOSStartError` reaches the user of the
unmodified console script as one line, while Python code (and tests) can still catch it
(``except MOSMOSStartError``). Set ``MOSMOS_TRACEBACK=1`` to get the original exception and its
traceback instead (for a bug report).

nnU-Net's ``__init__`` creates ``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<config>/fold_X``
and a training log holding only its citation banner before our checks run; a failed start removes
that log and the folders it created, when they are empty. Folders and files that were there before
(an earlier run of the same model) are never touched.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

ENV_TRACEBACK = "MOSMOS_TRACEBACK"
#: what bad input raises (our checks and nnU-Net's own, e.g. an unknown configuration); anything else
#: is a bug and keeps its traceback
START_ERRORS = (ValueError, RuntimeError, OSError)


class MOSMOSStartError(SystemExit):
    """A MOSMOS trainer refused to start; ``str(e)`` is the one-line message (exit status 1)."""

    def __init__(self, message: str):
        message = re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip()  # one line; spaces inside paths kept
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_pretrained_fits(trainer, fix: str) -> None:
    """Refuse ``trainer.pretrained`` (a loaded MOSMOS checkpoint) unless its encoder loads whole into the
    network this configuration builds, naming ``fix`` (``pretrained.refit_hint``): in ``__init__``, before
    nnU-Net builds the network, the data loaders or the optimizer; the verdict of ``mosmos-inspect -d -c``."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from nnunet_mosmos.pretrained import fit_configuration, require_fit

    channels = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager,
                                            trainer.dataset_json)
    report = fit_configuration(trainer.pretrained, trainer.configuration_manager, channels)[2]
    require_fit(report, trainer.pretrained_path, fix)


def _results_folders(trainer_name: str, plans: dict, configuration: str, fold) -> list[Path]:
    """The folders nnU-Net's ``__init__`` creates (``nnUNetTrainer.output_folder`` and its parents up
    to ``$nnUNet_results``), outermost first; [] when ``nnUNet_results`` is not set."""
    root = os.environ.get("nnUNet_results")
    if not root or not isinstance(plans, dict):
        return []
    dataset = Path(root) / str(plans.get("dataset_name"))
    model = dataset / f"{trainer_name}__{plans.get('plans_name')}__{configuration}"
    return [dataset, model, model / f"fold_{fold}"]


def _clean_up(trainer, folders: list[Path], existed: dict, fold_files: set) -> None:
    """Remove what this start created: the training log nnU-Net opened, then the empty new folders."""
    if not folders or Path(getattr(trainer, "output_folder", "") or "") != folders[-1]:
        return  # nnU-Net named its folder differently than expected: touch nothing
    log = getattr(trainer, "log_file", None)
    if log and Path(log).name not in fold_files and Path(log).parent == folders[-1]:
        Path(log).unlink(missing_ok=True)
    for folder in reversed(folders):
        if existed[folder] or not folder.is_dir():
            continue
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            return


def guarded_start(init):
    """Decorate a trainer's ``__init__``: bad input becomes :class:`MOSMOSStartError`, and a failed
    start removes the folders it created. The signature is kept (nnU-Net inspects it)."""
    @functools.wraps(init)
    def wrapper(self, plans, configuration, fold, *args, **kwargs):
        folders = _results_folders(type(self).__name__, plans, configuration, fold)
        existed = {f: f.exists() for f in folders}
        fold_files = set(os.listdir(folders[-1])) if folders and folders[-1].is_dir() else set()
        try:
            return init(self, plans, configuration, fold, *args, **kwargs)
        except MOSMOSStartError:
            _clean_up(self, folders, existed, fold_files)
            raise
        except START_ERRORS as e:
            _clean_up(self, folders, existed, fold_files)
            if os.environ.get(ENV_TRACEBACK, "") not in ("", "0"):
                raise
            raise MOSMOSStartError(f"{type(self).__name__} cannot start: {e}") from e
        except BaseException:
            _clean_up(self, folders, existed, fold_files)
            raise
    return wrapper


__all__ = ["ENV_TRACEBACK", "MOSMOSStartError", "check_pretrained_fits", "guarded_start"]
