"""The benefit study (issue #6): does report pre-training / the aligning loss help with few labels?

Every arm trains on the SAME few labelled synthetic cases at the SAME iteration budget
(the trainers of ``benchmarks/study_trainers/`` read it from ``MOSMOS_STUDY_*``), once per seed, and
is scored on a held-out test set by nnU-Net's own ``nnUNetv2_evaluate_folder``. Each step is the
real console command in a subprocess, exactly as in ``mosmos-demo``:

    mosmos-synthetic (labelled set + unlabelled report pool) -> nnUNetv2_plan_and_preprocess
    -> [mosmos-pretrain, cached per (pre-training args, seed)] -> nnUNetv2_train -f all
    -> nnUNetv2_predict imagesTs -> nnUNetv2_evaluate_folder labelsTs

Arms are data (:class:`Arm`), so new ones (3d_fullres, other pre-training objectives) are one
line. Re-running the same command resumes: a run whose ``summary.json`` exists is not redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.study_trainers import ext_trainer_value
from nnunet_mosmos.demo import console_script, env_for

DATASET_ID, DATASET_NAME = 980, "MOSMOSStudy"
POOL_ID, POOL_NAME = 981, "MOSMOSStudyPool"
DATASET = f"Dataset{DATASET_ID}_{DATASET_NAME}"
POOL = f"Dataset{POOL_ID}_{POOL_NAME}"
PLAIN, SCRATCH = "plain", "mosmos_scratch"


@dataclass(frozen=True)
class Arm:
    """One arm: a trainer (``-tr``), and the extra ``mosmos-pretrain`` arguments when it pre-trains first.

    ``pretrain`` is appended after the study's pre-training arguments, so an arm may also override
    them (argparse keeps the last ``--data``/``--manifest``). ``configuration`` None = the study's.
    """
    name: str
    trainer: str
    pretrain: list[str] | None = None
    configuration: str | None = None
    #: (epochs, iterations per epoch) instead of the study's budget (the pilot's learning curve)
    budget: tuple[int, int] | None = None


DEFAULT_ARMS = (
    Arm(PLAIN, "nnUNetTrainer_mosmosStudy"),
    Arm(SCRATCH, "nnUNetTrainerMOSMOS_study_scratch"),
    Arm("mosmos_pretrained", "nnUNetTrainerMOSMOS_study", []),
    Arm("mosmos_pretrained_noAlign", "nnUNetTrainerMOSMOS_study_noAlign", []),
    Arm("mosmos_pretrained_lambda0.1", "nnUNetTrainerMOSMOS_study_lambda0p1", []),
    Arm("mosmos_pretrained_lambda1.0", "nnUNetTrainerMOSMOS_study_lambda1p0", []),
)
QUICK_ARMS = (DEFAULT_ARMS[0], DEFAULT_ARMS[2])


def default_pretrain_data(configuration: str) -> list[str]:
    """2d: the pool's axial image-report PNG pairs; 3D: the pool's volumes + reports (random slices)."""
    if configuration == "2d":
        return ["--data", "synthetic", "--manifest", "{pool}/pairs2d/manifest.csv"]
    return ["--data", "manifest", "--manifest", "{pool}/reports_manifest.csv"]


@dataclass
class StudyConfig:
    output: Path
    arms: tuple = DEFAULT_ARMS
    seeds: tuple = (0, 1, 2)
    configuration: str = "2d"
    # the labelled data: few training cases, a larger held-out test set
    num_train: int = 4
    num_test: int = 8
    shape: tuple = (32, 64, 64)
    data_seed: int = 0
    # the unlabelled image-report pool for pre-training (reports are cheap: more cases than labels)
    pool_cases: int = 24
    pool_seed: int = 1000  # another seed: pool phantoms are different patients from train and test
    # the fixed budget of every arm
    epochs: int = 10
    iters: int = 25
    val_iters: int = 2
    # pre-training (same for every pre-trained arm; the arm adds its own args)
    pretrain_data: list | None = None  # None: default_pretrain_data(configuration)
    pretrain_args: list = field(default_factory=lambda: ["--max-steps", "150", "--batch-size", "16"])
    device: str = "cpu"
    jobs: int = 1
    text_encoder: str | None = None

    def arm_configuration(self, arm: Arm) -> str:
        return arm.configuration or self.configuration


# ------------------------------------------------------------------------------------ running
class Runner:
    """Runs the study's commands with nnU-Net's folders inside ``config.output``; one log per step.

    The arms train on ``dataset`` with the plans ``plans`` and are scored on ``test_folders()``;
    a study on other data (``benchmarks/chaos.py``) overrides these and ``prepare_data``.
    """
    dataset_id: int = DATASET_ID
    dataset: str = DATASET
    plans: str = "nnUNetPlans"
    config_file: str = "study_config.json"

    def __init__(self, config: StudyConfig):
        self.c = config
        self.out = Path(config.output).resolve()
        self.raw, self.pre = self.out / "raw", self.out / "preprocessed"
        self.logs = self.out / "logs"
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        env = dict(os.environ)
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.pre),
                   nnUNet_results=str(self.out / "results"), HF_HUB_OFFLINE="1", nnUNet_compile="0",
                   nnUNet_n_proc_DA="0",  # single-threaded augmentation: seeded batches, no worker fights
                   nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer")))
        env.setdefault("nnUNet_def_n_proc", "2")
        # one thread per run: on a small shared machine, OpenMP threads wait for each other at every
        # barrier (see "Overhead" in docs/benchmarks.md); use --jobs to run several runs at once
        env["OMP_NUM_THREADS"] = "1"
        env["MOSMOS_STUDY_THREADS"] = "1"  # nnUNetv2_train -device cpu overrides OMP_NUM_THREADS (study trainers)
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # nnUNetv2_predict also takes cpu_count() threads: let them sleep
        if config.text_encoder:
            env["MOSMOS_TEXT_ENCODER"] = config.text_encoder
        env.pop("MOSMOS_PRETRAINED", None)
        self.env = env

    def run(self, cmd: list, log_name: str, extra_env: dict | None = None) -> float:
        cmd = [str(c) for c in cmd]
        cmd[0] = console_script(cmd[0])
        env = env_for(cmd[0], {**self.env, **(extra_env or {})})
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{log_name}.log"
        t0 = time.time()
        with open(log_path, "a") as log:
            log.write(f"\n$ {shlex.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_benefit: step failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                               f"see {log_path}")
        return time.time() - t0

    # --- data -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        c = self.c
        if not (self.raw / DATASET).is_dir():
            self.run(["mosmos-synthetic", "-o", self.raw, "-d", DATASET_ID, "--name", DATASET_NAME,
                      "--num-train", c.num_train, "--num-test", c.num_test, "--seed", c.data_seed,
                      "--shape", *c.shape], "data")
        if any(a.pretrain is not None for a in c.arms) and not (self.raw / POOL).is_dir():
            self.run(["mosmos-synthetic", "-o", self.raw, "-d", POOL_ID, "--name", POOL_NAME,
                      "--num-train", c.pool_cases, "--num-test", 0, "--seed", c.pool_seed,
                      "--shape", *c.shape], "data")
        configs = sorted({c.arm_configuration(a) for a in c.arms})
        plans = self.pre / DATASET / "nnUNetPlans.json"
        missing = [cf for cf in configs
                   if not plans.is_file() or cf not in json.loads(plans.read_text())["configurations"]
                   or not (self.pre / DATASET / f"nnUNetPlans_{cf}").is_dir()]
        if missing:
            self.run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", *configs, "-np", 2,
                      "--verify_dataset_integrity"], "data")

    # --- pre-training, cached by (configuration, args, seed) ------------------------------
    def pretrain_command(self, arm: Arm) -> list[str]:
        """The ``mosmos-pretrain`` command of an arm, without its seed (the cache key)."""
        c, cf = self.c, self.c.arm_configuration(arm)
        data = c.pretrain_data if c.pretrain_data is not None else default_pretrain_data(cf)
        data = [a.format(pool=self.raw / POOL, raw=self.raw / DATASET) for a in data]
        return ["mosmos-pretrain", *data, "-d", str(DATASET_ID), "-c", cf, *map(str, c.pretrain_args),
                "--device", c.device, "--num-workers", "0", "--no-progress-bar", *map(str, arm.pretrain or [])]

    def pretrained_checkpoint(self, arm: Arm, seed: int) -> Path:
        """Pre-train once per (command, seed); arms with the same command share the checkpoint."""
        cmd = self.pretrain_command(arm)
        portable = [a.replace(str(self.out), "<study>") for a in cmd]  # a moved study keeps its cache
        key = hashlib.sha1(json.dumps(portable).encode()).hexdigest()[:10]
        ckpt = self.out / "pretrain" / key / f"seed{seed}.pt"
        with self._lock(f"{key}/{seed}"):
            if not ckpt.is_file():
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                (ckpt.parent / "command.json").write_text(json.dumps(cmd, indent=1))
                self.run([*cmd, "--seed", seed, "-o", ckpt], f"pretrain_{key}_seed{seed}")
        return ckpt

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    # --- one arm, one seed --------------------------------------------------------------------
    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.out / "runs" / arm.name / f"seed{seed}"

    def test_folders(self) -> tuple[Path, Path]:
        """(images, labels) of the held-out cases every arm is scored on."""
        return self.raw / self.dataset / "imagesTs", self.raw / self.dataset / "labelsTs"

    def budget(self, arm: Arm) -> tuple[int, int]:
        return arm.budget or (self.c.epochs, self.c.iters)

    def run_arm(self, arm: Arm, seed: int) -> dict:
        """Train, predict, evaluate (skipped when its summary.json exists); the run's result dict."""
        c, cf, folder = self.c, self.c.arm_configuration(arm), self.run_dir(arm, seed)
        summary, result_file = folder / "pred" / "summary.json", folder / "result.json"
        if summary.is_file() and result_file.is_file():
            return json.loads(result_file.read_text())
        t0 = time.time()
        epochs, iters = self.budget(arm)
        env = {"nnUNet_results": str(folder / "results"), "MOSMOS_STUDY_SEED": str(seed),
               "MOSMOS_STUDY_EPOCHS": str(epochs), "MOSMOS_STUDY_ITERS": str(iters),
               "MOSMOS_STUDY_VAL_ITERS": str(c.val_iters)}
        ckpt = None
        if arm.pretrain is not None:
            ckpt = self.pretrained_checkpoint(arm, seed)
            env["MOSMOS_PRETRAINED"] = str(ckpt)
        model = folder / "results" / self.dataset / f"{arm.trainer}__{self.plans}__{cf}"
        log = f"{arm.name}_seed{seed}"
        images, labels = self.test_folders()
        t_train = t1 = time.time()
        if not (model / "fold_all" / "checkpoint_final.pth").is_file():
            self.run(["nnUNetv2_train", self.dataset_id, cf, "all", "-tr", arm.trainer, "-p", self.plans,
                      "-device", c.device], log, env)
            t_train = time.time()
        # nnUNetv2_predict -device cpu takes cpu_count() threads, but its forward pass caps them at
        # nnUNet_def_n_proc: one thread, as in training, so it does not slow the run beside it
        self.run(["nnUNetv2_predict", "-i", images, "-o", folder / "pred", "-d", self.dataset_id, "-c", cf,
                  "-f", "all", "-tr", arm.trainer, "-p", self.plans, "-device", c.device,
                  "--disable_tta", "-npp", 1, "-nps", 1], log,
                 {**env, "nnUNet_def_n_proc": self.env["MOSMOS_STUDY_THREADS"]})
        evaluate(labels, folder / "pred", model)
        result = {"arm": arm.name, "trainer": arm.trainer, "configuration": cf, "seed": seed,
                  "budget": [epochs, iters], "pretrained": str(ckpt) if ckpt else None,
                  **dice_from_summary(summary), "train_s": round(t_train - t1, 1),
                  "total_s": round(time.time() - t0, 1)}
        result_file.write_text(json.dumps(result, indent=1))
        return result

    def check_config(self) -> None:
        """Resuming with another budget or dataset would mix incomparable runs: refuse it."""
        keep = {k: v for k, v in asdict(self.c).items() if k not in ("output", "arms", "seeds", "jobs")}
        keep = json.loads(json.dumps(keep, default=str))
        saved = self.out / self.config_file
        # a setting added after a study was written matches it at its default (what the study ran with)
        defaults = json.loads(json.dumps(asdict(type(self.c)(output=self.c.output)), default=str))
        if saved.is_file() and {**{k: defaults[k] for k in keep}, **json.loads(saved.read_text())} != keep:
            raise RuntimeError(f"bench_benefit: {self.out} holds a study with other settings ({saved}); "
                               "re-run with the same settings to resume, or pass a new -o folder")
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(keep, indent=1))

    def finished_runs(self) -> list[dict]:
        """Results of the (arm, seed) runs that are complete, in study order."""
        files = [self.run_dir(a, s) / "result.json" for s in self.c.seeds for a in self.c.arms]
        return [json.loads(f.read_text()) for f in files if f.is_file()]

    def run_all(self, progress=print) -> list[dict]:
        """Pre-training runs first (they gate the pre-trained arms), then the runs seed by seed, so an
        interrupted study has whole seeds; ``jobs`` commands at a time."""
        self.check_config()
        self.prepare_data()
        pretrain_jobs = {(self.pretrain_command(a).__repr__(), seed): (a, seed)
                         for seed in self.c.seeds for a in self.c.arms if a.pretrain is not None}
        runs = [(arm, seed) for seed in self.c.seeds for arm in self.c.arms]

        def one(job):
            kind, (arm, seed) = job
            if kind == "pretrain":
                self.pretrained_checkpoint(arm, seed)
                return None
            result = self.run_arm(arm, seed)
            progress(f"  {result['arm']:<30s} seed {result['seed']}: mean Dice {result['mean_dice']:.4f} "
                     f"({result['total_s']:.0f} s)")
            return result

        jobs = [("pretrain", j) for j in pretrain_jobs.values()] + [("run", r) for r in runs]
        with ThreadPoolExecutor(max_workers=max(1, self.c.jobs)) as pool:
            return [r for r in pool.map(one, jobs) if r is not None]


def evaluate(labels_folder: Path, pred_folder: Path, model_folder: Path) -> Path:
    """``nnUNetv2_evaluate_folder`` (its own function, in this process: one interpreter start less
    per run) -> ``pred_folder/summary.json``."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    summary = Path(pred_folder) / "summary.json"
    compute_metrics_on_folder2(str(labels_folder), str(pred_folder), str(Path(model_folder) / "dataset.json"),
                               str(Path(model_folder) / "plans.json"), str(summary), num_processes=1)
    return summary


def dice_from_summary(summary_json: Path) -> dict:
    """Mean foreground Dice and per-class Dice from ``nnUNetv2_evaluate_folder``'s summary.json."""
    summary = json.loads(Path(summary_json).read_text())
    return {"mean_dice": float(summary["foreground_mean"]["Dice"]),
            "class_dice": {k: float(v["Dice"]) for k, v in sorted(summary["mean"].items(), key=lambda kv: int(kv[0]))},
            "num_test_cases": len(summary["metric_per_case"])}


# --------------------------------------------------------------------------------- aggregation
def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def aggregate(results: list[dict], references=(SCRATCH, PLAIN)) -> dict:
    """Per arm: mean Dice stats over seeds and per-class means; paired (same seed) differences
    against each reference arm present: stats of (arm - reference) and how many seeds it wins."""
    by_arm: dict[str, dict[int, dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    arms = {}
    for name, runs in by_arm.items():
        seeds = sorted(runs)
        classes = sorted(runs[seeds[0]]["class_dice"], key=int)
        arms[name] = {"seeds": seeds, "dice": [runs[s]["mean_dice"] for s in seeds],
                      **_stats([runs[s]["mean_dice"] for s in seeds]),
                      "class_dice": {k: float(np.mean([runs[s]["class_dice"][k] for s in seeds])) for k in classes},
                      "class_dice_std": {k: _stats([runs[s]["class_dice"][k] for s in seeds])["std"] for k in classes}}
    paired = {}
    for ref in references:
        if ref not in by_arm:
            continue
        for name, runs in by_arm.items():
            common = sorted(set(runs) & set(by_arm[ref]))
            if name == ref or not common:
                continue
            diffs = [runs[s]["mean_dice"] - by_arm[ref][s]["mean_dice"] for s in common]
            paired.setdefault(f"vs_{ref}", {})[name] = {**_stats(diffs), "wins": int(sum(d > 0 for d in diffs))}
    return {"arms": arms, "paired": paired}


def markdown_table(agg: dict) -> str:
    """Per-arm table (mean ± std, min–max over seeds) and one paired-difference table per reference."""
    lines = ["| arm | seeds | mean Dice ± std | min – max |", "|---|---:|---:|---:|"]
    for name, a in agg["arms"].items():
        lines.append(f"| {name} | {a['n']} | {a['mean']:.3f} ± {a['std']:.3f} | {a['min']:.3f} – {a['max']:.3f} |")
    for ref, rows in agg["paired"].items():
        lines += ["", f"| paired difference {ref.replace('_', ' ', 1)} | mean ± std | min – max | seeds better |",
                  "|---|---:|---:|---:|"]
        for name, d in rows.items():
            lines.append(f"| {name} | {d['mean']:+.3f} ± {d['std']:.3f} | {d['min']:+.3f} – {d['max']:+.3f} "
                         f"| {d['wins']}/{d['n']} |")
    return "\n".join(lines)


def plot(agg: dict, path: Path, title: str = "") -> Path:
    """Each seed's mean Dice as a point, the arm's mean ± std as a bar, one column per arm."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    names = list(agg["arms"])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4.5))
    for i, name in enumerate(names):
        a = agg["arms"][name]
        jitter = np.linspace(-0.12, 0.12, len(a["dice"])) if len(a["dice"]) > 1 else [0.0]
        ax.scatter(i + np.asarray(jitter), a["dice"], s=22, color="0.45", zorder=3,
                   label="one seed" if i == 0 else None)
        ax.errorbar(i + 0.3, a["mean"], yerr=a["std"], fmt="o", color="C3", capsize=5, zorder=4,
                    label="mean ± std" if i == 0 else None)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("mean foreground Dice (held-out test set)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def study_record(config: StudyConfig, results: list[dict], command: str, wall_s: float,
                 references=(SCRATCH, PLAIN)) -> dict:
    """Everything the docs need in one JSON: config, per-run results, aggregate, machine, versions."""
    import platform
    from importlib.metadata import version

    cfg = asdict(config)
    cfg["output"] = str(cfg["output"])
    return {"date": time.strftime("%Y-%m-%dT%H:%M UTC", time.gmtime()), "command": command,
            "wall_s": round(wall_s, 1), "config": cfg,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "load_average": os.getloadavg()},
            "versions": {p: version(p) for p in ("torch", "nnunetv2", "nnunet-mosmos")},
            "runs": results, "aggregate": aggregate(results, references)}


# ---------------------------------------------------------------------------------------- CLI
QUICK = dict(arms=QUICK_ARMS, seeds=(0,), num_train=2, num_test=1, shape=(16, 32, 32), pool_cases=2,
             epochs=1, iters=3, val_iters=1, pretrain_args=["--max-steps", "3", "--batch-size", "4"])


def parse_args(argv=None):
    import argparse

    d = StudyConfig(output=Path("."))
    p = argparse.ArgumentParser(prog="bench_benefit.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="benefit_study", help="study folder (re-run to resume)")
    p.add_argument("--quick", action="store_true", help="CI size: plain + MOSMOS pre-trained, 1 seed, a few "
                   "iterations on tiny phantoms (about 2 min on 2 CPU cores)")
    p.add_argument("--arms", nargs="+", metavar="NAME", help="subset of the default arms: "
                   + ", ".join(a.name for a in DEFAULT_ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("-c", "--configuration", default=d.configuration, help="nnU-Net configuration of every arm")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--iters", type=int, default=d.iters, help="training iterations per epoch")
    p.add_argument("--val-iters", type=int, default=d.val_iters, help="pseudo-Dice iterations per epoch")
    p.add_argument("--num-train", type=int, default=d.num_train, help="labelled training cases")
    p.add_argument("--num-test", type=int, default=d.num_test, help="held-out test cases")
    p.add_argument("--shape", type=int, nargs=3, default=list(d.shape), metavar=("Z", "Y", "X"))
    p.add_argument("--pool-cases", type=int, default=d.pool_cases, help="unlabelled cases whose image-report "
                   "pairs feed pre-training")
    p.add_argument("--pretrain-args", default=shlex.join(d.pretrain_args),
                   help="mosmos-pretrain arguments shared by all pre-trained arms (one quoted string)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each then uses one thread)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--text-encoder", help="HF id or folder (default: $MOSMOS_TEXT_ENCODER, else all-MiniLM-L6-v2)")
    p.add_argument("--collect", action="store_true", help="run nothing: report the runs finished so far "
                   "(e.g. while a long study is still running, or after it was interrupted)")
    p.add_argument("--plot", nargs="?", const="", metavar="PNG", help="draw the per-arm plot "
                   "(default file: <output>/bench_benefit.png)")
    args = p.parse_args(argv)
    known = {a.name: a for a in DEFAULT_ARMS}
    if args.arms and set(args.arms) - set(known):
        p.error(f"unknown arm(s) {sorted(set(args.arms) - set(known))}; choose from {sorted(known)}")
    config = StudyConfig(
        output=Path(args.output), arms=tuple(known[n] for n in args.arms) if args.arms else DEFAULT_ARMS,
        seeds=tuple(args.seeds), configuration=args.configuration, num_train=args.num_train,
        num_test=args.num_test, shape=tuple(args.shape), pool_cases=args.pool_cases, epochs=args.epochs,
        iters=args.iters, val_iters=args.val_iters, pretrain_args=shlex.split(args.pretrain_args),
        device=args.device, jobs=args.jobs, text_encoder=args.text_encoder)
    if args.quick:
        for key, value in QUICK.items():
            setattr(config, key, value)
    return args, config


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args, config = parse_args(argv)
    out = Path(config.output).resolve()
    if args.collect and (out / "study_config.json").is_file():  # report the settings the runs used
        for key, value in json.loads((out / "study_config.json").read_text()).items():
            setattr(config, key, tuple(value) if isinstance(value, list) and key == "shape" else value)
    t0 = time.time()
    print(f"benefit study in {out}: {len(config.arms)} arms x {len(config.seeds)} seeds, "
          f"{config.epochs} x {config.iters} iterations each; logs in {out / 'logs'}", flush=True)
    try:
        runner = Runner(config)
        results = runner.finished_runs() if args.collect else \
            runner.run_all(progress=lambda line: print(line, flush=True))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    if not results:
        print(f"bench_benefit: no finished run in {out} yet", file=sys.stderr)
        return 1
    record = study_record(config, results, "python scripts/bench_benefit.py " + shlex.join(argv), time.time() - t0)
    record_file = out / ("study_partial.json" if args.collect else "study.json")
    record_file.write_text(json.dumps(record, indent=1))
    print("\n" + markdown_table(record["aggregate"]))
    if args.plot is not None:
        png = plot(record["aggregate"], Path(args.plot) if args.plot else out / "bench_benefit.png",
                   f"{config.configuration}, {config.num_train} labelled cases, {config.epochs}x{config.iters} "
                   f"iterations, {max(a['n'] for a in record['aggregate']['arms'].values())} of "
                   f"{len(config.seeds)} seeds done")
        print(f"\nplot: {png}")
    print(f"results: {record_file} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
