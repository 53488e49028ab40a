"""The benefit study (scripts/bench_benefit.py, logic in benchmarks/benefit.py).

Unit tests use fabricated results and a fake command runner (no training); the trainer variants
are looked up the way nnUNetv2_train does (in benchmarks/study_trainers, the folder the study adds to
nnUNet_extTrainer); one `--quick` run goes end to end (slow).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import benefit as study
from benchmarks.benefit import Arm, Runner, StudyConfig, aggregate, markdown_table
from benchmarks.study_trainers import STUDY_TRAINERS_DIR, ext_trainer_value
from benchmarks.study_trainers import nnunet_mosmos_study_trainers as study_variants

REPO = Path(__file__).resolve().parents[1]


def fake_results():
    """Three seeds; 'mosmos_pretrained' beats scratch on seeds 0 and 2; plain is worst."""
    dice = {"plain": [0.50, 0.40, 0.45], "mosmos_scratch": [0.52, 0.44, 0.45],
            "mosmos_pretrained": [0.60, 0.43, 0.50]}
    return [{"arm": arm, "seed": seed, "mean_dice": d, "class_dice": {"1": d + 0.1, "2": d - 0.1}}
            for arm, values in dice.items() for seed, d in enumerate(values)]


# ------------------------------------------------------------------------------ aggregation
def test_aggregate_stats_and_paired_differences():
    agg = aggregate(fake_results())
    pre = agg["arms"]["mosmos_pretrained"]
    assert pre["n"] == 3 and pre["seeds"] == [0, 1, 2]
    assert pre["mean"] == pytest.approx(0.51) and pre["std"] == pytest.approx(0.085440037, abs=1e-6)
    assert (pre["min"], pre["max"]) == (0.43, 0.60)
    assert pre["class_dice"] == {"1": pytest.approx(0.61), "2": pytest.approx(0.41)}
    vs_scratch = agg["paired"]["vs_mosmos_scratch"]["mosmos_pretrained"]
    assert vs_scratch["mean"] == pytest.approx((0.08 - 0.01 + 0.05) / 3)
    assert vs_scratch["wins"] == 2 and vs_scratch["n"] == 3
    assert agg["paired"]["vs_plain"]["mosmos_scratch"]["wins"] == 2  # 0.45 vs 0.45 is not a win
    assert "mosmos_scratch" not in agg["paired"]["vs_mosmos_scratch"]  # no self-comparison


def test_aggregate_pairs_only_common_seeds_and_single_seed_has_zero_std():
    results = [r for r in fake_results() if not (r["arm"] == "plain" and r["seed"] > 0)]
    agg = aggregate(results)
    assert agg["arms"]["plain"]["std"] == 0.0 and agg["arms"]["plain"]["n"] == 1
    assert agg["paired"]["vs_plain"]["mosmos_pretrained"]["n"] == 1


def test_markdown_table_lists_every_arm_and_signed_differences():
    table = markdown_table(aggregate(fake_results()))
    assert "| mosmos_pretrained | 3 | 0.510 ± 0.085 | 0.430 – 0.600 |" in table
    assert "| paired difference vs mosmos_scratch |" in table
    assert "| mosmos_pretrained | +0.040 ± 0.046 |" in table and "| 2/3 |" in table


def test_plot_writes_a_png(tmp_path):
    from PIL import Image

    png = study.plot(aggregate(fake_results()), tmp_path / "p.png", "title")
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_dice_from_nnunet_summary(tmp_path):
    summary = {"foreground_mean": {"Dice": 0.7}, "mean": {"2": {"Dice": 0.6}, "1": {"Dice": 0.8}},
               "metric_per_case": [{}, {}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert study.dice_from_summary(tmp_path / "summary.json") == {
        "mean_dice": 0.7, "class_dice": {"1": 0.8, "2": 0.6}, "num_test_cases": 2}


# ------------------------------------------------------------------------------ arms + runner
def test_default_arms_are_the_issue_s_comparison():
    arms = {a.name: a for a in study.DEFAULT_ARMS}
    assert len(arms) == 6
    assert arms["plain"].pretrain is None and arms["mosmos_scratch"].pretrain is None
    assert sum(a.pretrain is not None for a in arms.values()) == 4
    assert [a.name for a in study.QUICK_ARMS] == ["plain", "mosmos_pretrained"]


class FakeRunner(Runner):
    """Records commands instead of running them; 'mosmos-pretrain ... -o X' creates X."""

    def __init__(self, config):
        super().__init__(config)
        self.commands = []

    def run(self, cmd, log_name, extra_env=None):
        cmd = [str(c) for c in cmd]
        self.commands.append((cmd, extra_env or {}))
        if cmd[0] == "mosmos-pretrain":
            Path(cmd[cmd.index("-o") + 1]).write_bytes(b"ckpt")
        return 0.0


def test_pretraining_is_cached_per_arguments_and_seed(tmp_path):
    runner = FakeRunner(StudyConfig(output=tmp_path))
    a, b = Arm("a", "nnUNetTrainerMOSMOS_study", []), Arm("b", "nnUNetTrainerMOSMOS_study_noAlign", [])
    other = Arm("c", "nnUNetTrainerMOSMOS_study", ["--tag-weight", "2"])
    assert runner.pretrained_checkpoint(a, 0) == runner.pretrained_checkpoint(b, 0)
    assert len(runner.commands) == 1  # b reused a's checkpoint
    assert runner.pretrained_checkpoint(a, 1) != runner.pretrained_checkpoint(a, 0)
    assert runner.pretrained_checkpoint(other, 0) != runner.pretrained_checkpoint(a, 0)
    assert len(runner.commands) == 3
    cmd = runner.commands[0][0]
    assert cmd[:5] == ["mosmos-pretrain", "--data", "synthetic", "--manifest",
                       str(tmp_path / "raw" / study.POOL / "pairs2d" / "manifest.csv")]
    assert cmd[cmd.index("-c") + 1] == "2d" and cmd[cmd.index("--seed") + 1] == "0"
    assert runner.commands[2][0][-6:-4] == ["--tag-weight", "2"]  # the arm's own args, then seed and -o


def test_3d_arms_pretrain_on_volumes_and_reports(tmp_path):
    runner = FakeRunner(StudyConfig(output=tmp_path))
    cmd = runner.pretrain_command(Arm("x", "nnUNetTrainerMOSMOS_study", [], configuration="3d_fullres"))
    assert cmd[1:4] == ["--data", "manifest", "--manifest"]
    assert cmd[4] == str(tmp_path / "raw" / study.POOL / "reports_manifest.csv")
    assert cmd[cmd.index("-c") + 1] == "3d_fullres"


def test_run_arm_passes_budget_seed_and_checkpoint_and_resumes(tmp_path, monkeypatch):
    config = StudyConfig(output=tmp_path, epochs=3, iters=7)
    runner = FakeRunner(config)
    fake_summary = {"foreground_mean": {"Dice": 0.5}, "mean": {"1": {"Dice": 0.5}}, "metric_per_case": [{}]}

    def fake_evaluate(labels, pred, model):
        Path(pred).mkdir(parents=True, exist_ok=True)
        (Path(pred) / "summary.json").write_text(json.dumps(fake_summary))
        return Path(pred) / "summary.json"

    monkeypatch.setattr(study, "evaluate", fake_evaluate)
    arm = Arm("mosmos_pretrained", "nnUNetTrainerMOSMOS_study", [])
    result = runner.run_arm(arm, 2)
    train_cmd, env = next(c for c in runner.commands if c[0][0] == "nnUNetv2_train")
    assert train_cmd[1:] == ["980", "2d", "all", "-tr", "nnUNetTrainerMOSMOS_study", "-p", "nnUNetPlans",
                             "-device", "cpu"]
    assert env["MOSMOS_STUDY_SEED"] == "2" and env["MOSMOS_STUDY_EPOCHS"] == "3"
    assert runner.env["MOSMOS_STUDY_THREADS"] == "1"  # nnUNetv2_train -device cpu would take cpu_count()
    predict_env = next(c[1] for c in runner.commands if c[0][0] == "nnUNetv2_predict")
    assert predict_env["nnUNet_def_n_proc"] == "1"  # caps nnUNetv2_predict's forward pass at one thread
    # an arm with its own budget (the pilot) overrides the study's
    runner.run_arm(Arm("pilot", "nnUNetTrainer_mosmosStudy", budget=(5, 11)), 2)
    pilot_env = [c[1] for c in runner.commands if c[0][0] == "nnUNetv2_train"][-1]
    assert (pilot_env["MOSMOS_STUDY_EPOCHS"], pilot_env["MOSMOS_STUDY_ITERS"]) == ("5", "11")
    assert env["MOSMOS_STUDY_ITERS"] == "7" and Path(env["MOSMOS_PRETRAINED"]).is_file()
    assert env["nnUNet_results"] == str(tmp_path / "runs" / "mosmos_pretrained" / "seed2" / "results")
    assert result["mean_dice"] == 0.5 and result["seed"] == 2
    n = len(runner.commands)
    assert runner.run_arm(arm, 2) == result and len(runner.commands) == n  # finished: not redone
    runner.run_arm(Arm("plain", "nnUNetTrainer_mosmosStudy"), 2)
    plain_env = next(c[1] for c in runner.commands[n:] if c[0][0] == "nnUNetv2_train")
    assert "MOSMOS_PRETRAINED" not in plain_env and "MOSMOS_PRETRAINED" not in runner.env


def test_resuming_with_other_settings_is_refused(tmp_path):
    Runner(StudyConfig(output=tmp_path, epochs=3)).check_config()
    Runner(StudyConfig(output=tmp_path, epochs=3, seeds=(5,))).check_config()  # more seeds: fine
    with pytest.raises(RuntimeError, match="other settings.*same settings to resume, or pass a new -o"):
        Runner(StudyConfig(output=tmp_path, epochs=4)).check_config()


def test_a_setting_added_later_matches_an_older_study_at_its_default(tmp_path):
    saved = tmp_path / "study_config.json"
    Runner(StudyConfig(output=tmp_path)).check_config()
    older = json.loads(saved.read_text())
    del older["val_iters"]  # as if the setting did not exist when the study was written
    saved.write_text(json.dumps(older))
    Runner(StudyConfig(output=tmp_path)).check_config()  # the default: the same study
    saved.write_text(json.dumps(older))
    with pytest.raises(RuntimeError, match="other settings"):
        Runner(StudyConfig(output=tmp_path, val_iters=7)).check_config()


def test_cli_rejects_unknown_arm(capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["--arms", "plain", "nope"])
    assert "unknown arm(s) ['nope']" in capsys.readouterr().err


# ------------------------------------------------------------------------------ trainer variants
@pytest.mark.parametrize("name, weight, pretrained, base", [
    ("nnUNetTrainer_mosmosStudy", None, None, "nnUNetTrainer"),
    ("nnUNetTrainerMOSMOS_study", 0.5, True, "nnUNetTrainerMOSMOS"),
    ("nnUNetTrainerMOSMOS_study_scratch", 0.5, False, "nnUNetTrainerMOSMOS"),
    ("nnUNetTrainerMOSMOS_study_lambda0p1", 0.1, True, "nnUNetTrainerMOSMOS"),
    ("nnUNetTrainerMOSMOS_study_lambda1p0", 1.0, True, "nnUNetTrainerMOSMOS"),
    ("nnUNetTrainerMOSMOS_study_noAlign", 0.0, True, "nnUNetTrainerMOSMOS"),
])
def test_variants_resolve_through_nnunet_class_lookup(name, weight, pretrained, base, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_value(None))
    cls = recursive_find_trainer_class_by_name(name)  # what `nnUNetv2_train ... -tr NAME` calls
    mro = [c.__name__ for c in cls.__mro__]
    assert cls.__name__ == name and base in mro
    # nnU-Net imports the folder's module as a top-level name: a class of its own, not study_variants'
    assert cls.__module__ == "nnunet_mosmos_study_trainers" and "StudyBudgetMixin" in mro
    if weight is not None:
        assert cls.aligning_loss_weight == weight and cls.use_pretrained is pretrained
    assert name in {a.trainer for a in study.DEFAULT_ARMS}


def test_study_folder_is_appended_after_the_shipped_one_and_the_shim_hides_the_study_trainers(monkeypatch):
    import nnunet_mosmos
    import nnunet_mosmos.training
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    assert ext_trainer_value("/mine").split(os.pathsep) == ["/mine", nnunet_mosmos.EXT_DIR, STUDY_TRAINERS_DIR]
    assert ext_trainer_value(ext_trainer_value(None)) == ext_trainer_value(None)  # appended once
    assert not [n for n in nnunet_mosmos.training.__all__ if "tudy" in n]
    monkeypatch.setenv("nnUNet_extTrainer", nnunet_mosmos.ext_trainer_value(None))  # users' value
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        recursive_find_trainer_class_by_name("nnUNetTrainerMOSMOS_study")
    monkeypatch.delenv("nnUNet_extTrainer")
    assert Runner(StudyConfig(output=Path("x"))).env["nnUNet_extTrainer"] == ext_trainer_value(None)


def test_schedule_and_seed_from_environment():
    env = {"MOSMOS_STUDY_EPOCHS": "3", "MOSMOS_STUDY_ITERS": "11", "MOSMOS_STUDY_SEED": "0"}
    assert study_variants.study_schedule(env) == {"num_epochs": 3, "num_iterations_per_epoch": 11}
    assert study_variants.study_seed(env) == 0 and study_variants.study_seed({}) is None
    with pytest.raises(ValueError, match=r"MOSMOS_STUDY_ITERS='0' must be an integer >= 1; fix or unset"):
        study_variants.study_schedule({"MOSMOS_STUDY_ITERS": "0"})
    with pytest.raises(ValueError, match="MOSMOS_STUDY_SEED='x'"):
        study_variants.study_seed({"MOSMOS_STUDY_SEED": "x"})


def _plain_twin_first_weights(tmp_path, monkeypatch, seed: str):
    from benchmarks.common import build_trainer, plans_like, plans_like_configuration, workspace_env

    monkeypatch.setenv("MOSMOS_STUDY_SEED", seed)
    monkeypatch.setenv("MOSMOS_STUDY_EPOCHS", "3")
    monkeypatch.setenv("MOSMOS_STUDY_ITERS", "5")
    monkeypatch.setenv("MOSMOS_STUDY_VAL_ITERS", "1")
    plans, dataset_json = plans_like({"2d": plans_like_configuration([32, 32], max_stages=3)})
    with workspace_env(tmp_path / seed, None, False, None):
        trainer = build_trainer(study_variants.nnUNetTrainer_mosmosStudy, plans, "2d", dataset_json,
                                torch.device("cpu"))
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 5, 1)
    return next(trainer.network.parameters()).detach().clone()


def test_seed_fixes_the_initial_weights(tmp_path, monkeypatch):
    a = _plain_twin_first_weights(tmp_path, monkeypatch, "1")
    b = _plain_twin_first_weights(tmp_path, monkeypatch, "1")
    c = _plain_twin_first_weights(tmp_path, monkeypatch, "2")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_study_trainer_writes_only_the_final_checkpoint_and_plots_after_the_last_epoch(tmp_path, monkeypatch):
    """The per-epoch checkpoint_best/latest writes and progress plots cost ~10 % of a CPU study run;
    the study reads only checkpoint_final.pth, and the last epoch's plot shows every epoch."""
    from benchmarks.common import build_trainer, plans_like, plans_like_configuration, workspace_env

    monkeypatch.setenv("MOSMOS_STUDY_EPOCHS", "3")
    plans, dataset_json = plans_like({"2d": plans_like_configuration([32, 32], max_stages=3)})
    with workspace_env(tmp_path, None, False, None):
        trainer = build_trainer(study_variants.nnUNetTrainer_mosmosStudy, plans, "2d", dataset_json,
                                torch.device("cpu"))
        out = Path(trainer.output_folder)
        out.mkdir(parents=True, exist_ok=True)
        for epoch in range(trainer.num_epochs):
            for key, value in (("epoch_start_timestamps", 0.0), ("train_losses", 1.0 - epoch / 10),
                               ("val_losses", 1.0), ("mean_fg_dice", 0.1 * epoch),
                               ("dice_per_class_or_region", [0.1 * epoch])):
                trainer.logger.log(key, value, epoch)
            trainer.on_epoch_end()  # a better EMA Dice every epoch: nnU-Net would write checkpoint_best
            assert (out / "progress.png").is_file() == (epoch == trainer.num_epochs - 1)
        assert "plot_progress_png" not in vars(trainer.logger)  # the method is back after each epoch
        trainer.save_checkpoint(str(out / "checkpoint_final.pth"))
    assert sorted(p.name for p in out.glob("*.pth")) == ["checkpoint_final.pth"]


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path, tiny_text_encoder):
    out = tmp_path / "study"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_benefit.py"), "--quick", "-o", str(out),
           "--text-encoder", str(tiny_text_encoder), "--plot"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| arm | seeds | mean Dice ± std |" in proc.stdout
    record = json.loads((out / "study.json").read_text())
    assert [(r["arm"], r["seed"]) for r in record["runs"]] == [("plain", 0), ("mosmos_pretrained", 0)]
    for r in record["runs"]:
        assert 0.0 <= r["mean_dice"] <= 1.0 and len(r["class_dice"]) == 7 and r["num_test_cases"] == 1
    assert record["runs"][0]["pretrained"] is None and Path(record["runs"][1]["pretrained"]).is_file()
    assert set(record["aggregate"]["arms"]) == {"plain", "mosmos_pretrained"}
    assert "mosmos_pretrained" in record["aggregate"]["paired"]["vs_plain"]
    log = next((out / "runs/mosmos_pretrained/seed0/results").rglob("training_log_*.txt")).read_text()
    assert "MOSMOS: initialised from" in log and "'num_iterations_per_epoch': 3" in log
    fold = next((out / "runs/mosmos_pretrained/seed0/results").rglob("fold_all"))
    assert {"checkpoint_final.pth", "progress.png", "progress_mosmos.png"} <= {p.name for p in fold.iterdir()}
    assert not list(fold.glob("checkpoint_best.pth"))  # the study predicts from checkpoint_final only
    assert (out / "bench_benefit.png").stat().st_size > 1000
    # re-running resumes: no command runs again
    logs = {p: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "study.json").read_text())["runs"] == record["runs"]
    assert {p: p.stat().st_mtime_ns for p in (out / "logs").iterdir()} == logs


def test_collect_reports_finished_runs_only(tmp_path, capsys):
    config = StudyConfig(output=tmp_path, arms=study.QUICK_ARMS, seeds=(0, 1))
    for r in fake_results():
        if r["arm"] in ("plain", "mosmos_pretrained") and r["seed"] < 2 and (r["arm"], r["seed"]) != ("plain", 1):
            folder = Runner(config).run_dir(Arm(r["arm"], ""), r["seed"])
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps(r))
    assert [(r["arm"], r["seed"]) for r in Runner(config).finished_runs()] == [
        ("plain", 0), ("mosmos_pretrained", 0), ("mosmos_pretrained", 1)]
    assert study.main(["--collect", "-o", str(tmp_path), "--arms", "plain", "mosmos_pretrained",
                       "--seeds", "0", "1"]) == 0
    assert "| mosmos_pretrained | 2 | 0.515 ± 0.120 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "study_partial.json").read_text())["aggregate"]["arms"]["plain"]["n"] == 1
