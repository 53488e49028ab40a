"""End to end through the UNMODIFIED nnU-Net commands, in subprocesses, on CPU.

synthetic phantoms -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train -tr nnUNetTrainerMOSMOS_tiny
(2d and 3d_fullres) -> nnUNetv2_predict / nnUNetv2_predict_from_modelfolder -> nnUNetv2_evaluate_folder,
plus `--c` resume, a user's own trainer subclass in their own folder, and the real TotalSegmentator CT.
Discovery goes through `export nnUNet_extTrainer=$(mosmos-ext-path)` exactly as README says.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_mosmos.demo import env_for

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TS_DATA = Path(__file__).parent / "data" / "totalsegmentator"
USER_TRAINER = '''
from nnunet_mosmos.training import nnUNetTrainerMOSMOS_tiny


class nnUNetTrainerMOSMOS_lr0(nnUNetTrainerMOSMOS_tiny):
    """A lab's own variant in its own folder: learning rate 0 (the final weights are the initial ones, so
    loading can be checked exactly) and its own lambda (a class attribute nnU-Net style)."""
    schedule = {**nnUNetTrainerMOSMOS_tiny.schedule, "initial_lr": 0.0}
    aligning_loss_weight = 0.3
'''


def run(cmd, env, timeout=900):
    env = env_for(cmd[0], env)
    proc = subprocess.run([str(BIN / cmd[0]), *map(str, cmd[1:])], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory, tiny_text_encoder):
    root = tmp_path_factory.mktemp("nnunet")
    user_dir = root / "my_trainers"
    user_dir.mkdir()
    (user_dir / "my_lab_trainers.py").write_text(USER_TRAINER)
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "results"), nnUNet_n_proc_DA="0",
               nnUNet_compile="0", MOSMOS_TEXT_ENCODER=str(tiny_text_encoder), HF_HUB_OFFLINE="1",
               nnUNet_extTrainer=str(user_dir))  # another folder is already there
    env["nnUNet_extTrainer"] = run(["mosmos-ext-path"], env).stdout.strip()
    assert env["nnUNet_extTrainer"].startswith(str(user_dir) + os.pathsep)
    return env, root


@pytest.fixture(scope="module")
def phantom(nnunet_env):
    env, root = nnunet_env
    run(["mosmos-synthetic", "-o", root / "raw", "-d", 901, "--num-train", 4, "--num-test", 2,
         "--shape", 16, 48, 48, "--seed", 0], env)
    # one process: on the 2 CI cores a second worker only adds its start-up (torch + nnU-Net imports);
    # nnU-Net's dataset check on these phantoms is test_synthetic's job
    run(["nnUNetv2_plan_and_preprocess", "-d", 901, "-c", "2d", "3d_fullres", "-np", 1], env)
    pre = root / "pre" / "Dataset901_MOSMOSPhantom"
    cases = sorted(p.name[:-len(".nii.gz")] for p in (root / "raw/Dataset901_MOSMOSPhantom/labelsTr").iterdir())
    (pre / "splits_final.json").write_text(json.dumps([{"train": cases[:3], "val": cases[3:]}]))
    return env, root


def _model_dir(root, trainer, config, dataset="Dataset901_MOSMOSPhantom"):
    return root / "results" / dataset / f"{trainer}__nnUNetPlans__{config}"


@pytest.mark.parametrize("config", ["2d", "3d_fullres"])
def test_train_predict_evaluate(phantom, config, tmp_path):
    env, root = phantom
    run(["nnUNetv2_train", 901, config, 0, "-tr", "nnUNetTrainerMOSMOS_tiny", "-device", "cpu"], env)
    model = _model_dir(root, "nnUNetTrainerMOSMOS_tiny", config)
    fold = model / "fold_0"
    for name in ("checkpoint_final.pth", "progress.png", "progress_mosmos.png", "validation/summary.json"):
        assert (fold / name).is_file(), name
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "train_align_loss" in log and "MOSMOS: text encoder" in log

    # the plans in the model folder are enough to rebuild the network; state dict loads strictly
    plans = json.loads((model / "plans.json").read_text())
    block = plans["configurations"][config]["mosmos_tag_branch"]
    assert block["prompts"] == ["liver", "spleen", "right kidney", "left kidney", "stomach", "aorta",
                                "gallbladder"]
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    emb = ckpt["network_weights"]["tag_branch.tag_embeddings"]
    assert emb.shape == (7, 32) and emb.abs().sum() > 0  # cached from the text encoder
    assert set(ckpt["logging"]) >= {"train_seg_losses", "train_align_losses"}

    out = tmp_path / "pred"
    raw = root / "raw" / "Dataset901_MOSMOSPhantom"
    run(["nnUNetv2_predict", "-i", raw / "imagesTs", "-o", out, "-d", 901, "-c", config, "-f", 0,
         "-tr", "nnUNetTrainerMOSMOS_tiny", "-device", "cpu", "-npp", 1, "-nps", 1], env)
    assert len(list(out.glob("*.nii.gz"))) == 2
    run(["nnUNetv2_evaluate_folder", raw / "labelsTs", out, "-djfile", out / "dataset.json",
         "-pfile", out / "plans.json"], env)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mean"]) == {str(i) for i in range(1, 8)}

    # pixel-tag attention maps: one NIfTI per class, exactly the input's geometry, plus a figure
    import SimpleITK as sitk
    from PIL import Image

    att = tmp_path / "attention"
    run(["mosmos-attention", "-m", model, "-i", raw / "imagesTs", "-o", att], env)
    image = sitk.ReadImage(str(raw / "imagesTs" / "phantom_004_0000.nii.gz"))
    for prompt in block["prompts"]:
        m = sitk.ReadImage(str(att / f"phantom_004_attention_{prompt.replace(' ', '_')}.nii.gz"))
        assert m.GetSize() == image.GetSize() and m.GetSpacing() == image.GetSpacing()
        assert m.GetOrigin() == image.GetOrigin() and m.GetDirection() == image.GetDirection()
        values = sitk.GetArrayFromImage(m)
        assert values.min() >= 0 and 0.1 < values.mean() < 10  # mean-1 rescaled attention
    with Image.open(att / "phantom_004_attention.png") as png:
        assert png.size[0] > 200 and png.size[1] > 200


def test_resume_with_c_and_predict_from_modelfolder(phantom, tmp_path):
    env, root = phantom
    run(["nnUNetv2_train", 901, "2d", 0, "-tr", "nnUNetTrainerMOSMOS_tiny_noAlign", "-device", "cpu"], env)
    fold = _model_dir(root, "nnUNetTrainerMOSMOS_tiny_noAlign", "2d") / "fold_0"
    before = torch.load(fold / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    (fold / "checkpoint_final.pth").unlink()
    run(["nnUNetv2_train", 901, "2d", 0, "-tr", "nnUNetTrainerMOSMOS_tiny_noAlign", "-device", "cpu", "--c"], env)
    after = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert after["current_epoch"] == 2
    assert len(after["logging"]["train_align_losses"]) == 2  # the resumed run kept the earlier epochs' log
    # --c continued from the checkpoint's epoch: the resumed run's first epoch is that one, not 0
    resumed_log = max(fold.glob("training_log_*.txt"), key=lambda f: f.stat().st_mtime).read_text()
    epochs = [int(n) for n in re.findall(r": Epoch (\d+)\s*$", resumed_log, flags=re.M)]
    assert epochs == list(range(before["current_epoch"], 2))

    out = tmp_path / "pred"
    run(["nnUNetv2_predict_from_modelfolder", "-i", root / "raw/Dataset901_MOSMOSPhantom/imagesTs", "-o", out,
         "-m", fold.parent, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1], env)
    assert len(list(out.glob("*.nii.gz"))) == 2


def test_real_totalsegmentator_ct_with_real_label_names(nnunet_env, tmp_path):
    """The real CT of TotalSegmentator's tests, its (silver) labels remapped to consecutive ids."""
    import SimpleITK as sitk

    env, root = nnunet_env
    class_map = json.loads((TS_DATA.parent / "class_map_total_and_total_mr.json").read_text())["total"]
    seg = sitk.ReadImage(str(TS_DATA / "example_seg.nii.gz"))
    arr = sitk.GetArrayFromImage(seg)
    # the BTCV/AMOS-like abdominal classes (duodenum is open-set: not in the tag vocabulary);
    # every other structure becomes background to keep the CPU run short
    wanted = {"spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
              "adrenal_gland_right", "adrenal_gland_left", "duodenum", "aorta", "inferior_vena_cava",
              "portal_vein_and_splenic_vein"}
    ids = [int(i) for i in np.unique(arr) if i and class_map[str(int(i))] in wanted]
    remapped = np.zeros_like(arr, dtype=np.uint8)
    for new, old in enumerate(ids, start=1):
        remapped[arr == old] = new
    ds = root / "raw" / "Dataset902_TotalSegCT"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    shutil.copy(TS_DATA / "example_ct_sm.nii.gz", ds / "imagesTr" / "ts_000_0000.nii.gz")
    out_seg = sitk.GetImageFromArray(remapped)
    out_seg.CopyInformation(seg)
    sitk.WriteImage(out_seg, str(ds / "labelsTr" / "ts_000.nii.gz"))
    labels = {"background": 0, **{class_map[str(old)]: new for new, old in enumerate(ids, start=1)}}
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                 "numTraining": 1, "file_ending": ".nii.gz"}))
    run(["nnUNetv2_plan_and_preprocess", "-d", 902, "-c", "2d", "-np", 1], env)
    run(["nnUNetv2_train", 902, "2d", "all", "-tr", "nnUNetTrainerMOSMOS_tiny", "-device", "cpu"], env)
    model = _model_dir(root, "nnUNetTrainerMOSMOS_tiny", "2d", "Dataset902_TotalSegCT")
    prompts = json.loads((model / "plans.json").read_text())["configurations"]["2d"]["mosmos_tag_branch"]["prompts"]
    assert len(prompts) == len(ids)
    assert len(ids) == 13
    for expected in ("right kidney", "inferior vena cava", "liver", "spleen", "duodenum",
                     "portal vein and splenic vein", "left adrenal gland"):
        assert expected in prompts
    out = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", ds / "imagesTr", "-o", out, "-d", 902, "-c", "2d", "-f", "all",
         "-tr", "nnUNetTrainerMOSMOS_tiny", "-device", "cpu", "-npp", 1, "-nps", 1], env)
    pred = sitk.ReadImage(str(out / "ts_000.nii.gz"))
    assert pred.GetSize() == seg.GetSize() and np.allclose(pred.GetSpacing(), seg.GetSpacing())


def _fails(cmd, env):
    proc = subprocess.run([str(BIN / cmd[0]), *map(str, cmd[1:])], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0, f"{cmd} should have failed"
    return proc.stdout + proc.stderr


def test_bad_input_gives_a_clear_error_and_nonzero_exit(phantom, tmp_path):
    env, root = phantom
    train = ["nnUNetv2_train", 901, "2d", 0, "-tr", "nnUNetTrainerMOSMOS_tiny", "-device", "cpu"]

    # a text encoder folder that is not a model
    out = _fails(train, {**env, "MOSMOS_TEXT_ENCODER": str(tmp_path)})
    assert "has no config.json" in out and "MOSMOS_TEXT_ENCODER" in out

    # a configuration the plans do not have
    out = _fails(["nnUNetv2_train", 901, "3d_lowres", 0, "-tr", "nnUNetTrainerMOSMOS_tiny", "-device", "cpu"], env)
    assert "3d_lowres" in out and "Available configurations" in out

    # a label name that yields an empty prompt
    pre = root / "pre"
    bad = pre / "Dataset903_BadLabel"
    shutil.copytree(pre / "Dataset901_MOSMOSPhantom", bad)
    ds = json.loads((bad / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "___": 1, **{k: v for k, v in ds["labels"].items() if v > 1}}
    (bad / "dataset.json").write_text(json.dumps(ds))
    plans = json.loads((bad / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = bad.name
    (bad / "nnUNetPlans.json").write_text(json.dumps(plans))
    out = _fails(["nnUNetv2_train", 903, "2d", 0, "-tr", "nnUNetTrainerMOSMOS_tiny", "-device", "cpu"], env)
    assert "label '___' gives an empty text prompt" in out and "MOSMOS_PROMPTS" in out

    # the documented fix works: an override file gives the class a prompt
    override = tmp_path / "prompts.json"
    override.write_text(json.dumps({"___": "liver"}))
    proc = subprocess.run([str(BIN / "nnUNetv2_train"), "903", "2d", "0", "-tr", "nnUNetTrainerMOSMOS_tiny",
                           "-device", "cpu", "--val"], env={**env, "MOSMOS_PROMPTS": str(override)},
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "empty text prompt" not in out  # the trainer was built ...
    assert "training is not finished" in out  # ... and nnU-Net went on to look for a checkpoint


@pytest.mark.parametrize("config", ["2d", "3d_fullres"])
def test_pretrain_then_finetune_starts_from_the_pretrained_tensors(phantom, config, tmp_path):
    """mosmos-pretrain -> nnUNetv2_train: 2d from the conventional location, 3d_fullres via
    MOSMOS_PRETRAINED; with lr 0 the trained network must hold exactly the pre-trained tensors. The trainer
    is a user's own subclass in their own folder of nnUNet_extTrainer (found, and its lambda used)."""
    from nnunet_mosmos.checkpoint import load_mosmos_checkpoint
    from nnunet_mosmos.encoders import inflate_tensor

    env, root = phantom
    conventional = root / "pre" / "Dataset901_MOSMOSPhantom" / "mosmos_pretrained" / f"nnUNetPlans__{config}.pt"
    target = conventional if config == "2d" else tmp_path / "pre3d.pt"
    train_env = dict(env) if config == "2d" else {**env, "MOSMOS_PRETRAINED": str(target)}
    try:
        run(["mosmos-pretrain", "--data", "synthetic", "-d", 901, "-c", config, "--max-steps", 3,
             "--batch-size", 4, "--num-workers", 0, "--device", "cpu", "--no-progress-bar",
             *([] if config == "2d" else ["-o", target])], env)
        assert target.is_file()
        run(["nnUNetv2_train", 901, config, 0, "-tr", "nnUNetTrainerMOSMOS_lr0", "-device", "cpu"], train_env)
        pre = load_mosmos_checkpoint(target)
    finally:
        conventional.unlink(missing_ok=True)  # later tests must not pick it up
    fold = _model_dir(root, "nnUNetTrainerMOSMOS_lr0", config) / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"MOSMOS: initialised from {target}" in log
    assert "lambda=0.3" in log  # the user's subclass, found in their own folder, with its own attribute
    import re
    counts = re.search(r"MOSMOS: encoder: (\d+) loaded, (\d+) inflated 2D->3D, (\d+) adapted to new input "
                       r"channels, (\d+) skipped", log)
    loaded, inflated, adapted, skipped = map(int, counts.groups())
    assert loaded + inflated > 0 and skipped == 0 and adapted == 0
    if config == "2d":
        assert inflated == 0

    net = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    entry = pre["encoder_3d"] if config == "3d_fullres" and pre.get("encoder_3d") else pre["encoder"]
    for key, value in entry["state_dict"].items():
        got = net[f"encoder.{key}"]
        expected = value if value.shape == got.shape else inflate_tensor(value, got.shape)
        assert torch.allclose(got, expected, atol=1e-6), key
    for key, value in pre["tag_decoder"]["state_dict"].items():
        assert torch.allclose(net[f"tag_branch.decoder.{key}"], value, atol=1e-6), key
    assert torch.allclose(net["tag_branch.prompt.ctx"], pre["prompt_context"])
