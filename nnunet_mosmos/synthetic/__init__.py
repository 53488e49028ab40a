"""Deterministic synthetic abdominal CT phantoms with matching free-text reports.

Stands apart from the rest of the package (numpy + SimpleITK + Pillow, never torch) so tests, the
demo and benchmarks can make an nnU-Net dataset offline in seconds. See ``docs/synthetic.md``.
"""
from .phantoms import DEFAULT_SHAPE, DEFAULT_SPACING, LABELS, ORGANS, Findings, Phantom, make_phantom
from .reports import case_report, slice_report, visible_organs
from .writer import CT_WINDOW, write_dataset

__all__ = [
    "CT_WINDOW", "DEFAULT_SHAPE", "DEFAULT_SPACING", "LABELS", "ORGANS", "Findings", "Phantom",
    "case_report", "make_phantom", "slice_report", "visible_organs", "write_dataset",
]
