"""Reading images without silent damage: a NIfTI whose voxel data is shorter than its header says.

Why this exists: ITK's NIfTI reader (SimpleITK 2.5 measured) fills the missing part of a truncated
``.nii`` / ``.nii.gz`` -- a download or copy cut short -- with zeros and returns normally, so a
third of a CT would silently become air. MetaImage and NRRD readers raise instead. So every reader
of this project that opens a NIfTI calls :func:`check_complete` first (or :func:`read_image`).

The check costs almost nothing: the header gives the voxel data's size (``vox_offset`` + voxels x
``bitpix``); an uncompressed file is compared by its size, a gzip file by the uncompressed size its
trailer records (ISIZE, the last 4 bytes). Only when that disagrees (a cut file, or a rare
multi-member gzip) is the stream decompressed to count its bytes. Standalone on purpose: standard
library only (SimpleITK just for :func:`read_image`), usable by pre-training, zero-shot and the
attention export alike.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

__all__ = ["TruncatedImageError", "check_complete", "nifti_expected_size", "read_image"]


class TruncatedImageError(RuntimeError):
    """An image file holds fewer bytes than its header describes. A RuntimeError, like SimpleITK's own
    read errors, so code that handles unreadable files handles this one too."""


def nifti_expected_size(header: bytes) -> tuple[int, tuple[int, ...], int] | None:
    """(bytes of a complete single-file NIfTI, voxel dims, bits per voxel) from its first 540 bytes;
    None when ``header`` is not a single-file NIfTI-1/-2 header (e.g. an .hdr/.img pair)."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348 and header[344:347] == b"n+1":
            dim = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540 and header[4:7] == b"n+2":
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dim = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dim[0] <= 7 or bitpix <= 0:
        return None
    dims = tuple(int(d) for d in dim[1:dim[0] + 1])
    voxels = 1
    for d in dims:
        voxels *= max(d, 1)
    return offset + voxels * bitpix // 8, dims, int(bitpix)


def _gzip_length(path: Path) -> tuple[int, str | None]:
    """Decompressed byte count of a gzip file, and the decoder's complaint if the stream ends early."""
    n = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                n += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        return n, str(e)
    return n, None


def check_complete(path) -> None:
    """Raise TruncatedImageError when a NIfTI file (``.nii`` / ``.nii.gz``) is shorter than its header says.

    Other formats, and files whose header cannot be read at all, are left to the image reader (which
    raises on them itself).
    """
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")) or not path.is_file():
        return
    compressed = name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            header = f.read(540)
    except (EOFError, OSError, zlib.error):
        return  # not even a header: the reader's own error says more
    expected = nifti_expected_size(header)
    if expected is None:
        return
    size, dims, bitpix = expected
    problem = None
    if not compressed:
        have = os.path.getsize(path)
    else:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            recorded = struct.unpack("<I", f.read(4))[0]
        if recorded == size % 2 ** 32:
            return
        have, problem = _gzip_length(path)
    if have >= size:
        return
    shape = "x".join(str(d) for d in dims)
    raise TruncatedImageError(
        f"image {path} is truncated: its header describes {shape} voxels of {bitpix} bits ({size} bytes with the "
        f"header) but the file holds {have}{' (' + problem + ')' if problem else ''}; a download or copy was cut "
        "short (SimpleITK would fill the rest with zeros). Copy or export it again.")


def read_image(path):
    """``SimpleITK.ReadImage`` after :func:`check_complete`."""
    import SimpleITK as sitk

    check_complete(path)
    return sitk.ReadImage(str(path))
