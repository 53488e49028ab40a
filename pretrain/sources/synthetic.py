"""The 2D pairs of a ``mosmos-synthetic`` dataset: its ``pairs2d/manifest.csv`` in ``$nnUNet_raw``."""
from __future__ import annotations

from pathlib import Path

from pretrain.pairs import PairDataError


def synthetic_manifest(dataset: str | int | None, manifest: str | None) -> Path:
    """``pairs2d/manifest.csv`` of a ``mosmos-synthetic`` dataset in $nnUNet_raw (or ``--manifest``)."""
    if manifest:
        return Path(manifest)
    if dataset is None:
        raise PairDataError("--data synthetic needs --manifest PATH or -d DATASET (a mosmos-synthetic dataset "
                            "in $nnUNet_raw; create one with `mosmos-synthetic -d 901`)")
    from pretrain.plans import find_dataset_folder

    folder = find_dataset_folder(dataset, ("nnUNet_raw",))
    path = folder / "pairs2d" / "manifest.csv"
    if not path.is_file():
        raise PairDataError(f"{path} does not exist: {folder.name} is not a mosmos-synthetic dataset "
                            "(regenerate it with `mosmos-synthetic`) or pass --manifest")
    return path


__all__ = ["synthetic_manifest"]
