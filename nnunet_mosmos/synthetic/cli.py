"""``mosmos-synthetic``: write the phantom dataset into nnU-Net's raw folder."""
from __future__ import annotations

import argparse
import os
import sys

from .phantoms import DEFAULT_SHAPE, DEFAULT_SPACING
from .writer import write_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mosmos-synthetic",
        description="Generate a synthetic abdominal CT dataset (nnU-Net v2 raw format) with one "
                    "free-text report per case and 2D image-report pairs. Deterministic by seed.")
    p.add_argument("-o", "--output", metavar="RAW_ROOT", default=None,
                   help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("-d", "--dataset-id", type=int, default=901, help="dataset id (default: 901)")
    p.add_argument("--name", default="MOSMOSPhantom", help="dataset name (default: MOSMOSPhantom)")
    p.add_argument("--num-train", type=int, default=8, help="training cases (default: 8)")
    p.add_argument("--num-test", type=int, default=2, help="test cases (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(DEFAULT_SHAPE),
                   help="volume size in voxels (default: %(default)s)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   default=list(DEFAULT_SPACING), help="voxel spacing in mm (default: %(default)s)")
    p.add_argument("--slices-per-case", type=int, default=4,
                   help="axial 2D image-report pairs per case (default: 4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    raw_root = args.output or os.environ.get("nnUNet_raw")
    if not raw_root:
        parser.error("no output folder: pass -o/--output RAW_ROOT or set the nnUNet_raw "
                     "environment variable")
    try:
        folder = write_dataset(raw_root, args.dataset_id, args.name, args.num_train, args.num_test,
                               args.seed, tuple(args.shape), tuple(args.spacing),
                               args.slices_per_case, overwrite=args.overwrite)
    except (ValueError, FileExistsError, OSError) as e:
        print(f"mosmos-synthetic: error: {e}", file=sys.stderr)
        return 1
    n_pairs = len(list((folder / "pairs2d" / "images").glob("*.png")))
    print(f"Wrote {folder}")
    print(f"  {args.num_train} training cases (imagesTr, labelsTr, reportsTr), "
          f"{args.num_test} test cases (imagesTs, labelsTs, reportsTs)")
    print(f"  shape {tuple(args.shape)} (z, y, x), spacing {tuple(args.spacing)} mm, seed {args.seed}")
    print(f"  dataset.json, reports_manifest.csv (+ _test), {n_pairs} axial image-report pairs in "
          "pairs2d/ (manifest.csv: train cases, manifest_test.csv: test cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
