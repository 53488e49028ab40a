"""The real nnU-Net commands end to end on a tiny synthetic dataset: the GPU kit's training check.

    mosmos-synthetic -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train -tr nnUNetTrainerMOSMOS_study
    -> nnUNetv2_predict -> nnU-Net's evaluation (summary.json)

What it shows on a GPU: that the MOSMOS trainer trains through ``nnUNetv2_train -device cuda`` with
nnU-Net's own autocast and ``torch.compile`` (``nnUNet_compile`` unset, nnU-Net's default), and that
``nnUNetv2_predict`` rebuilds and runs the network; plus the epoch times of that run. The trainer is
the benefit study's ``nnUNetTrainerMOSMOS_study``: ``nnUNetTrainerMOSMOS`` with the paper's full
branch pinned and the schedule taken from ``MOSMOS_STUDY_EPOCHS`` / ``_ITERS`` / ``_VAL_ITERS``, since
``nnUNetv2_train`` has no option for a short schedule (it also skips the final validation on fold
``all``; prediction and scoring happen on the held-out cases instead). The Dice of so short a run
says nothing about quality.

    python -m benchmarks.gpu.e2e --work DIR --device cuda --json e2e.json [--size dry]

Part of the uninstalled harness (see :mod:`benchmarks`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.benefit import dice_from_summary, evaluate
from benchmarks.common import emit_json, json_default
from benchmarks.study_trainers import ext_trainer_value
from nnunet_mosmos.demo import console_script, env_for

DATASET_ID = 960
DATASET = f"Dataset{DATASET_ID}_MOSMOSGpuKit"
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainerMOSMOS_study"
#: dataset, schedule and processes per size: ``gpu`` for the device, ``dry`` for a CPU dry run
SIZES = {"gpu": dict(train=4, test=2, shape=(32, 64, 64), epochs=2, iters=50, val_iters=5, processes=8),
         "dry": dict(train=3, test=1, shape=(16, 32, 32), epochs=1, iters=2, val_iters=1, processes=1)}
EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")
TRAIN_LOSS = re.compile(r"train_loss (-?[0-9.]+)")


class StepFailed(RuntimeError):
    pass


def run_step(name: str, cmd: list, env: dict, logs: Path, steps: dict, save=None) -> None:
    """One console command, its output in ``logs/e2e_<name>.log``, its time and exit code in ``steps``
    (then ``save()``: a run stopped from outside still leaves the steps it finished)."""
    cmd = [str(c) for c in cmd]
    cmd[0] = console_script(cmd[0])
    log_path = logs / f"e2e_{name}.log"
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, env=env_for(cmd[0], env), stdout=log, stderr=subprocess.STDOUT).returncode
    steps[name] = {"command": shlex.join(cmd), "rc": rc, "seconds": round(time.time() - t0, 1), "log": str(log_path)}
    print(f"[e2e] {name}: exit {rc} in {steps[name]['seconds']} s", file=sys.stderr, flush=True)
    if save is not None:
        save()
    if rc != 0:
        raise StepFailed(f"{name} failed (exit {rc}); see {log_path}")


def training_summary(model: Path) -> dict:
    """What nnU-Net's training log says: epoch times, last train loss, whether it compiled, MOSMOS lines."""
    logs = sorted((model / "fold_all").glob("training_log_*.txt"))
    if not logs:
        return {"log": None}
    text = logs[-1].read_text(errors="replace")
    losses = [float(x) for x in TRAIN_LOSS.findall(text)]
    return {"log": str(logs[-1]), "epoch_times_s": [float(x) for x in EPOCH_TIME.findall(text)],
            "last_train_loss": losses[-1] if losses else None, "compiled": "Using torch.compile" in text,
            "mosmos_lines": [line.strip() for line in text.splitlines() if "MOSMOS:" in line][:6],
            "checkpoint_final": (model / "fold_all" / "checkpoint_final.pth").is_file()}


def run(args) -> dict:
    s = SIZES[args.size]
    work = Path(args.work).resolve()
    raw, logs = work / "raw", work / "logs"
    for old in ("raw", "preprocessed", "results", "pred", "logs"):  # a rerun starts from nothing
        shutil.rmtree(work / old, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer")),
               MOSMOS_STUDY_EPOCHS=str(s["epochs"]), MOSMOS_STUDY_ITERS=str(s["iters"]),
               MOSMOS_STUDY_VAL_ITERS=str(s["val_iters"]), MOSMOS_STUDY_SEED="0",
               nnUNet_def_n_proc=str(s["processes"]))
    env.pop("nnUNet_compile", None)  # nnU-Net's default: compile on CUDA
    env.pop("MOSMOS_PRETRAINED", None)
    if args.device == "cpu":  # one thread and no augmentation workers: predictable on a shared CPU
        env.update(nnUNet_n_proc_DA="0", MOSMOS_STUDY_THREADS="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    model = work / "results" / DATASET / f"{args.trainer}__nnUNetPlans__{CONFIGURATION}"
    pred = work / "pred"
    result = {"benchmark": "gpu_kit_e2e", "format_version": 1,
              "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "settings": {"device": args.device, "size": args.size, "trainer": args.trainer,
                           "configuration": CONFIGURATION, "dataset": DATASET, **s,
                           "nnUNet_compile": env.get("nnUNet_compile"),
                           "text_encoder": env.get("MOSMOS_TEXT_ENCODER")},
              "steps": {}, "ok": False}
    steps = result["steps"]

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=json_default) + "\n")

    t0 = time.time()
    try:
        run_step("synthetic", ["mosmos-synthetic", "-o", raw, "-d", DATASET_ID, "--name", "MOSMOSGpuKit",
                               "--num-train", s["train"], "--num-test", s["test"], "--shape", *s["shape"]],
                 env, logs, steps, save)
        run_step("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", CONFIGURATION,
                                         "-np", s["processes"], "--verify_dataset_integrity"], env, logs, steps, save)
        run_step("train", ["nnUNetv2_train", DATASET_ID, CONFIGURATION, "all", "-tr", args.trainer,
                           "-device", args.device], env, logs, steps, save)
        result["training"] = training_summary(model)
        run_step("predict", ["nnUNetv2_predict", "-i", raw / DATASET / "imagesTs", "-o", pred, "-d", DATASET_ID,
                             "-c", CONFIGURATION, "-f", "all", "-tr", args.trainer, "-device", args.device,
                             "-npp", s["processes"], "-nps", s["processes"]], env, logs, steps, save)
        result["prediction"] = {"cases": len(list(pred.glob("*.nii.gz")))}
        t1 = time.time()
        result["evaluation"] = dice_from_summary(evaluate(raw / DATASET / "labelsTs", pred, model))
        steps["evaluate"] = {"rc": 0, "seconds": round(time.time() - t1, 1)}
        result["ok"] = True
    except StepFailed as e:
        result["error"] = str(e)
        if "training" not in result and model.is_dir():
            result["training"] = training_summary(model)
    result["elapsed_s"] = round(time.time() - t0, 1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for nnU-Net's raw/preprocessed/results and the logs")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--size", default="gpu", choices=sorted(SIZES))
    p.add_argument("--trainer", default=TRAINER)
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args(argv)
    result = run(args)
    emit_json(result, args.json)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
