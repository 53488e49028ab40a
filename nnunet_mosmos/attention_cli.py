"""``mosmos-attention``: write pixel-tag attention maps (NIfTI + PNG) for images.

Two sources:

    mosmos-attention -m MODEL_FOLDER -i IMAGES_FOLDER -o OUT [-f 0]   # a model trained with -tr nnUNetTrainerMOSMOS
    mosmos-attention --checkpoint PRETRAINED.pt -i IMG [IMG ...] -o OUT  # pre-training only: organ presence too

With ``-m``, ``-i`` is a folder in nnU-Net's input layout (``CASE_0000.nii.gz``; one file per channel)
or image files of single-channel cases; maps have exactly the geometry of nnU-Net's predictions.
"""
import argparse
import sys
from pathlib import Path


def _cases(inputs: list[str], file_ending: str) -> list[list[str]]:
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        cases = create_lists_from_splitted_dataset_folder(inputs[0], file_ending)
        if not cases:
            raise FileNotFoundError(f"{inputs[0]} holds no '*_0000{file_ending}' files (nnU-Net input layout)")
        return cases
    missing = [f for f in inputs if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"input image(s) not found: {', '.join(missing)}")
    return [[f] for f in inputs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosmos-attention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-m", "--model-folder", help="nnU-Net model folder trained with a MOSMOS trainer")
    src.add_argument("--checkpoint", help="a MOSMOS pre-training checkpoint (.pt)")
    p.add_argument("-i", "--input", nargs="+", required=True, help="input folder (nnU-Net layout) or image files")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-f", "--fold", default="0", help="fold of the model folder (default 0; 'all' allowed)")
    p.add_argument("-chk", "--checkpoint-name", default="checkpoint_final.pth")
    p.add_argument("--text-encoder", help="text encoder for --checkpoint (default: the one it was trained with)")
    p.add_argument("-device", "--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-png", action="store_true", help="skip the PNG overlays")
    args = p.parse_args(argv)
    from nnunet_mosmos import attention
    from nnunet_mosmos.io_checks import check_output_folder

    def log(msg):
        print(f"mosmos-attention: {msg}", file=sys.stderr)

    try:
        check_output_folder(args.output)  # before any work; the inputs are checked before anything is written
        if args.model_folder:
            import json
            ending = json.loads((Path(args.model_folder) / "dataset.json").read_text())["file_ending"]
            written = attention.model_folder_maps(args.model_folder, _cases(args.input, ending), args.output,
                                                  args.fold, args.checkpoint_name, args.device, not args.no_png, log)
            print(f"wrote {len(written)} files to {args.output}")
        else:
            files = [c[0] for c in _cases(args.input, ".nii.gz")] if Path(args.input[0]).is_dir() else args.input
            results = attention.pretrained_maps(args.checkpoint, files, args.output, args.text_encoder,
                                                args.device, not args.no_png, log=log)
            for name, probs in results.items():
                top = sorted(probs.items(), key=lambda kv: -kv[1])[:5]
                print(f"{name}: " + ", ".join(f"{t} {v:.2f}" for t, v in top))
            print(f"maps and tag_probabilities.json in {args.output}")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"mosmos-attention: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
