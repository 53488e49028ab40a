"""The benefit study on real data (issue #10): MedPix reports -> CHAOS MR with 1 or 2 labelled volumes.

The paper's setting in miniature, all real and all through the real console commands:

    MedPix torso image-caption(+findings) pairs --mosmos-pretrain --data manifest--> checkpoint(s)
    CHAOS T2-SPIR, 1 or 2 labelled volumes --nnUNetv2_train 2d--> model --nnUNetv2_predict-->
    nnU-Net's evaluation on 14 CHAOS volumes that no arm ever trains on (benchmarks/real_data.py)

It is :mod:`benchmarks.benefit`'s Runner with other data: same arms-as-data, seeded budgets through
the study trainers, resumable runs, nnU-Net's own evaluation, aggregate/table/plot. What differs:

* **Data.** Two nnU-Net datasets, ``Dataset961_CHAOSL1`` (case 1) and ``Dataset962_CHAOSL2`` (cases
  1, 2), with the same test cases and the same plans: nnU-Net plans 962 at ``--spacing`` in-plane
  (``nnUNetv2_plan_experiment -overwrite_target_spacing``), the batch size is set in a custom plans
  file (nnU-Net's way), and the plans move to 961 (``nnUNetv2_move_plans_between_datasets``). One
  architecture for both label counts, so both share the pre-training checkpoints.
* **Pre-training** reads the MedPix manifest and builds its encoder from 962's plans; once per
  (command, seed) as in benefit.py, so a study seed k fine-tunes from pre-training seed k.
* **Folders.** One study folder holds the data and the pre-training cache; the runs of each label
  count live in ``L<n>/`` with their own settings file, so the two studies can run one after the
  other into the same folder and are timed separately.
* **Pilot** (``--pilot``): the plain arm alone at several budgets on 2 labels, scored on the 4 pilot
  cases (never the test cases), to choose resolution, batch and iterations.

    python -m benchmarks.chaos -o /work/studies/chaos --labelled 2 --jobs 2 --plot
    python -m benchmarks.chaos -o /work/studies/chaos --pilot --budgets 6x25 12x25 18x25 --jobs 2
    python -m benchmarks.chaos --quick -o /tmp/chaos_quick      # CI: output shape only
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.benefit import Arm, Runner, StudyConfig, markdown_table, plot, study_record
from benchmarks.real_data import (CHAOS_SLICE_MM, SPLIT, TORSO_REGIONS, write_chaos_dataset, write_chaos_slice_manifest,
                                  write_medpix_manifest)

DATASETS = {1: (961, "CHAOSL1"), 2: (962, "CHAOSL2")}
PLAN_SOURCE = 2  # the dataset nnU-Net plans (and pre-training builds its encoder from)

PLAIN, SCRATCH = "plain", "mosmos_scratch"
#: --pretrain-source -> the manifest file in the study folder (its path is part of the cache key)
PRETRAIN_MANIFESTS = {"medpix": "medpix_torso.jsonl", "chaos": "chaos_slices.jsonl"}
#: the full arms' pre-training, named explicitly since `mosmos-pretrain` writes lean decoders by default
#: (the study's verdict); the published study ran before that change, with `[]` meaning the same
FULL = ["--tag-decoder", "full"]
ARMS = (
    Arm(PLAIN, "nnUNetTrainer_mosmosStudy"),
    Arm(SCRATCH, "nnUNetTrainerMOSMOS_study_scratch"),
    Arm("mosmos_pretrained", "nnUNetTrainerMOSMOS_study", FULL),
    Arm("mosmos_pretrained_noAlign", "nnUNetTrainerMOSMOS_study_noAlign", FULL),
    Arm("encoder_pretrained", "nnUNetTrainerMOSMOSEncoder_study", FULL),
    Arm("lean_pretrained", "nnUNetTrainerMOSMOS_study_lean", ["--tag-decoder", "lean"]),
)
LAMBDA_ARMS = (
    Arm("mosmos_pretrained_lambda0.1", "nnUNetTrainerMOSMOS_study_lambda0p1", FULL),
    Arm("mosmos_pretrained_lambda1.0", "nnUNetTrainerMOSMOS_study_lambda1p0", FULL),
)
ALL_ARMS = {a.name: a for a in ARMS + LAMBDA_ARMS}
#: paired differences are reported against these arms (the full pre-trained branch: lean, no-align, lambda)
REFERENCES = (PLAIN, SCRATCH, "mosmos_pretrained")


@dataclass
class ChaosConfig(StudyConfig):
    labelled: int = 2
    spacing: float = 4.0          # in-plane mm of the 2d configuration (CHAOS is 1.25 mm): the pilot's choice
    batch_size: int = 4           # 2d batch (nnU-Net's 5 %-of-data cap gives 3)
    epochs: int = 32              # x iters = 800 iterations: the pilot's choice (6 arms x 3 seeds took 82-84 min)
    iters: int = 25
    val_iters: int = 1
    test_cases: tuple = SPLIT["test"]
    pilot: bool = False           # score the pilot cases (choose the budget), never the test cases
    pilot_cases: tuple = SPLIT["pilot"]
    regions: tuple = TORSO_REGIONS
    with_findings: bool = True
    chaos_root: str | None = None   # None: ../shared/data/chaos_mr
    medpix_root: str | None = None  # None: ../shared/data/medpix_train
    pretrain_args: list = field(default_factory=lambda: ["--max-steps", "300", "--batch-size", "32",
                                                         "--eval-every", "100"])
    #: what the pre-trained arms pre-train on: "medpix" (torso image-caption pairs) or "chaos"
    #: (labelled + pilot CHAOS slices with synthetic reports: change 2, the target modality)
    pretrain_source: str = "medpix"


class ChaosRunner(Runner):
    def __init__(self, config: ChaosConfig):
        super().__init__(config)
        self.dataset_id, name = DATASETS[config.labelled]
        self.dataset = f"Dataset{self.dataset_id}_{name}"
        self.spacing_plans = f"nnUNetPlans_{config.spacing:g}mm"
        self.plans = f"{self.spacing_plans}_b{config.batch_size}"
        self.label_dir = self.out / (f"L{config.labelled}_pilot_{self.plans}" if config.pilot else f"L{config.labelled}")
        self.config_file = f"{self.label_dir.name}/study_config.json"
        self.manifest = self.out / PRETRAIN_MANIFESTS[config.pretrain_source]

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.label_dir / "runs" / arm.name / f"seed{seed}"

    def test_folders(self) -> tuple[Path, Path]:
        group = "Val" if self.c.pilot else "Ts"
        return self.raw / self.dataset / f"images{group}", self.raw / self.dataset / f"labels{group}"

    # --- data: both label counts, one plans, the MedPix manifest ------------------------------
    def prepare_data(self) -> None:
        c = self.c
        for n, (dataset_id, name) in DATASETS.items():
            write_chaos_dataset(self.raw, dataset_id, name, SPLIT["labelled"][:n], c.test_cases, c.pilot_cases,
                                c.chaos_root and Path(c.chaos_root))
        if any(a.pretrain is not None for a in c.arms) and c.pretrain_source == "chaos":
            write_chaos_slice_manifest(self.manifest, src=c.chaos_root and Path(c.chaos_root))
        elif any(a.pretrain is not None for a in c.arms):
            write_medpix_manifest(self.manifest, c.medpix_root and Path(c.medpix_root), c.regions, c.with_findings)
        source_id, source_name = DATASETS[PLAN_SOURCE]
        source = self.pre / f"Dataset{source_id}_{source_name}"
        if not (source / f"{self.spacing_plans}.json").is_file():
            ids = [str(i) for i, _ in DATASETS.values()]
            self.run(["nnUNetv2_extract_fingerprint", "-d", *ids, "-np", 2, "--verify_dataset_integrity"], "data")
            self.run(["nnUNetv2_plan_experiment", "-d", source_id, "-overwrite_target_spacing",
                      CHAOS_SLICE_MM, c.spacing, c.spacing, "-overwrite_plans_name", self.spacing_plans], "data")
        if not (source / f"{self.plans}.json").is_file():
            self.write_batch_plans(source / f"{self.spacing_plans}.json", source / f"{self.plans}.json")
        for dataset_id, name in DATASETS.values():
            target = self.pre / f"Dataset{dataset_id}_{name}"
            if dataset_id != source_id and not (target / f"{self.plans}.json").is_file():
                self.run(["nnUNetv2_move_plans_between_datasets", "-s", source_id, "-t", dataset_id,
                          "-sp", self.plans, "-tp", self.plans], "data")
            if not (target / "dataset.json").is_file():  # as nnUNetv2_plan_experiment does; preprocessing reads it
                (target / "dataset.json").write_text((self.raw / f"Dataset{dataset_id}_{name}" / "dataset.json").read_text())
        data_id = json.loads((source / f"{self.plans}.json").read_text())["configurations"]["2d"]["data_identifier"]
        todo = [str(i) for i, n in DATASETS.values() if not (self.pre / f"Dataset{i}_{n}" / data_id).is_dir()]
        if todo:
            self.run(["nnUNetv2_preprocess", "-d", *todo, "-plans_name", self.plans, "-c", "2d", "-np", 2], "data")

    def write_batch_plans(self, src: Path, dst: Path) -> None:
        """A copy of nnU-Net's plans with another 2d batch size, same data identifier (same
        preprocessed data): the documented way to change what the planner chose."""
        plans = json.loads(src.read_text())
        plans["plans_name"] = dst.stem
        plans["configurations"]["2d"]["batch_size"] = int(self.c.batch_size)
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_text(json.dumps(plans, indent=1))
        tmp.rename(dst)

    def pretrain_command(self, arm: Arm) -> list[str]:
        c = self.c
        source_id, _ = DATASETS[PLAN_SOURCE]
        return ["mosmos-pretrain", "--data", "manifest", "--manifest", str(self.manifest), "-d", str(source_id),
                "-c", "2d", "-p", self.plans, *map(str, c.pretrain_args), "--device", c.device,
                "--num-workers", "0", "--no-progress-bar", *map(str, arm.pretrain or [])]


def parse_budget(text: str) -> tuple[int, int]:
    try:
        epochs, iters = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a budget is EPOCHSxITERS (e.g. 12x25), got {text!r}") from None
    if epochs < 1 or iters < 1:
        raise argparse.ArgumentTypeError(f"a budget needs epochs and iterations >= 1, got {text!r}")
    return epochs, iters


QUICK = dict(arms=(ARMS[0], ARMS[4]), seeds=(0,), test_cases=SPLIT["test"][:1], pilot_cases=SPLIT["pilot"][:1],
             epochs=1, iters=2, val_iters=1, batch_size=2, spacing=6.0,
             pretrain_args=["--max-steps", "2", "--batch-size", "4"])


def parse_args(argv=None):
    d = ChaosConfig(output=Path("."))
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="study folder (re-run to resume; both label counts share it)")
    p.add_argument("--labelled", type=int, choices=sorted(DATASETS), default=d.labelled, help="labelled CHAOS volumes")
    p.add_argument("--arms", nargs="+", metavar="NAME", help=f"default: {' '.join(a.name for a in ARMS)}; "
                   f"also {' '.join(a.name for a in LAMBDA_ARMS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--iters", type=int, default=d.iters, help="training iterations per epoch")
    p.add_argument("--val-iters", type=int, default=d.val_iters, help="pseudo-Dice iterations per epoch")
    p.add_argument("--spacing", type=float, default=d.spacing, help="in-plane spacing of the 2d plans (mm)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="2d batch size (custom plans file)")
    p.add_argument("--pretrain-args", default=shlex.join(d.pretrain_args),
                   help="mosmos-pretrain arguments shared by the pre-trained arms (one quoted string)")
    p.add_argument("--pretrain-source", choices=sorted(PRETRAIN_MANIFESTS), default=d.pretrain_source,
                   help="pre-training pairs: MedPix torso captions, or the labelled + pilot CHAOS slices with "
                        "synthetic reports naming their organs (the target modality)")
    p.add_argument("--pilot", action="store_true", help="the plain arm at each --budgets, scored on the pilot cases")
    p.add_argument("--budgets", nargs="+", type=parse_budget, default=[], metavar="EPOCHSxITERS")
    p.add_argument("--quick", action="store_true", help="CI size: 2 arms, 1 seed, 2 iterations, 1 test case")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--text-encoder")
    p.add_argument("--collect", action="store_true", help="run nothing: report the finished runs")
    p.add_argument("--pretrain-only", action="store_true", help="prepare the data and run the arms' pre-training "
                   "(every seed), nothing else: pre-training is shared by both label counts and timed apart")
    p.add_argument("--report", nargs="?", const="", metavar="PNG", help="run nothing: tables of both label "
                   "counts (markdown) and, with a file name, the figure")
    p.add_argument("--chaos-root", help="CHAOS folder (image_N/label_N.nii.gz; default ../shared/data/chaos_mr)")
    p.add_argument("--medpix-root", help="MedPix train folder (default ../shared/data/medpix_train)")
    p.add_argument("--plot", nargs="?", const="", metavar="PNG")
    args = p.parse_args(argv)
    if args.arms and set(args.arms) - set(ALL_ARMS):
        p.error(f"unknown arm(s) {sorted(set(args.arms) - set(ALL_ARMS))}; choose from {sorted(ALL_ARMS)}")
    arms = tuple(ALL_ARMS[n] for n in args.arms) if args.arms else ARMS
    if args.pilot:
        if not args.budgets:
            p.error("--pilot needs --budgets (e.g. 6x25 12x25 18x25)")
        arms = tuple(Arm(f"{PLAIN}_{e * i}it", ARMS[0].trainer, budget=(e, i)) for e, i in args.budgets)
    config = ChaosConfig(output=Path(args.output), arms=arms, seeds=tuple(args.seeds), labelled=args.labelled,
                         epochs=args.epochs, iters=args.iters, val_iters=args.val_iters, spacing=args.spacing,
                         batch_size=args.batch_size, pilot=args.pilot, pretrain_args=shlex.split(args.pretrain_args),
                         device=args.device, jobs=args.jobs, text_encoder=args.text_encoder,
                         chaos_root=args.chaos_root, medpix_root=args.medpix_root,
                         pretrain_source=args.pretrain_source)
    if args.pilot:
        config.labelled, config.seeds = 2, (0,)
    if args.quick:
        for key, value in QUICK.items():
            setattr(config, key, value)
    return args, config


ORGANS = {"1": "liver", "2": "right kidney", "3": "left kidney", "4": "spleen"}


def report_tables(records: dict[int, dict]) -> str:
    """Markdown for docs/benchmarks.md from the ``L<n>/study.json`` records: per arm and label count the
    mean foreground Dice and per-organ Dice (mean ± std over seeds) and the mean time per run, then
    the paired (same seed) differences against each reference arm."""
    lines = ["| labelled | arm | seeds | mean Dice ± std | " + " | ".join(ORGANS.values()) + " | s / run |",
             "|---:|---|---:|---:|" + "---:|" * len(ORGANS) + "---:|"]
    for n, rec in sorted(records.items()):
        times = {}
        for r in rec["runs"]:
            times.setdefault(r["arm"], []).append(r["total_s"])
        for name, a in rec["aggregate"]["arms"].items():
            organs = " | ".join(f"{a['class_dice'][k]:.3f} ± {a['class_dice_std'][k]:.3f}" for k in ORGANS)
            lines.append(f"| {n} | {name} | {a['n']} | {a['mean']:.3f} ± {a['std']:.3f} | {organs} | "
                         f"{np.mean(times[name]):.0f} |")
    for n, rec in sorted(records.items()):
        for ref, rows in rec["aggregate"]["paired"].items():
            lines += ["", f"{n} labelled, paired difference {ref.replace('_', ' ', 1)} (same seed): mean ± std, "
                      "min – max, seeds better", "",
                      "| arm | Δ mean Dice | min – max | seeds better |", "|---|---:|---:|---:|"]
            for name, d in rows.items():
                lines.append(f"| {name} | {d['mean']:+.3f} ± {d['std']:.3f} | {d['min']:+.3f} – {d['max']:+.3f} "
                             f"| {d['wins']}/{d['n']} |")
    return "\n".join(lines)


def report_figure(records: dict[int, dict], path: Path) -> Path:
    """One panel per label count: a bar per arm (mean over seeds, ± std) with each seed as a point."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(6.5 * len(records), 4.6), squeeze=False, sharey=True)
    for ax, (n, rec) in zip(axes[0], sorted(records.items())):
        arms = rec["aggregate"]["arms"]
        for i, (name, a) in enumerate(arms.items()):
            ax.bar(i, a["mean"], yerr=a["std"], color="C0" if "pretrained" in name else "0.7", alpha=0.8,
                   capsize=4, width=0.7)
            jitter = np.linspace(-0.18, 0.18, len(a["dice"])) if len(a["dice"]) > 1 else [0.0]
            ax.scatter(i + np.asarray(jitter), a["dice"], s=16, color="k", zorder=3)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([name.replace("_", "\n") for name in arms], fontsize=7)
        ax.set_title(f"CHAOS MR, {n} labelled volume(s): {len(rec['config']['test_cases'])} test volumes, "
                     f"{len(rec['config']['seeds'])} seeds", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("mean foreground Dice (nnU-Net evaluation)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def report(output: Path, figure: Path | None) -> int:
    records = {n: json.loads((output / f"L{n}" / "study.json").read_text())
               for n in DATASETS if (output / f"L{n}" / "study.json").is_file()}
    if not records:
        print(f"chaos: no L<n>/study.json in {output} yet", file=sys.stderr)
        return 1
    print(report_tables(records))
    if figure:
        print(f"\nfigure: {report_figure(records, figure)}")
    return 0


def pretrain_all(runner: ChaosRunner, t0: float) -> int:
    """Every (pre-training command, seed) of the arms, ``jobs`` at a time; prints each checkpoint."""
    from concurrent.futures import ThreadPoolExecutor

    runner.check_config()
    runner.prepare_data()
    jobs = {(repr(runner.pretrain_command(a)), seed): (a, seed)
            for seed in runner.c.seeds for a in runner.c.arms if a.pretrain is not None}
    with ThreadPoolExecutor(max_workers=max(1, runner.c.jobs)) as pool:
        for ckpt in pool.map(lambda job: runner.pretrained_checkpoint(*job), jobs.values()):
            print(f"  {ckpt} ({time.time() - t0:.0f} s)", flush=True)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, config = parse_args(argv)
    if args.report is not None:
        return report(Path(args.output), Path(args.report) if args.report else None)
    t0 = time.time()
    runner = ChaosRunner(config)
    print(f"CHAOS study in {runner.out}: {len(config.arms)} arm(s) x {len(config.seeds)} seed(s), "
          f"{config.labelled} labelled volume(s), plans {runner.plans}; logs in {runner.logs}", flush=True)
    try:
        if args.pretrain_only:
            return pretrain_all(runner, t0)
        results = runner.finished_runs() if args.collect else \
            runner.run_all(progress=lambda line: print(line, flush=True))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    if not results:
        print(f"chaos: no finished run in {runner.label_dir} yet", file=sys.stderr)
        return 1
    record = study_record(config, results, "python -m benchmarks.chaos " + shlex.join(argv), time.time() - t0,
                          references=REFERENCES)
    record["scored_on"] = [str(p) for p in runner.test_folders()]
    out = runner.label_dir / ("study_partial.json" if args.collect else "study.json")
    out.write_text(json.dumps(record, indent=1, default=str))
    print("\n" + markdown_table(record["aggregate"]))
    if args.plot is not None:
        png = plot(record["aggregate"], Path(args.plot) if args.plot else runner.label_dir / "chaos_benefit.png",
                   f"CHAOS MR 2d, {config.labelled} labelled volume(s), {config.epochs}x{config.iters} iterations, "
                   f"{len(config.test_cases)} test volumes")
        print(f"\nplot: {png}")
    print(f"results: {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
