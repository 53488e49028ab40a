"""Synthetic abdominal CT phantoms: one labelled 3D volume plus the findings its report must state.

Why a phantom at all: the project's tests, demo and benchmarks need a dataset that (a) nnU-Net can
plan, preprocess and learn within a few CPU iterations, (b) comes with report text that is *true*
about the image (absent organs are really absent, "enlarged" organs really are larger), and (c) is
reproducible bit for bit from a seed. Real data can't give all three offline.

Geometry is laid out in *normalised* coordinates: every axis of the volume runs from -1 to 1, so
the anatomy fills the field of view whatever ``shape``/``spacing`` are chosen. Patient orientation
follows the (identity-direction) LPS convention SimpleITK writes: +x is the patient's left, +y is
posterior, +z is superior. Array axes are (z, y, x), so a PNG of an axial slice shows anterior at
the top and the patient's right on the image's left (radiological display) without flipping.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: dataset.json label order. Changing it changes every generated dataset.
LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "stomach": 5,
    "aorta": 6,
    "gallbladder": 7,
}
ORGANS: tuple[str, ...] = tuple(n for n in LABELS if n != "background")

DEFAULT_SHAPE: tuple[int, int, int] = (32, 64, 64)          # (z, y, x) voxels
DEFAULT_SPACING: tuple[float, float, float] = (2.5, 1.5, 1.5)  # (z, y, x) mm
MIN_SHAPE: tuple[int, int, int] = (8, 16, 16)

#: Organs that can be surgically absent, with probability and the removal word the report uses.
#: Liver and aorta are never removed; at most one kidney is.
REMOVABLE = {
    "spleen": 0.15,
    "gallbladder": 0.15,
    "kidney": 0.15,  # split evenly between the right and the left side
}
#: Organs that can be enlarged (hepatomegaly / splenomegaly), with probability.
ENLARGEABLE = {"liver": 0.15, "spleen": 0.15}
NORMAL_SCALE = (0.9, 1.05)
ENLARGED_SCALE = (1.3, 1.5)
#: Nominal craniocaudal / long-axis length (cm) of a scale-1.0 organ; reports quote length × scale.
#: The phantom itself is a shrunken body, so these are "anatomical" sizes, not voxel extents.
NOMINAL_LENGTH_CM = {"liver": 15.0, "spleen": 10.0}


@dataclass(frozen=True)
class _OrganLayout:
    centre: tuple[float, float, float]   # (z, y, x), normalised
    radii: tuple[float, float, float]    # (z, y, x), normalised, at scale 1.0
    hu: float                            # mean attenuation, portal-venous phase
    hu_sd: float                         # per-case spread of that mean


# Anatomically plausible defaults, tuned so each organ is several voxels thick at (16, 32, 32).
_LAYOUT: dict[str, _OrganLayout] = {
    "liver": _OrganLayout((0.35, -0.02, -0.36), (0.55, 0.45, 0.45), 105.0, 10.0),
    "stomach": _OrganLayout((0.30, -0.25, 0.35), (0.30, 0.20, 0.22), 15.0, 8.0),
    "spleen": _OrganLayout((0.40, 0.30, 0.60), (0.30, 0.20, 0.14), 115.0, 10.0),
    "gallbladder": _OrganLayout((-0.05, -0.22, -0.22), (0.22, 0.11, 0.10), 8.0, 5.0),
    "kidney_right": _OrganLayout((-0.30, 0.35, -0.40), (0.34, 0.16, 0.13), 170.0, 15.0),
    "kidney_left": _OrganLayout((-0.15, 0.35, 0.40), (0.34, 0.16, 0.13), 170.0, 15.0),
}
# Later organs overwrite earlier ones where they touch; the aorta is painted last.
_PAINT_ORDER = ("liver", "stomach", "spleen", "gallbladder", "kidney_right", "kidney_left")
_AORTA = dict(y=0.30, x=0.07, radius=0.085, hu=190.0, hu_sd=20.0)
_MIN_ORGAN_VOXELS = 8


@dataclass(frozen=True)
class Findings:
    """What is true about one phantom; the report generator may state nothing else."""

    absent: frozenset[str] = frozenset()
    enlarged: frozenset[str] = frozenset()
    size_cm: dict[str, float] = field(default_factory=dict)

    @property
    def present(self) -> tuple[str, ...]:
        return tuple(o for o in ORGANS if o not in self.absent)

    def to_json(self) -> dict:
        return {
            "absent": sorted(self.absent, key=ORGANS.index),
            "enlarged": sorted(self.enlarged, key=ORGANS.index),
            "size_cm": dict(self.size_cm),
        }


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray       # (z, y, x) int16 HU
    label: np.ndarray       # (z, y, x) uint8, values from LABELS
    spacing: tuple[float, float, float]  # (z, y, x) mm
    findings: Findings

    @property
    def origin(self) -> tuple[float, float, float]:
        """(z, y, x) mm of voxel 0, chosen so the volume is centred on the scanner origin."""
        return tuple(-(n - 1) / 2.0 * s for n, s in zip(self.image.shape, self.spacing))


def case_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (image, text) generators for case ``index``.

    Keyed on (seed, index) so a case is identical however many cases are generated, and the text
    stream is separate so rephrasing a template never moves an organ.
    """
    image_seq, text_seq = np.random.SeedSequence([int(seed), int(index)]).spawn(2)
    return np.random.default_rng(image_seq), np.random.default_rng(text_seq)


def sample_findings(rng: np.random.Generator) -> tuple[Findings, dict[str, float]]:
    """Draw absences, enlargements and per-organ scale factors for one case."""
    absent = set()
    for organ in ("spleen", "gallbladder"):
        if rng.random() < REMOVABLE[organ]:
            absent.add(organ)
    if rng.random() < REMOVABLE["kidney"]:
        absent.add("kidney_right" if rng.random() < 0.5 else "kidney_left")

    enlarged, scale, size_cm = set(), {}, {}
    for organ in _PAINT_ORDER:
        big = organ in ENLARGEABLE and organ not in absent and rng.random() < ENLARGEABLE[organ]
        if big:
            enlarged.add(organ)
        scale[organ] = float(rng.uniform(*(ENLARGED_SCALE if big else NORMAL_SCALE)))
        if organ in NOMINAL_LENGTH_CM and organ not in absent:
            size_cm[organ] = round(NOMINAL_LENGTH_CM[organ] * scale[organ], 1)
    return Findings(frozenset(absent), frozenset(enlarged), size_cm), scale


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix acting on (z, y, x) vectors; angles = (about z, about y, about x)."""
    a, b, c = angles
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(rng: np.random.Generator, coords, n_waves: int = 4,
                 freq: tuple[float, float] = (0.5, 1.5)) -> np.ndarray:
    """Low-frequency random field (sum of random plane waves), roughly unit variance.

    Plane waves instead of filtered white noise keep the generator numpy-only and make the
    smoothness independent of the voxel grid, so a case looks alike at every resolution.
    """
    out = 0.0
    total = 0.0
    for _ in range(n_waves):
        k = rng.normal(size=3)
        k *= rng.uniform(*freq) * np.pi / np.linalg.norm(k)
        amp = rng.uniform(0.5, 1.0)
        out = out + amp * np.sin(k[0] * coords[0] + k[1] * coords[1] + k[2] * coords[2]
                                 + rng.uniform(0, 2 * np.pi))
        total += amp * amp / 2.0
    return out / np.sqrt(total)


def _grid(shape) -> np.ndarray:
    """Voxel-centre coordinates in (-1, 1) along each axis, stacked as (3, z, y, x)."""
    axes = [((np.arange(n) + 0.5) / n * 2.0 - 1.0) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _ellipsoid_level(rng, grid, layout: _OrganLayout, scale: float) -> np.ndarray:
    """Level set of a jittered, rotated, noise-deformed ellipsoid: inside where < 1."""
    centre = np.asarray(layout.centre) + rng.normal(0.0, 0.03, 3)
    radii = np.asarray(layout.radii) * scale * rng.uniform(0.9, 1.1, 3)
    angles = np.deg2rad([rng.uniform(-20, 20), rng.uniform(-8, 8), rng.uniform(-8, 8)])
    local = np.einsum("ij,j...->i...", _rotation(angles).T, grid - centre[:, None, None, None])
    p = local / radii[:, None, None, None]
    radius = np.sqrt((p ** 2).sum(0))
    return radius - 0.12 * smooth_field(rng, p)


def _body(rng, grid, spacing_mm_z: np.ndarray):
    """Body outline, wall, cavity and spine; returns (hu, cavity mask)."""
    z, y, x = grid
    y0 = 0.05 + rng.normal(0, 0.01)
    ry, rx = rng.uniform(0.76, 0.84), rng.uniform(0.88, 0.95)
    level = np.sqrt(((y - y0) / ry) ** 2 + (x / rx) ** 2) + 0.02 * smooth_field(rng, grid)
    fat_t = rng.uniform(0.06, 0.14)
    wall = 1.0 - fat_t
    cavity_edge = wall - 0.05

    hu = np.full(z.shape, -1000.0)
    hu[level < 1.0] = rng.uniform(-110, -90)           # subcutaneous fat
    hu[level < wall] = rng.uniform(40, 55)             # abdominal wall muscle
    inside = level < cavity_edge
    visceral = rng.uniform(-100, -80) + np.zeros(z.shape)
    bowel = smooth_field(rng, grid, n_waves=6, freq=(3.0, 6.0)) > 0.7  # unlabelled soft tissue
    visceral[bowel] = rng.uniform(10, 40)
    hu[inside] = visceral[inside]

    paraspinal = np.zeros(z.shape, bool)
    for side in (-1, 1):
        paraspinal |= ((y - 0.58) / 0.14) ** 2 + ((x - side * 0.22) / 0.12) ** 2 < 1.0
    spine_y = 0.56 + rng.normal(0, 0.01)
    vertebra = ((y - spine_y) / 0.13) ** 2 + (x / 0.13) ** 2
    spine = vertebra < 1.0
    hu[paraspinal & (level < 1.0)] = rng.uniform(45, 60)
    disc = (spacing_mm_z + rng.uniform(0, 35)) % 35.0 < 7.0   # intervertebral discs every 35 mm
    hu[spine] = np.where(vertebra[spine] > 0.6, 700.0, 250.0)
    hu[spine & disc] = 80.0
    cavity = inside & ~paraspinal & ~spine
    return hu, cavity


def make_phantom(seed: int = 0, index: int = 0, shape=DEFAULT_SHAPE,
                 spacing=DEFAULT_SPACING) -> tuple[Phantom, np.random.Generator]:
    """Build case ``index`` of the series defined by ``seed``.

    Returns the phantom and the case's (still unused) text generator, so the writer phrases the
    report from the same (seed, index) key.
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or any(s < m for s, m in zip(shape, MIN_SHAPE)):
        raise ValueError(f"shape must be 3 integers (z, y, x) of at least {MIN_SHAPE}, got {shape}")
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (z, y, x) in mm, got {spacing}")

    rng, text_rng = case_rngs(seed, index)
    findings, scale = sample_findings(rng)
    grid = _grid(shape)
    z_mm = (np.arange(shape[0]) * spacing[0])[:, None, None]
    hu, cavity = _body(rng, grid, z_mm)
    label = np.zeros(shape, np.uint8)
    levels = {}

    for organ in _PAINT_ORDER:
        layout = _LAYOUT[organ]
        level = _ellipsoid_level(rng, grid, layout, scale[organ])  # drawn even if absent: keeps
        mean = rng.normal(layout.hu, layout.hu_sd)                  # the random stream aligned
        if organ in findings.absent:
            continue
        levels[organ] = level
        mask = (level < 1.0) & cavity
        label[mask] = LABELS[organ]
        hu[mask] = mean
        if organ.startswith("kidney"):        # darker medulla / sinus inside a bright cortex
            hu[mask & (level < 0.55)] = mean - 70.0
        elif organ == "stomach":               # enhancing wall, fluid lumen, gas rising anteriorly
            hu[mask & (level > 0.8)] = 60.0
            if rng.random() < 0.5:
                ys = grid[1][mask]
                cut = ys.min() + 0.25 * (ys.max() - ys.min())
                hu[mask & (grid[1] < cut)] = -950.0

    z, y, x = grid
    wiggle = rng.uniform(0, 2 * np.pi, 2)
    cx = _AORTA["x"] + 0.03 * np.sin(np.pi * z + wiggle[0])
    cy = _AORTA["y"] + 0.02 * np.sin(np.pi * z + wiggle[1])
    radius = _AORTA["radius"] * rng.uniform(0.9, 1.1)
    levels["aorta"] = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / radius
    aorta = levels["aorta"] < 1.0
    label[aorta] = LABELS["aorta"]
    hu[aorta] = rng.normal(_AORTA["hu"], _AORTA["hu_sd"])

    # Guarantee every present organ is visible, even on tiny grids: grow it from its core.
    for organ, level in levels.items():
        if (label == LABELS[organ]).sum() < _MIN_ORGAN_VOXELS:
            core = np.argsort(level, axis=None, kind="stable")[:_MIN_ORGAN_VOXELS]
            label.flat[core] = LABELS[organ]
            hu.flat[core] = _LAYOUT[organ].hu if organ in _LAYOUT else _AORTA["hu"]

    texture = 6.0 * smooth_field(rng, grid, n_waves=8, freq=(4.0, 8.0))
    hu = hu + np.where(label > 0, texture, 0.0) + rng.normal(0.0, rng.uniform(8, 15), shape)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Phantom(image, label, spacing, findings), text_rng
