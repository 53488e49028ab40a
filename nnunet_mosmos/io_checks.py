"""Checks on what a command writes and reads, done before any work, so that bad input costs one line.

Why before: ``mosmos-zeroshot`` scores every slice of every case and ``mosmos-attention`` runs a
sliding-window predictor before writing; an ``-o`` that cannot be written (a file where a folder is
wanted, a read-only folder, a path under a file) would otherwise fail after all that work, or leave
half a folder behind. Writability is tested for real (a temp file that is removed again): permission
bits do not tell the whole story (read-only mounts, ACLs, root). Results are written to a temp file
and renamed, so an interrupted write never leaves a truncated file under the final name.

Truncated image files are detected by :mod:`nnunet_mosmos.images` (the one detector); this module
adds the other silent input fault worth a warning: an image with one value everywhere (all black),
which every model scores, and which is almost always an export or windowing mistake.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["OutputError", "check_output_file", "check_output_folder", "constant_image_warning", "write_text_atomic"]


class OutputError(ValueError):
    """An output path cannot be written; the message names it and the fix."""


def _probe(path: Path, flag: str) -> None:
    """OutputError unless a file can be created in the nearest existing folder of ``path`` (itself or an ancestor)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {path}: {existing} is a file, not a folder; pick another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mosmos-write-test.", dir=existing)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write to {existing} ({e.strerror or e}); pick a writable "
                          f"{flag}") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path, flag: str = "-o") -> Path:
    """``path`` as a Path when a file can be written there (folders are created later); else OutputError."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name, e.g. {flag} {path / 'result.json'}")
    _probe(path.parent if path.parent != path else path, flag)
    return path


def check_output_folder(path, flag: str = "-o") -> Path:
    """``path`` as a Path when it is (or can be made) a writable folder; else OutputError. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    _probe(path, flag)
    return path


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to a temp file next to ``path`` and rename it into place (parents are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def constant_image_warning(array: np.ndarray, path) -> str | None:
    """A warning line when every voxel of ``array`` (read from ``path``) has the same value, else None."""
    if array.size == 0:
        return f"WARNING: {path} holds no voxels"
    lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
    if lo != hi:
        return None
    return (f"WARNING: {path} has the value {lo:g} in every voxel (an all-black image: an export or windowing "
            "mistake?); its scores mean nothing")
