"""Which pre-training objective gives the better 3D encoder for few labels? (issue #5's comparison)

Arms: the 3d_fullres encoder pre-trained natively in 3D with MOSMOS' losses only, + organ-grounded,
+ negative-free, and nnU-Net's random init as the reference. Every arm then gets the SAME low-label
fine-tuning probe, once per seed:

    mosmos-synthetic (phantoms with reports + masks) -> nnUNetv2_plan_and_preprocess -c 3d_fullres
    -> mosmos-pretrain -d -c 3d_fullres [--objective ...] on the report pool (per arm and seed)
    -> fine-tune nnU-Net's own 3d_fullres network (encoder from the checkpoint, by key) on
       ``labelled`` cases for ``steps`` steps with nnU-Net's Dice + CE loss, SGD + poly as nnU-Net
    -> Dice per organ on the held-out test cases

Why a probe instead of ``nnUNetv2_train`` (which scripts/bench_benefit.py runs): on a 2-core CPU one
nnU-Net 3D run with augmentation and validation costs minutes of overhead before it learns
anything; the probe keeps what the comparison is about (the same nnU-Net network and loss, the
encoder initialisation as the only difference) and runs an arm in seconds, so several seeds fit.
Cases are preprocessed by nnU-Net's own ``DefaultPreprocessor`` (resampling and normalisation of
the plans), and the whole (small) test volumes are predicted in one pass.

Fairness note: the organ-grounded arm sees masks at pre-training (as CT-GLIP uses TotalSegmentator
masks); here they are the phantoms' label maps, i.e. perfect masks. Its advantage, if any, is an
upper bound of what a silver-standard segmenter would give.

Run it as ``python scripts/compare_objectives.py [--quick] ...`` (or ``python -m benchmarks.objectives``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASET_ID, DATASET_NAME = 903, "MOSMOSObjectives"
DATASET = f"Dataset{DATASET_ID}_{DATASET_NAME}"


@dataclass(frozen=True)
class Arm:
    name: str
    objectives: tuple[str, ...] | None  # None: no pre-training (nnU-Net's init)


ARMS = (Arm("scratch", None), Arm("mosmos", ()), Arm("mosmos+organ-grounded", ("organ-grounded",)),
        Arm("mosmos+negative-free", ("negative-free",)))


# ------------------------------------------------------------------------------------ data
def prepare(root: Path, pool: int, test: int, shape, log) -> dict:
    """Synthetic dataset + nnU-Net plans; env for the nnU-Net folders under ``root``."""
    from nnunet_mosmos.demo import console_script, env_for
    from nnunet_mosmos.synthetic import write_dataset

    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "results"), "nnUNet_def_n_proc": "2", "HF_HUB_OFFLINE": "1"}
    raw = root / "raw" / DATASET
    if not raw.is_dir():
        write_dataset(root / "raw", DATASET_ID, name=DATASET_NAME, num_train=pool, num_test=test, shape=shape,
                      slices_per_case=1)
    plans = root / "pre" / DATASET / "nnUNetPlans.json"
    if not plans.is_file():
        cmd = [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2",
               "--no_pp"]
        log(f"$ {shlex.join(cmd)}")
        subprocess.run(cmd, env=env_for(cmd[0], env), check=True, capture_output=True)
    return {"env": env, "raw": raw, "plans": plans}


def load_cases(data: dict, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, seg) arrays of cases, preprocessed exactly as nnU-Net's DefaultPreprocessor does."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(json.loads(data["plans"].read_text()))
    cm = pm.get_configuration("3d_fullres")
    dataset_json = json.loads((data["raw"] / "dataset.json").read_text())
    pre, out = DefaultPreprocessor(verbose=False), []
    for name in names:
        split = "Tr" if (data["raw"] / "imagesTr" / f"{name}_0000.nii.gz").is_file() else "Ts"
        image, seg, _ = pre.run_case([str(data["raw"] / f"images{split}" / f"{name}_0000.nii.gz")],
                                     str(data["raw"] / f"labels{split}" / f"{name}.nii.gz"), pm, cm, dataset_json)
        # -1 marks voxels outside the nonzero crop; nnU-Net's training pipeline maps it to background
        out.append((image.astype(np.float32), np.maximum(seg, 0).astype(np.int64)))
    return out


# ------------------------------------------------------------------------------------ arms
def pretrain(arm: Arm, seed: int, data: dict, folder: Path, steps: int, batch: int, text_encoder, log) -> Path | None:
    if arm.objectives is None:
        return None
    out = folder / f"{arm.name}_seed{seed}.pt"
    if out.is_file():
        return out
    cmd = [sys.executable, "-m", "pretrain.cli", "--data", "manifest", "--manifest",
           str(data["raw"] / "reports_manifest.csv"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-o", str(out),
           "--max-steps", str(steps), "--batch-size", str(batch), "--lr", "1e-3", "--val-fraction", "0",
           "--num-workers", "0", "--seed", str(seed), "--no-progress-bar", "--log-every", "10"]
    for objective in arm.objectives:
        cmd += ["--objective", objective]
    if text_encoder:
        cmd += ["--text-encoder", str(text_encoder)]
    log(f"$ {shlex.join(cmd)}")
    t0 = time.time()
    proc = subprocess.run(cmd, env={**data["env"], "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"compare_objectives: pre-training failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    (folder / f"{arm.name}_seed{seed}.log").write_text(proc.stdout)
    log(f"  pre-trained {arm.name} seed {seed} in {time.time() - t0:.0f} s")
    return out


def finetune_and_score(checkpoint: Path | None, data: dict, labelled, test, seed: int, steps: int) -> dict:
    """nnU-Net's 3d_fullres network, encoder from ``checkpoint``, trained on ``labelled``; Dice on ``test``."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mosmos.checkpoint import load_mosmos_checkpoint
    from nnunet_mosmos.encoders import build_plain_network
    from nnunet_mosmos.pretrained import load_matching, used

    pm = PlansManager(json.loads(data["plans"].read_text()))
    cm = pm.get_configuration("3d_fullres")
    n_classes = len(pm.get_label_manager(json.loads((data["raw"] / "dataset.json").read_text())).foreground_labels) + 1
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_plain_network(cm, 1, n_classes, deep_supervision=False)
    loaded = 0
    if checkpoint is not None:
        ckpt = load_mosmos_checkpoint(checkpoint)
        entry = ckpt["encoder_3d"] or ckpt["encoder"]
        loaded = used(load_matching(net.encoder, entry["state_dict"], entry["input_channels"]))
    loss_fn = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                             weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    patch = tuple(int(p) for p in cm.patch_size)
    net.train()
    for step in range(steps):
        for g in opt.param_groups:  # nnU-Net's poly schedule
            g["lr"] = 1e-2 * (1 - step / steps) ** 0.9
        images, segs = zip(*(_patch(*labelled[int(rng.integers(len(labelled)))], patch, rng) for _ in range(2)))
        x, y = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(segs))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
    net.eval()
    dice = []
    with torch.no_grad():
        for image, seg in test:
            pred = _predict(net, image, patch)
            dice.append([_dice(pred == c, seg[0] == c) for c in range(1, n_classes)])
    per_class = np.nanmean(np.array(dice, dtype=float), axis=0)
    return {"mean_dice": float(np.nanmean(per_class)), "per_class": [round(float(d), 4) for d in per_class],
            "encoder_tensors_loaded": loaded, "final_loss": float(loss.detach())}


def _patch(image, seg, patch, rng):
    """A random crop of ``patch`` (zero-padded where the case is smaller), foreground-centred half the time."""
    pad = [(0, max(0, p - s)) for p, s in zip(patch, image.shape[1:])]
    image = np.pad(image, [(0, 0)] + pad)
    seg = np.pad(seg, [(0, 0)] + pad)
    if rng.random() < 0.5 and (seg > 0).any():
        centre = np.argwhere(seg[0] > 0)[int(rng.integers((seg[0] > 0).sum()))]
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, image.shape[1:])]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, image.shape[1:])]
    sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
    return image[(slice(None),) + sl], seg[(slice(None),) + sl]


def _predict(net, image, patch) -> np.ndarray:
    """Whole-case argmax: pad to a multiple of the patch grid, one forward per tile (no overlap)."""
    shape = image.shape[1:]
    padded = np.pad(image, [(0, 0)] + [(0, (-s) % p) for s, p in zip(shape, patch)])
    out = np.zeros(padded.shape[1:], dtype=np.int64)
    for z in range(0, padded.shape[1], patch[0]):
        for y in range(0, padded.shape[2], patch[1]):
            for x in range(0, padded.shape[3], patch[2]):
                sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                logits = net(torch.from_numpy(np.ascontiguousarray(padded[(slice(None),) + sl]))[None])
                out[sl] = logits[0].argmax(0).numpy()
    return out[: shape[0], : shape[1], : shape[2]]


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    denom = pred.sum() + ref.sum()
    return float("nan") if denom == 0 else 2.0 * float((pred & ref).sum()) / float(denom)


# ------------------------------------------------------------------------------------ study
def summarise(results: list[dict]) -> dict:
    arms = {}
    for r in results:
        arms.setdefault(r["arm"], []).append(r["mean_dice"])
    ref = {r["seed"]: r["mean_dice"] for r in results if r["arm"] == "scratch"}
    out = {}
    for name, values in arms.items():
        diffs = [r["mean_dice"] - ref[r["seed"]] for r in results if r["arm"] == name and r["seed"] in ref]
        out[name] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                     "min": float(np.min(values)), "max": float(np.max(values)), "n": len(values),
                     "vs_scratch": float(np.mean(diffs)) if diffs else None}
    return out


def table(summary: dict) -> str:
    lines = ["| arm | mean Dice | ± std | min–max | Δ vs scratch (paired) |", "|---|---:|---:|---|---:|"]
    for name, s in summary.items():
        delta = "–" if s["vs_scratch"] is None or name == "scratch" else f"{s['vs_scratch']:+.4f}"
        lines.append(f"| {name} | {s['mean']:.4f} | {s['std']:.4f} | {s['min']:.4f}–{s['max']:.4f} | {delta} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="compare_objectives", description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="objective_comparison", help="work folder (re-run to resume)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=[a.name for a in ARMS], default=[a.name for a in ARMS])
    p.add_argument("--pool", type=int, default=16, help="cases with reports + masks for pre-training")
    p.add_argument("--labelled", type=int, default=2, help="of those, cases whose labels fine-tuning sees")
    p.add_argument("--test", type=int, default=6, help="held-out test cases")
    p.add_argument("--shape", type=int, nargs=3, default=[16, 48, 48], metavar=("Z", "Y", "X"))
    p.add_argument("--pretrain-steps", type=int, default=80)
    p.add_argument("--pretrain-batch", type=int, default=4)
    p.add_argument("--finetune-steps", type=int, default=60)
    p.add_argument("--text-encoder", help="default: $MOSMOS_TEXT_ENCODER, else the offline MiniLM")
    p.add_argument("--quick", action="store_true", help="CI size: 1 seed, tiny budgets")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.pool, args.labelled, args.test = [0], 4, 1, 1
        args.shape, args.pretrain_steps, args.finetune_steps = [16, 32, 32], 2, 2
    if not 0 < args.labelled <= args.pool:
        p.error("--labelled must be between 1 and --pool")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.output).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - stdout is the JSON
    t0 = time.time()
    data = prepare(root, args.pool, args.test, tuple(args.shape), log)
    from nnunet_mosmos.synthetic.writer import case_id

    labelled = load_cases(data, [case_id(i) for i in range(args.labelled)])
    test = load_cases(data, [case_id(args.pool + i) for i in range(args.test)])
    torch.set_num_threads(1)
    results_file = root / "results.jsonl"
    done = {(r["arm"], r["seed"]): r for r in map(json.loads, results_file.read_text().splitlines())} \
        if results_file.is_file() else {}
    for seed in args.seeds:
        for arm in (a for a in ARMS if a.name in args.arms):
            if (arm.name, seed) in done:
                continue
            ckpt = pretrain(arm, seed, data, root / "checkpoints", args.pretrain_steps, args.pretrain_batch,
                            args.text_encoder, log)
            t1 = time.time()
            result = {"arm": arm.name, "seed": seed,
                      **finetune_and_score(ckpt, data, labelled, test, seed, args.finetune_steps),
                      "finetune_s": round(time.time() - t1, 1)}
            log(f"  {arm.name:24s} seed {seed}: mean Dice {result['mean_dice']:.4f}")
            done[(arm.name, seed)] = result
            with open(results_file, "a") as f:
                f.write(json.dumps(result) + "\n")
    results = [r for (name, seed), r in done.items() if name in args.arms and seed in args.seeds]
    summary = summarise(results)
    record = {"command": "python scripts/compare_objectives.py " + shlex.join(argv or sys.argv[1:]),
              "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
              "results": results, "summary": summary, "wall_s": round(time.time() - t0, 1)}
    log(table(summary))
    text = json.dumps(record, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
