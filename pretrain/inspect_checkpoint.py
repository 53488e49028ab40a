"""``mosmos-inspect FILE.pt``: what a MOSMOS checkpoint holds and which nnU-Net configuration it fits.

With ``-d/-c`` it also checks the fit for real: the network nnU-Net builds for that configuration
is created and the encoder is loaded into its ``.encoder`` (inflating / adapting the stem where
needed), so a mismatch is found before a fine-tuning job is queued.
"""
from __future__ import annotations

import argparse
import sys


def _check_fit(ckpt: dict, dataset: str, configuration: str, plans: str) -> str:
    from nnunet_mosmos.pretrained import fit_configuration, misfit, refit_hint
    from pretrain.plans import load_configuration

    cm, target = load_configuration(dataset, configuration, plans)
    encoder, state, report = fit_configuration(ckpt, cm, target["input_channels"])
    where = f"{target['dataset']} {plans} {configuration} ({target['input_channels']} channel(s))"
    problem = misfit(report)
    if problem:
        return f"does NOT fit {where}: {problem}; {refit_hint(dataset, configuration, plans)}"
    encoder.load_state_dict(state, strict=True)
    return (f"fits {where}: {len(report['loaded'])} tensors copied, {len(report['inflated'])} inflated, "
            f"{len(report['adapted'])} stem tensors adapted")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mosmos-inspect", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("checkpoint", help="a .pt written by mosmos-pretrain")
    p.add_argument("-d", "--dataset", help="also check the fit against this nnU-Net dataset's plans (needs -c)")
    p.add_argument("-c", "--configuration", help="configuration to check (2d, 3d_fullres, ...)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    args = p.parse_args(argv)
    from nnunet_mosmos.checkpoint import CheckpointError, describe_checkpoint, load_mosmos_checkpoint
    from pretrain.plans import PlansError

    if bool(args.dataset) != bool(args.configuration):
        p.error("-d and -c go together")
    try:
        ckpt = load_mosmos_checkpoint(args.checkpoint)
        print(f"{args.checkpoint}")
        print(describe_checkpoint(ckpt))
        if args.dataset:
            verdict = _check_fit(ckpt, args.dataset, args.configuration, args.plans)
            print(f"  check:         {verdict}")
            return 0 if verdict.startswith("fits") else 1
    except (CheckpointError, PlansError) as e:
        print(f"mosmos-inspect: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
