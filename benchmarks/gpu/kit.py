"""The GPU kit's step runner: every device check in one call, inside a time budget, results in one folder.

``scripts/gpu_kit.sh`` installs what the device lacks (nnU-Net and its helpers, from a carried wheel
bundle) and then runs ``python -m benchmarks.gpu.kit run``, which runs these steps, each a
subprocess with its own time limit, and writes what they produced into ``--out``:

============================  ==========================================================================
step                          what (``gpu`` mode; ``dry`` runs the same commands at tiny sizes on CPU)
============================  ==========================================================================
``env``                       versions, GPU, and an import check of everything the steps need
``text_model``                a randomly initialised BERT of all-MiniLM-L6-v2's shape (:mod:`.text_model`)
``overhead_3d_fullres``       ``bench_overhead.py --device cuda --compile --real-size -c 3d_fullres``
``overhead_2d``               the same for ``-c 2d`` (512x512, batch 12)
``pretrain_2d``               ``bench_pretrain.py --device cuda --amp --compile --real-size`` (512x512, batch 12)
``pretrain_3d``               the same with ``--dim 3`` (128^3, batch 2)
``e2e``                       ``nnUNetv2_plan_and_preprocess`` / ``_train`` / ``_predict`` (:mod:`.e2e`)
============================  ==========================================================================

The overhead steps time the full branch (``--trainer nnUNetTrainerMOSMOS_full``) and the lean one
(``--lean``, the default trainer's) against plain nnU-Net in one interleaved run.

The budget (``--budget-s``) is shared out as the steps go: each step may use its share of what is
left (shares in :data:`SHARES`), so time a step does not use goes to the ones after it, and a step
that overruns is stopped (its process group is killed) without taking the others with it. The order
puts the numbers docs/benchmarks.md asks for first.

``--out`` receives at most 7 files (the device tool returns 8): ``kit.json`` (every step's status,
time and headline numbers, the environment, the install record), ``kit.log`` (every step's log,
nnU-Net's training log included) and the JSON of the five measuring steps. Everything else (nnU-Net
folders, the text model, full logs) stays in ``--work``.

This module imports nothing beyond the standard library at the top, so it runs before anything is
installed. Part of the uninstalled harness (see :mod:`benchmarks`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORMAT_VERSION = 1
#: a step's share of the remaining budget is its share over the sum of the shares still to run
SHARES = {"env": 20, "text_model": 20, "overhead_3d_fullres": 110, "overhead_2d": 90, "pretrain_2d": 50,
          "pretrain_3d": 45, "e2e": 130}
STEP_ORDER = list(SHARES)
#: the step writes this file into --out (the others only print)
OUTPUTS = {"overhead_3d_fullres": "overhead_3d_fullres.json", "overhead_2d": "overhead_2d.json",
           "pretrain_2d": "pretrain_2d.json", "pretrain_3d": "pretrain_3d.json", "e2e": "e2e.json"}
#: a step is not started with less than this many seconds left
MIN_STEP_S = 15
#: a step's log is cut to its last this-many bytes in kit.log (the device returns files up to 16 MiB)
LOG_TAIL_BYTES = 1_500_000
DEFAULT_BUDGET_S = {"gpu": 400, "dry": 3600}
#: what the steps import, checked by ``env`` (nnU-Net's trainer search imports every trainer module)
IMPORTS = ["torch", "numpy", "scipy", "skimage", "sklearn", "pandas", "matplotlib", "seaborn", "transformers",
           "tokenizers", "timm", "einops", "SimpleITK", "nibabel", "blosc2", "cc3d", "acvl_utils", "batchgenerators",
           "batchgeneratorsv2", "dynamic_network_architectures", "nnunetv2", "nnunetv2.run.run_training",
           "nnunetv2.inference.predict_from_raw_data", "nnunetv2.experiment_planning.plan_and_preprocess_api",
           "nnunetv2.training.nnUNetTrainer.primus.primus_trainers", "nnunet_mosmos.training", "pretrain.engine"]
DISTRIBUTIONS = ["torch", "triton", "numpy", "scipy", "scikit-image", "scikit-learn", "pandas", "matplotlib",
                 "seaborn", "transformers", "tokenizers", "timm", "einops", "SimpleITK", "nibabel", "blosc2",
                 "connected-components-3d", "numexpr", "ndindex", "acvl-utils", "batchgenerators", "batchgeneratorsv2",
                 "dynamic-network-architectures", "nnunetv2", "nnunet-mosmos"]


# ------------------------------------------------------------------------------------ the steps
def step_commands(mode: str, out: Path, work: Path, python: str) -> dict:
    """``{step: argv}`` for ``gpu`` (device, real sizes, compile, autocast) or ``dry`` (CPU, tiny sizes)."""
    gpu = mode == "gpu"
    text = str(work / "text_encoder")
    device = ["--device", "cuda" if gpu else "cpu"]
    # the full branch as "mosmos" and the lean one (the default trainer since the CHAOS study) beside it
    overhead = [python, "scripts/bench_overhead.py", *device, "--trainer", "nnUNetTrainerMOSMOS_full", "--lean",
                "--text-encoder", text]
    overhead += ["--compile", "--real-size", "--warmup", "2"] if gpu else ["--quick", "--no-isolate-memory"]
    pretrain = [python, "scripts/bench_pretrain.py", *device, "--text-encoder", text]
    pretrain += ["--amp", "--compile", "--real-size"] if gpu else \
        ["--quick", "--no-isolate-memory", "--repeats", "1", "--warmup", "0"]
    return {
        "env": [python, "-m", "benchmarks.gpu.kit", "env"],
        "text_model": [python, "-m", "benchmarks.gpu.text_model", text],
        "overhead_3d_fullres": overhead + ["-c", "3d_fullres", "-o", str(out / OUTPUTS["overhead_3d_fullres"])],
        "overhead_2d": overhead + ["-c", "2d", "-o", str(out / OUTPUTS["overhead_2d"])],
        "pretrain_2d": pretrain + ["--json", str(out / OUTPUTS["pretrain_2d"])],
        "pretrain_3d": pretrain + ["--dim", "3", "--json", str(out / OUTPUTS["pretrain_3d"])],
        "e2e": [python, "-m", "benchmarks.gpu.e2e", "--work", str(work / "e2e"), *device,
                "--size", "gpu" if gpu else "dry", "--json", str(out / OUTPUTS["e2e"])],
    }


def step_env(mode: str, work: Path) -> dict:
    env = dict(os.environ, MOSMOS_TEXT_ENCODER=str(work / "text_encoder"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("MOSMOS_PRETRAINED", None)
    if mode == "dry":
        env.update(OMP_NUM_THREADS="1", nnUNet_def_n_proc="1")
    return env


def run_step(name: str, cmd: list, env: dict, timeout: float, logs: Path) -> dict:
    """Run one step in its own process group; stop the whole group when it overruns."""
    stdout, stderr = logs / f"{name}.stdout", logs / f"{name}.log"
    t0 = time.time()
    with open(stdout, "w") as so, open(stderr, "w") as se:
        se.write(f"$ {' '.join(map(str, cmd))}\n")
        se.flush()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=so, stderr=se,
                                start_new_session=True)
        try:
            rc, status = proc.wait(timeout=timeout), None
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, status = proc.returncode, "timeout"
    wall = round(time.time() - t0, 1)
    status = status or ("ok" if rc == 0 else "failed")
    print(f"[kit] {name}: {status} (exit {rc}) in {wall} s of {round(timeout)} s", file=sys.stderr, flush=True)
    return {"name": name, "status": status, "rc": rc, "wall_s": wall, "timeout_s": round(timeout, 1),
            "command": " ".join(map(str, cmd)), "log": str(stderr), "stdout": str(stdout)}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group, then SIGKILL to whatever of it is left (workers included)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


# -------------------------------------------------------------------------------------- summaries
def _load(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _last_json_line(path) -> dict | None:
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _r(x, nd=3):
    return None if x is None else round(float(x), nd)


def summarise_overhead(r: dict) -> dict:
    out = {}
    for name, c in r.get("configurations", {}).items():
        row = {"patch": c["plans"]["patch_size"], "batch": c["plans"]["batch_size"],
               "train_ms": {k: _r(c["train_step_s"][k] * 1000, 1) for k in ("plain", "mosmos")},
               "mosmos": {"train": _r(c["train_step_s"]["ratio"]),
                          "inference": _r(c.get("inference_s", {}).get("ratio")),
                          "memory": _r(c["peak_mem_mb"].get("ratio"))}}
        lean = c.get("lean")
        if lean:
            row["lean"] = {"train": _r(lean["ratio_vs_plain"]), "inference": _r(lean.get("inference_ratio_vs_plain")),
                           "memory": _r(lean.get("peak_mem_ratio_vs_plain"))}
        out[name] = row
    return out


def summarise_pretrain(r: dict) -> list:
    return [{"image_size": p["image_size"], "batch": p["batch"], "pairs_per_s_full": p["pairs_per_s_full"],
             "pairs_per_s_ceiling": p["pairs_per_s_ceiling"], "ratio": p["ratio"],
             "peak_mem_mb": {k: p.get("peak_mem_mb", {}).get(k) for k in ("full", "ceiling")}}
            for p in r.get("grid", [])]


def summarise_e2e(r: dict) -> dict:
    t = r.get("training", {})
    return {"ok": r.get("ok"), "error": r.get("error"), "compiled": t.get("compiled"),
            "epoch_times_s": t.get("epoch_times_s"), "mean_dice": r.get("evaluation", {}).get("mean_dice"),
            "step_seconds": {k: v.get("seconds") for k, v in r.get("steps", {}).items()}}


def step_result(name: str, rec: dict, out: Path) -> dict | None:
    """The headline numbers of a finished step (None when it wrote nothing readable)."""
    if name in ("env", "text_model"):
        return _last_json_line(rec["stdout"])
    data = _load(out / OUTPUTS[name])
    if data is None:
        return None
    if name.startswith("overhead"):
        return summarise_overhead(data)
    if name.startswith("pretrain"):
        return summarise_pretrain(data)
    return summarise_e2e(data)


def write_log(records: list, out: Path, work: Path) -> None:
    """kit.log: each step's stderr (its tail when long), the e2e command logs and nnU-Net's training log."""
    def tail(path: Path) -> str:
        try:
            data = path.read_bytes()
        except OSError:
            return ""
        cut = data[-LOG_TAIL_BYTES:]
        return ("[... cut ...]\n" if len(cut) < len(data) else "") + cut.decode(errors="replace")

    with open(out / "kit.log", "w") as log:
        for rec in records:
            log.write(f"\n===== {rec['name']}: {rec['status']} (exit {rec['rc']}) in {rec['wall_s']} s =====\n")
            if "log" in rec:
                log.write(tail(Path(rec["log"])))
                if rec["status"] != "ok":
                    log.write("\n----- stdout (tail) -----\n" + tail(Path(rec["stdout"]))[-20000:])
        extra = sorted((work / "e2e" / "logs").glob("e2e_*.log")) + \
            sorted((work / "e2e" / "results").glob("*/*/fold_all/training_log_*.txt"))
        for path in extra:
            log.write(f"\n===== {path.relative_to(work)} =====\n" + tail(path))


# ---------------------------------------------------------------------------------------- the run
def run_kit(mode: str, out: Path, work: Path, budget_s: float, steps: list[str], python: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*OUTPUTS.values(), "kit.json", "kit.log"]:  # a rerun into the same folder reports only itself
        (out / stale).unlink(missing_ok=True)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands, env = step_commands(mode, out, work, python), step_env(mode, work)
    started = time.time()
    kit = {"kit": "mosmos_gpu_kit", "format_version": FORMAT_VERSION, "mode": mode,
           "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "budget_s": budget_s,
           "host": platform.node(), "repo": str(REPO), "work": str(work), "install": _load(work / "install.json"),
           "steps": [], "results": {}}
    for i, name in enumerate(steps):
        left = budget_s - (time.time() - started)
        if left < MIN_STEP_S:
            kit["steps"].append({"name": name, "status": "skipped", "rc": None, "wall_s": 0.0,
                                 "reason": f"{left:.0f} s of the budget left"})
            continue
        timeout = max(left * SHARES[name] / sum(SHARES[n] for n in steps[i:]), MIN_STEP_S)
        rec = run_step(name, commands[name], env, timeout, logs)
        kit["steps"].append(rec)
        try:
            kit["results"][name] = step_result(name, rec, out)
        except (KeyError, TypeError, ValueError) as e:  # a summary must never cost the remaining steps
            kit["results"][name] = {"summary_error": f"{type(e).__name__}: {e}"}
    kit["elapsed_s"] = round(time.time() - started, 1)
    kit["ok"] = all(s["status"] == "ok" for s in kit["steps"])
    write_log(kit["steps"], out, work)
    kit["outputs"] = sorted({p.name for p in out.iterdir() if p.is_file()} | {"kit.json"})
    (out / "kit.json").write_text(json.dumps(kit, indent=2) + "\n")
    return kit


def env_report() -> dict:
    """Python, torch/CUDA, the GPU, package versions and whether each module the steps need imports."""
    import importlib
    import importlib.metadata as md
    import traceback

    out = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "imports": {}, "versions": {}}
    for dist in DISTRIBUTIONS:
        try:
            out["versions"][dist] = md.version(dist)
        except md.PackageNotFoundError:
            out["versions"][dist] = None
    for module in IMPORTS:
        try:
            mod = importlib.import_module(module)
            out["imports"][module] = str(Path(getattr(mod, "__file__", "") or "").parent)
        except Exception as e:  # noqa: BLE001 - reported, the step fails below
            out["imports"][module] = f"ERROR {type(e).__name__}: {e}"
            traceback.print_exc()
    import torch

    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                      "memory_gb": round(p.total_memory / 2 ** 30, 1),
                      "multiprocessors": p.multi_processor_count, "cudnn": torch.backends.cudnn.version()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        out["nvidia_smi"] = f"not available: {e}"
    out["import_errors"] = [m for m, v in out["imports"].items() if v.startswith("ERROR")]
    return out


def print_summary(kit: dict) -> None:
    print(f"\nMOSMOS GPU kit ({kit['mode']}): {'all steps ok' if kit['ok'] else 'NOT all steps ok'} "
          f"in {kit['elapsed_s']} s of {kit['budget_s']} s")
    for s in kit["steps"]:
        print(f"  {s['name']:<22s} {s['status']:<8s} {s['wall_s']:>7.1f} s")
    print(json.dumps({"results": kit["results"], "outputs": kit["outputs"]}, indent=1, default=str))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.kit", description="The GPU kit's steps "
                                "(scripts/gpu_kit.sh runs this after installing); see docs/benchmarks.md, 'GPU kit'.")
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run the steps")
    r.add_argument("--mode", choices=["gpu", "dry"], default="gpu")
    r.add_argument("--out", required=True, help="results (at most 7 files)")
    r.add_argument("--work", required=True, help="nnU-Net folders, the text model, full logs")
    r.add_argument("--budget-s", type=float, help="seconds for all steps (default: gpu 400, dry 3600)")
    r.add_argument("--steps", help=f"comma-separated subset, in this order: {','.join(STEP_ORDER)}")
    r.add_argument("--python", default=sys.executable, help="the interpreter for the steps")
    sub.add_parser("env", help="print the environment report (JSON)")
    args = p.parse_args(argv)
    if args.what == "env":
        report = env_report()
        print(json.dumps(report))
        return 1 if report["import_errors"] else 0
    steps = STEP_ORDER if not args.steps else [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in SHARES]
    if unknown:
        p.error(f"unknown steps {unknown}; choose from {STEP_ORDER}")
    steps = [s for s in STEP_ORDER if s in steps]
    kit = run_kit(args.mode, Path(args.out).resolve(), Path(args.work).resolve(),
                  args.budget_s or DEFAULT_BUDGET_S[args.mode], steps, args.python)
    print_summary(kit)
    return 0 if kit["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
