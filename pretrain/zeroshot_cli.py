"""``mosmos-zeroshot``: per-organ ROC AUC of a pre-training checkpoint's zero-shot organ recognition.

    mosmos-zeroshot CKPT.pt -d 950                                  # mosmos-synthetic test cases
    mosmos-zeroshot CKPT.pt --images ct.nii.gz --labels seg.nii.gz \\
        --label-names class_map_total_and_total_mr.json --label-map-key total
    mosmos-zeroshot CKPT.pt --images imagesTs/ --labels labelsTs/ --label-names dataset.json

Units are axial slices (2D checkpoint) or z-slabs of patch depth (3D); an organ is present in a unit
with >= --min-voxels voxels of its label. The JSON result goes to stdout (and -o FILE), a table to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    from pretrain.zeroshot import DEFAULT_MIN_VOXELS, DEFAULT_TEMPLATE, METHODS

    p = argparse.ArgumentParser(prog="mosmos-zeroshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="MOSMOS pre-training checkpoint (.pt from mosmos-pretrain)")
    data = p.add_argument_group("data (either -d, or --images + --labels + --label-names)")
    data.add_argument("-d", "--dataset", help="raw nnU-Net / mosmos-synthetic dataset in $nnUNet_raw (id or name)")
    data.add_argument("--split", choices=("Ts", "Tr"), default="Ts",
                      help="with -d: imagesTs/labelsTs (default, held out) or imagesTr/labelsTr")
    data.add_argument("--images", nargs="+", help="image volumes, or one folder (nnU-Net layout CASE_0000.nii.gz)")
    data.add_argument("--labels", nargs="+", help="label maps in the same order, or one folder (CASE.nii.gz)")
    data.add_argument("--label-names", help='JSON: {"1": "spleen", ...}, a dataset.json, or a class map '
                                            "with --label-map-key")
    data.add_argument("--label-map-key", help="key inside --label-names (TotalSegmentator: total or total_mr)")
    data.add_argument("--organs", nargs="+", metavar="NAME", help="evaluate only these label names (default: all)")
    score = p.add_argument_group("scoring")
    score.add_argument("--method", choices=(*METHODS, "both"), default="both", help="scorer (default: both)")
    score.add_argument("--template", default=DEFAULT_TEMPLATE,
                       help="contrastive sentence, with {modality} and {organ} (default: %(default)r)")
    score.add_argument("--modality", help="{modality} in the template (default: dataset.json channel 0 "
                                          "with -d, else CT)")
    score.add_argument("--min-voxels", type=int, default=DEFAULT_MIN_VOXELS,
                       help="voxels of a label that make the organ present in a unit (default: %(default)s)")
    score.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                       help="2D only: clip intensities to [LO, HI] before z-scoring (the synthetic pairs were "
                            "CT-windowed to -175 250)")
    score.add_argument("--zscore", choices=("volume", "slice"), default="volume",
                       help="2D only: z-score over the whole volume (default, as read_image) or per slice "
                            "(as 2D PNG pairs)")
    p.add_argument("--text-encoder", help="text encoder (default: the one the checkpoint was trained with)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="units per forward pass (default: 16)")
    p.add_argument("-o", "--output", help="also write the JSON result to this file")
    return p


def _inputs(args, parser):
    from pretrain.label_names import load_label_names
    from pretrain.zeroshot import dataset_cases, pair_cases

    if args.dataset:
        if args.images or args.labels:
            parser.error("give either -d DATASET or --images/--labels, not both")
        cases, names, modality = dataset_cases(args.dataset, args.split)
        if args.label_names:
            names = load_label_names(args.label_names, args.label_map_key)
        return cases, names, args.modality or modality, args.label_names or f"dataset {args.dataset} dataset.json"
    if not (args.images and args.labels and args.label_names):
        parser.error("need -d DATASET, or --images, --labels and --label-names")
    names = load_label_names(args.label_names, args.label_map_key)
    source = args.label_names + (f" [{args.label_map_key}]" if args.label_map_key else "")
    return pair_cases(args.images, args.labels), names, args.modality or "CT", source


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from nnunet_mosmos.checkpoint import CheckpointError
    from nnunet_mosmos.io_checks import OutputError, check_output_file, write_text_atomic
    from nnunet_mosmos.text import TextEncoderError
    from pretrain.zeroshot import METHODS, ZeroShotConfig, ZeroShotError, ZeroShotModel, evaluate, select_organs, table

    def log(msg):
        print(msg, file=sys.stderr)

    try:
        if args.output:
            check_output_file(args.output)  # before any work: a bad -o must not cost a whole evaluation
        cases, names, modality, source = _inputs(args, parser)
        organs = select_organs(names, args.organs)
        model = ZeroShotModel.from_file(args.checkpoint, args.text_encoder, args.device)
        cfg = ZeroShotConfig(methods=METHODS if args.method == "both" else (args.method,), template=args.template,
                             modality=modality, min_voxels=args.min_voxels, batch_size=args.batch_size,
                             window=tuple(args.window) if args.window else None, zscore=args.zscore)
        result = evaluate(model, cases, organs, cfg, names, source, log)
        text = json.dumps(result, indent=2)
        if args.output:
            write_text_atomic(args.output, text + "\n")
    except (ZeroShotError, CheckpointError, TextEncoderError, OutputError, ValueError, OSError) as e:
        print(f"mosmos-zeroshot: error: {e}", file=sys.stderr)
        return 1
    log(table(result))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
