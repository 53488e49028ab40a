"""What pre-training did to the encoder, stage by stage, on the fine-tuning images (issue #10, item 5).

For nnU-Net's encoder of the study plans, initialised (a) at random as ``nnUNetv2_train`` does and
(b) from each pre-training checkpoint, on nnU-Net-preprocessed test slices:

* ``effective_rank``: exp(entropy) of the normalised singular values of the stage's features
  (positions x channels, centred): how many directions the features really use. A stage that
  pre-training collapsed onto a few directions starts fine-tuning with little to build on.
* ``rms``: the features' root-mean-square (scale).
* ``cka_vs_random0``: linear CKA between the stage's features and those of the random init of seed 0
  (1 = the same features up to rotation and scale); the other random seeds give the level two
  unrelated random inits reach.

    python -m benchmarks.encoder_probe --plans PLANS.json --dataset-json dataset.json \\
        --images imagesTs --checkpoint A.pt [B.pt ...] --seeds 0 1 2 -o probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of an (n x c) matrix, centred."""
    x = features - features.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x.double())
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(0, keepdim=True), b - b.mean(0, keepdim=True)
    a, b = a.double(), b.double()
    hsic = (a.T @ b).norm() ** 2
    return float(hsic / ((a.T @ a).norm() * (b.T @ b).norm()).clamp_min(1e-12))


def slices(images: Path, plans_manager, configuration_manager, dataset_json, max_cases: int, per_case: int):
    """Middle slices of the first cases, preprocessed by nnU-Net, padded to the encoder's stride."""
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    stride = int(np.prod([s[-1] for s in configuration_manager.pool_op_kernel_sizes]))
    out = []
    for image in sorted(images.glob("*_0000.nii.gz"))[:max_cases]:
        data, _, _ = preprocessor.run_case([str(image)], None, plans_manager, configuration_manager, dataset_json)
        z = np.linspace(data.shape[1] * 0.3, data.shape[1] * 0.7, per_case).astype(int)
        x = torch.from_numpy(data[:, z]).float().transpose(0, 1)
        h, w = x.shape[-2:]
        out.append(torch.nn.functional.pad(x, (0, (-w) % stride, 0, (-h) % stride)))
    return torch.cat(out)


@torch.no_grad()
def stage_features(encoder, x: torch.Tensor, max_rows: int = 4096, seed: int = 0) -> list[torch.Tensor]:
    encoder.eval()
    gen = torch.Generator().manual_seed(seed)
    feats = []
    for skip in encoder(x):
        rows = skip.permute(0, 2, 3, 1).reshape(-1, skip.shape[1])
        if rows.shape[0] > max_rows:
            rows = rows[torch.randperm(rows.shape[0], generator=gen)[:max_rows]]
        feats.append(rows)
    return feats


def random_encoder(configuration_manager, channels: int, seed: int):
    from nnunet_mosmos.encoders import build_plain_network

    torch.manual_seed(seed)
    return build_plain_network(configuration_manager, channels, 2, False).encoder


def probe(checkpoints: list[str], seeds: list[int], plans: str, dataset_json: str, images: str,
          configuration: str = "2d", max_cases: int = 6, per_case: int = 4) -> dict:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mosmos.checkpoint import load_mosmos_checkpoint
    from nnunet_mosmos.pretrained import load_pretrained_encoder

    ds = json.loads(Path(dataset_json).read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    channels = len(ds["channel_names"])
    x = slices(Path(images), pm, cm, ds, max_cases, per_case)
    reference = stage_features(random_encoder(cm, channels, 0), x)

    def rows(feats):
        return [{"effective_rank": effective_rank(f), "rms": float(f.pow(2).mean().sqrt()),
                 "cka_vs_random0": linear_cka(f, r)} for f, r in zip(feats, reference)]

    result = {"slices": int(x.shape[0]), "random": {}, "checkpoints": {}}
    for seed in seeds:
        result["random"][f"seed{seed}"] = rows(stage_features(random_encoder(cm, channels, seed), x))
    for path in checkpoints:
        enc = random_encoder(cm, channels, 0)
        load_pretrained_encoder(enc, load_mosmos_checkpoint(path), path)
        result["checkpoints"][path] = rows(stage_features(enc, x))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encoder_probe", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plans", required=True)
    p.add_argument("--dataset-json", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--checkpoint", nargs="+", default=[])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("-c", "--configuration", default="2d")
    p.add_argument("--max-cases", type=int, default=6)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = probe(args.checkpoint, args.seeds, args.plans, args.dataset_json, args.images, args.configuration,
                   args.max_cases)
    Path(args.output).write_text(json.dumps(result, indent=1))
    for name, rows in [(f"random {k}", v) for k, v in result["random"].items()] + \
            [(Path(k).parent.name + "/" + Path(k).name, v) for k, v in result["checkpoints"].items()]:
        print(f"{name:28s} " + "  ".join(f"s{i}: rank {r['effective_rank']:.1f} rms {r['rms']:.2f} "
                                         f"cka {r['cka_vs_random0']:.2f}" for i, r in enumerate(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
