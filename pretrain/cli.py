"""``mosmos-pretrain``: report-supervised pre-training of an nnU-Net encoder (MOSMOS stage 1).

Single process: ``mosmos-pretrain ...``; several GPUs/nodes: ``torchrun --nproc_per_node N -m pretrain.cli ...``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

EXAMPLES = """examples:
  # ROCO (v1 or v2 layout, detected): 2D figures, encoder = 2D twin of a dataset's 3d_fullres configuration
  mosmos-pretrain --data roco --roco-root /data/roco-dataset/data -d 3 -c 3d_fullres
  # your own reports: CSV 'image,text' or JSONL; PNG/JPG or NIfTI/MHA/NRRD volumes (random axial slices)
  mosmos-pretrain --data manifest --manifest reports.csv -d 3 -c 2d --epochs 20
  # the synthetic phantoms (mosmos-synthetic -d 901), default topology, explicit output
  mosmos-pretrain --data synthetic -d 901 --image-size 64 --max-steps 200 -o phantom.pt
  # native 3D: volumes (NIfTI/MHA/NRRD or DICOM folders) + reports (+ optional masks) -> the 3d_fullres encoder
  mosmos-pretrain --data manifest --manifest reports.csv -d 3 -c 3d_fullres
  # CT-RATE (dataset/ + radiology_text_reports/), organ-grounded objective with TotalSegmentator masks
  mosmos-pretrain --data ct-rate --ct-rate-root /data/CT-RATE -d 3 -c 3d_fullres
  mosmos-pretrain --data manifest --manifest ct_with_masks.csv -d 3 -c 3d_fullres --objective organ-grounded \
      --label-names class_map.json --label-map-key total
  # images without reports: two views + Barlow Twins, text generated from the masks (or your generator)
  mosmos-pretrain --data manifest --manifest unreported.csv -d 3 -c 3d_fullres --objective negative-free
  # 8 GPUs
  torchrun --nproc_per_node 8 -m pretrain.cli --data roco --roco-root ... -d 3 -c 3d_fullres

With -d/-c and no -o the checkpoint goes to
  $nnUNet_preprocessed/DatasetXXX_Name/mosmos_pretrained/<plans>__<configuration>.pt
(where nnUNetTrainerMOSMOS looks for it); logs, progress.png and last.pt go to <output stem>_run/ next
to it. Running again with the same -o: --resume continues, --overwrite starts over (otherwise refused).
What is checked before a run starts, and what is skipped and counted: docs/pretraining.md.
"""


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mosmos-pretrain", description=__doc__.splitlines()[0].replace("``", ""),
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", choices=("roco", "manifest", "synthetic", "ct-rate"), required=True,
                   help="pair source: ROCO v1/v2 folder, your own manifest, a mosmos-synthetic dataset, or CT-RATE")
    d.add_argument("--ct-rate-root", help="CT-RATE folder (holds dataset/{train,valid}/ and "
                   "dataset/radiology_text_reports/); --split train or valid")
    d.add_argument("--roco-root", help="ROCO root: holds <split>/radiology/captions.txt (v1, GitHub "
                   "razorx89/roco-dataset with images fetched to <split>/radiology/images/<ID>.jpg) or "
                   "<split>_captions.csv + <split>/<ID>.jpg (v2, Zenodo)")
    d.add_argument("--split", default="train", help="ROCO split: train, validation/valid or test (default: train)")
    d.add_argument("--subset", default="radiology", choices=("radiology", "non-radiology", "all"),
                   help="ROCO v1 subset (default: radiology)")
    d.add_argument("--manifest", help="CSV with header 'image,text[,mask]' or JSONL {\"image\", \"text\", \"mask\"}; "
                   "paths relative to the file; 2D PNG/JPG, 3D NIfTI/MHA/NRRD or a DICOM folder (3D: patches with "
                   "--dim 3, else a random axial slice). With --data synthetic: overrides <dataset>/pairs2d/manifest.csv")
    d.add_argument("--vocabulary", help="tag vocabulary JSON (default: the shipped 20 organ tags, docs/tags.md)")
    d.add_argument("--keep-untagged", action="store_true",
                   help="keep captions that name no organ tag (contrastive loss only); default: skip and count")
    d.add_argument("--val-fraction", type=float, default=0.05,
                   help="held-out fraction for tag mAP / retrieval (default: 0.05)")
    m = p.add_argument_group("model")
    m.add_argument("-d", "--dataset", help="nnU-Net dataset (id or DatasetXXX_Name): with -c, build the encoder "
                   "from its plans; with --data synthetic, also where pairs2d/ is found ($nnUNet_raw)")
    m.add_argument("-c", "--configuration", help="nnU-Net configuration (2d, 3d_fullres, ...): the encoder, image "
                   "or patch size, spacing and normalisation come from its plans. A 3D one pre-trains natively in 3D "
                   "when every image is a volume (--dim auto), else as its 2D twin, exported inflated. Without -c: "
                   "the default topology")
    m.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    m.add_argument("--dim", choices=("auto", "2", "3"), default="auto",
                   help="2: 2D encoder (the 2D twin of a 3D -c), 3: the 3D encoder on 3D patches at the configuration's "
                   "spacing and patch size; auto (default): 3 when every image is a volume and -c is 3D (or "
                   "--image-size has 3 values, or --data ct-rate)")
    m.add_argument("--text-encoder", help="Hugging Face model id or local folder (default: $MOSMOS_TEXT_ENCODER, "
                   "else all-MiniLM-L6-v2 from nnunet-mosmos[text]); kept frozen")
    m.add_argument("--image-size", type=_positive(int), nargs="+", metavar="PX",
                   help="training image size, one value (square) or H W; in 3D the patch, one value or Z Y X "
                   "(default: the configuration's patch size with -c, else 256 / 64^3)")
    m.add_argument("--tag-decoder", choices=("full", "lean"), default=None,
                   help="tag decoder sizes (nnunet_mosmos/tag_decoder.py DECODER_PRESETS): full = 2 layers, d_model 256; "
                   "lean = 1 layer, d_model 128 (fine-tuning takes the checkpoint's sizes; default: lean, the "
                   "CHAOS study's choice, tag_decoder.DEFAULT_DECODER_PRESET)")
    o = p.add_argument_group("objectives (docs/pretraining.md)")
    o.add_argument("--objective", action="append", choices=("mosmos", "organ-grounded", "negative-free"),
                   help="add an objective to MOSMOS' contrastive + tag losses (repeatable): organ-grounded (CT-GLIP: "
                   "organ-level contrast inside mask regions, needs a 'mask' column) or negative-free (GTGM: two views + "
                   "Barlow Twins; rows without text get generated text)")
    o.add_argument("--organ-weight", type=float, default=1.0, help="weight of the organ-grounded loss (default: 1)")
    o.add_argument("--negative-free-weight", type=float, default=0.01,
                   help="weight of the Barlow-Twins loss (default: 0.01, GTGM's)")
    o.add_argument("--label-names", help="names of the masks' label values: nnU-Net dataset.json, a {value: name} "
                   "JSON or TotalSegmentator's class map (with --label-map-key); default: -d's dataset.json")
    o.add_argument("--label-map-key", help="which map of a --label-names file holding several (e.g. total, total_mr)")
    o.add_argument("--abnormality-dictionary", help="JSON of normal/abnormal phrases per organ (default: the shipped "
                   "nnunet_mosmos/data/abnormality_dictionary.json; copy and edit it)")
    o.add_argument("--negatives-per-organ", type=int, default=2,
                   help="dictionary negatives per organ-level pair (default: 2; 0 disables)")
    o.add_argument("--text-generator", metavar="MODULE:FUNCTION",
                   help="text for images without a report (negative-free): a callable taking the context dict "
                   "(docs/report_text.md); default: a template from the mask's organs and sizes")
    t = p.add_argument_group("optimisation")
    t.add_argument("--batch-size", type=_positive(int), default=32, help="pairs per process and step (default: 32)")
    t.add_argument("--epochs", type=_positive(int), default=10, help="epochs, if --max-steps is not given (default: 10)")
    t.add_argument("--max-steps", type=_positive(int), help="total optimizer steps (overrides --epochs)")
    t.add_argument("--lr", type=_positive(float), default=3e-4, help="peak AdamW learning rate (default: 3e-4)")
    t.add_argument("--tag-decoder-lr", type=_positive(float), metavar="LR",
                   help="peak learning rate of the tag decoder alone (default: --lr); --tag-weight cannot make "
                   "it learn faster (AdamW), this can (docs/pretraining.md)")
    t.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    t.add_argument("--warmup-steps", type=int, help="linear warm-up steps before cosine decay "
                   "(default: 5%% of the steps, at most 500)")
    t.add_argument("--contrastive-weight", type=float, default=1.0, help="weight of the InfoNCE loss (default: 1)")
    t.add_argument("--tag-weight", type=float, default=1.0, help="weight of the tag ASL loss, averaged over "
                   "images and tags (default: 1; docs/pretraining.md explains the choice)")
    t.add_argument("--no-report-cache", action="store_true",
                   help="encode every batch's reports again instead of caching the frozen text encoder's features "
                   "per caption (same losses; the cache costs dim floats per distinct caption)")
    t.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="autocast on CUDA (auto: bf16 where supported, else fp16); never on CPU")
    r = p.add_argument_group("run")
    r.add_argument("-o", "--output", help="checkpoint file (.pt); the run folder <stem>_run/ (log, progress.png, "
                   "last.pt) is created next to it. Default with -d/-c: "
                   "$nnUNet_preprocessed/DatasetXXX_Name/mosmos_pretrained/<plans>__<configuration>.pt")
    r.add_argument("--resume", nargs="?", const="auto", metavar="LAST_PT",
                   help="continue exactly from <run>/last.pt (or the given file): same weights, optimizer, "
                   "schedule, RNG and data order")
    r.add_argument("--overwrite", action="store_true",
                   help="start over although an earlier run wrote this -o (its last.pt, log and plot are removed); "
                   "without it (or --resume) such a run is refused")
    r.add_argument("--save-every", type=_positive(int), default=500, help="write last.pt every N steps (default: 500)")
    r.add_argument("--eval-every", type=_positive(int), help="held-out evaluation every N steps (default: --save-every)")
    r.add_argument("--log-every", type=_positive(int), default=10, help="log/plot every N steps (default: 10)")
    r.add_argument("--stop-after", type=_positive(int), metavar="N",
                   help="stop after N steps of this invocation (saving last.pt, like Ctrl-C) for time-sliced "
                   "jobs; continue later with --resume")
    r.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data loader worker processes per rank (default: min(4, CPUs))")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: the local rank's GPU)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    r.add_argument("--no-progress-bar", action="store_true", help="no tqdm bar (log lines only)")
    return p


def config_from_args(args, argv):
    from nnunet_mosmos.tag_decoder import DEFAULT_DECODER_PRESET, decoder_preset
    from pretrain.config import PretrainConfig

    return PretrainConfig(
        data=args.data, roco_root=args.roco_root, split=args.split, subset=args.subset, manifest=args.manifest,
        text_encoder=args.text_encoder, dataset=args.dataset, configuration=args.configuration, plans=args.plans,
        image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps,
        lr=args.lr, tag_decoder_lr=args.tag_decoder_lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        contrastive_weight=args.contrastive_weight, tag_weight=args.tag_weight, num_workers=args.num_workers,
        device=args.device, seed=args.seed, resume=args.resume, overwrite=args.overwrite, output=args.output,
        val_fraction=args.val_fraction,
        save_every=args.save_every, eval_every=args.eval_every, log_every=args.log_every, stop_after=args.stop_after,
        amp=args.amp, keep_untagged=args.keep_untagged, vocabulary=args.vocabulary,
        progress_bar=not args.no_progress_bar, report_cache=not args.no_report_cache, ct_rate_root=args.ct_rate_root, dim=args.dim,
        objectives=["mosmos"] + [o for o in dict.fromkeys(args.objective or []) if o != "mosmos"],
        organ_weight=args.organ_weight, negative_free_weight=args.negative_free_weight, label_names=args.label_names,
        label_map_key=args.label_map_key, abnormality_dictionary=args.abnormality_dictionary,
        negatives_per_organ=args.negatives_per_organ, text_generator=args.text_generator,
        decoder=decoder_preset(args.tag_decoder or DEFAULT_DECODER_PRESET),
        command="mosmos-pretrain " + " ".join(shlex.quote(a) for a in argv))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_size and len(args.image_size) > 3:
        parser.error("--image-size takes one value, two (H W) or three (Z Y X, 3D)")
    if args.image_size and len(args.image_size) == 3 and args.dim == "2":
        parser.error("--image-size with three values is a 3D patch; drop --dim 2")
    from nnunet_mosmos.checkpoint import CheckpointError
    from nnunet_mosmos.text import TextEncoderError
    from pretrain.engine import PretrainError, run
    from pretrain.export import ExportError
    from pretrain.pairs import PairDataError
    from pretrain.plans import PlansError
    from pretrain.sources.roco import RocoLayoutError

    try:
        return run(config_from_args(args, argv))
    except (PretrainError, PairDataError, PlansError, RocoLayoutError, CheckpointError, TextEncoderError,
            ExportError) as e:  # CT-RATE layout errors are PairDataErrors
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mosmos-pretrain: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
