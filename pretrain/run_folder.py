"""Where a run writes: the checkpoint file and its run folder ``<stem>_run/`` (log, progress.png, last.pt)."""
from __future__ import annotations

from pathlib import Path

from pretrain.config import PretrainConfig, PretrainError
from pretrain.plans import default_output


def resolve_output(cfg: PretrainConfig, spec) -> Path:
    if cfg.output:
        return Path(cfg.output)
    if spec.target:
        return default_output(spec.target)
    raise PretrainError("no output file: pass -o/--output FILE.pt, or -d/-c to write to the dataset's "
                        "$nnUNet_preprocessed/DatasetXXX_Name/mosmos_pretrained/ folder")


def run_folder(output: Path) -> Path:
    return output.parent / f"{output.stem}_run"


__all__ = ["resolve_output", "run_folder"]
