"""``mosmos-demo``: the whole MOSMOS story, offline, on generated data, with the standard commands.

    synthetic CT + reports -> nnUNetv2_plan_and_preprocess -> mosmos-pretrain (the encoder of those plans)
    -> nnUNetv2_train -tr nnUNetTrainerMOSMOS_demo -> nnUNetv2_predict -> nnUNetv2_evaluate_folder
    -> mosmos-attention (pixel-tag attention figure)

Each step is the real console command in a subprocess (what a user would type), so the demo
doubles as a living tutorial; the commands are printed as they run. The default and ``--quick``
(the CI-sized version of the same steps) use nnU-Net's ``2d`` configuration, the paper's 2D U-Net
setting, which fits a laptop CPU; ``--full`` is a longer ``3d_fullres`` schedule for a GPU.

The demo shows the workflow, not the benefit: its data is synthetic and its budget tiny. Whether
reports buy Dice on real images is measured in docs/benchmarks.md (``COMPARISON``), which the demo
names when it ends.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from nnunet_mosmos import ext_trainer_value
from nnunet_mosmos.checkpoint import PRETRAINED_SUBFOLDER

DATASET_ID = 990
DATASET = f"Dataset{DATASET_ID}_MOSMOSDemo"
SIZES = {
    # cases, test cases, volume shape, pre-training steps, trainer
    "quick": dict(train=5, test=1, shape=(16, 48, 48), steps=10, image_size=32, batch=4,
                  trainer="nnUNetTrainerMOSMOS_tiny", config="2d"),
    "default": dict(train=8, test=2, shape=(32, 64, 64), steps=100, image_size=64, batch=8,
                    trainer="nnUNetTrainerMOSMOS_demo", config="2d"),
    "full": dict(train=24, test=6, shape=(48, 96, 96), steps=5000, image_size=96, batch=32,
                 trainer="nnUNetTrainerMOSMOS_250epochs", config="3d_fullres"),
}
#: where the measured comparison with plain nnU-Net lives (printed at the end)
COMPARISON = "docs/benchmarks.md, section 'Benefit study on real data: MedPix reports -> CHAOS MR'"


#: the nnU-Net commands that run the experiment planner
PLANNER_COMMANDS = ("nnUNetv2_plan_and_preprocess", "nnUNetv2_plan_experiment")


def env_for(command: str, env: dict) -> dict:
    """``env`` for one nnU-Net command: nnU-Net 2.8.1's planner calls
    ``torch.set_num_threads(nnUNet_n_proc_DA)``, which rejects the 0 that training accepts."""
    if Path(command).name in PLANNER_COMMANDS and env.get("nnUNet_n_proc_DA") == "0":
        return {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}
    return env


def _run(cmd: list, env: dict, log) -> None:
    cmd = [str(c) for c in cmd]
    env = env_for(cmd[0], env)
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    log.write(f"\n$ {shlex.join(cmd)}\n")
    log.flush()
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"mosmos-demo: step failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                         f"see the full output in {log.name}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


def console_script(name: str) -> str:
    """The console script ``name`` next to this interpreter (the same environment), else ``name`` (PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosmos-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="mosmos_demo", help="folder for everything (default ./mosmos_demo)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny CI-sized run (~3 min on 2 CPU cores)")
    size.add_argument("--full", action="store_true", help="longer schedule, meant for a GPU")
    p.add_argument("-device", "--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--text-encoder", help="HF id or folder (default: the offline all-MiniLM-L6-v2)")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    s = SIZES[mode]
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.output).resolve()
    if (out / "raw" / DATASET).exists():
        raise SystemExit(f"mosmos-demo: {out} already holds a demo run; remove it or pass -o NEW_FOLDER")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(nnUNet_raw=str(out / "raw"), nnUNet_preprocessed=str(out / "preprocessed"),
               nnUNet_results=str(out / "results"), HF_HUB_OFFLINE="1",
               nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer")))
    env.setdefault("nnUNet_def_n_proc", str(min(4, os.cpu_count() or 1)))
    if args.text_encoder:
        env["MOSMOS_TEXT_ENCODER"] = args.text_encoder
    raw = out / "raw" / DATASET
    model = out / "results" / DATASET / f"{s['trainer']}__nnUNetPlans__{s['config']}"
    t0 = time.time()
    with open(out / "demo_log.txt", "a") as log:
        print(f"mosmos-demo ({mode}, device {device}); full command output in {log.name}")
        _run([console_script("mosmos-synthetic"), "-o", out / "raw", "-d", DATASET_ID, "--name", "MOSMOSDemo",
              "--num-train", s["train"], "--num-test", s["test"], "--shape", *s["shape"]], env, log)
        _run([console_script("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", s["config"], "-np", 2,
              "--verify_dataset_integrity"], env, log)
        _run([console_script("mosmos-pretrain"), "--data", "synthetic", "-d", DATASET_ID, "-c", s["config"],
              "--max-steps", s["steps"], "--image-size", s["image_size"], "--batch-size", s["batch"],
              "--device", device, "--num-workers", 0], env, log)
        _run([console_script("nnUNetv2_train"), DATASET_ID, s["config"], 0, "-tr", s["trainer"],
              "-device", device], env, log)
        _run([console_script("nnUNetv2_predict"), "-i", raw / "imagesTs", "-o", out / "predictions",
              "-d", DATASET_ID, "-c", s["config"], "-f", 0, "-tr", s["trainer"], "-device", device], env, log)
        _run([console_script("nnUNetv2_evaluate_folder"), raw / "labelsTs", out / "predictions",
              "-djfile", model / "dataset.json", "-pfile", model / "plans.json"], env, log)
        _run([console_script("mosmos-attention"), "-m", model, "-i", raw / "imagesTs", "-o", out / "attention",
              "-device", device], env, log)

    labels = {v: k for k, v in json.loads((raw / "dataset.json").read_text())["labels"].items()}
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    print(f"\nDice per organ on the {s['test']} held-out case(s):")
    for key, metrics in sorted(summary["mean"].items(), key=lambda kv: int(kv[0])):
        print(f"  {labels[int(key)]:<14s} {metrics['Dice']:.3f}")
    print(f"\nEverything is in {out} ({time.time() - t0:.0f} s):")
    for what, where in (("raw data + reports", raw), ("pre-trained checkpoint",
                        out / "preprocessed" / DATASET / PRETRAINED_SUBFOLDER),
                        ("trained model", model), ("predictions + summary.json", out / "predictions"),
                        ("attention maps + figure", out / "attention"), ("command log", out / "demo_log.txt")):
        print(f"  {what:<28s} {where}")
    print(f"\nThis demo shows the workflow on synthetic data with a tiny budget; it is not a measurement of\n"
          f"the benefit. Plain nnU-Net against MOSMOS on real MR with few labels, 3 seeds: {COMPARISON}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
