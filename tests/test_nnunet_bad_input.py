"""Bad input through the real console scripts: ``nnUNetv2_train`` refuses at start-up in one line, with
exit status 1 and no model folder left behind, and ``mosmos-inspect -d -c`` gives the same verdict.

A start-up failure needs only the plans and dataset.json, so the dataset is planned without
preprocessing (``--no_pp``; dataset.json copied as preprocessing would): each case costs one
``nnUNetv2_train`` start (~10-20 s of CPU), no training.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_mosmos.demo import env_for
from test_startup_errors import mosmos_checkpoint

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DATASET = "Dataset904_MOSMOSPhantom"


def _call(cmd, env):
    return subprocess.run([str(BIN / cmd[0]), *map(str, cmd[1:])], env=env_for(cmd[0], env), capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def planned(tmp_path_factory, tiny_text_encoder):
    root = tmp_path_factory.mktemp("badinput")
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "results"), nnUNet_n_proc_DA="0",
               nnUNet_compile="0", MOSMOS_TEXT_ENCODER=str(tiny_text_encoder), HF_HUB_OFFLINE="1")
    env.pop("MOSMOS_PRETRAINED", None)
    env["nnUNet_extTrainer"] = _call(["mosmos-ext-path"], env).stdout.strip()
    for cmd in (["mosmos-synthetic", "-o", root / "raw", "-d", 904, "--num-train", 2, "--num-test", 0,
                 "--shape", 16, 32, 32, "--seed", 0],
                ["nnUNetv2_plan_and_preprocess", "-d", 904, "-c", "2d", "3d_fullres", "-np", 1, "--no_pp"]):
        proc = _call(cmd, env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.copy(root / "raw" / DATASET / "dataset.json", root / "pre" / DATASET / "dataset.json")
    plans = json.loads((root / "pre" / DATASET / "nnUNetPlans.json").read_text())
    return env, root, plans


def _without_library_warnings(stderr: str) -> list[str]:
    """stderr without the Python warnings that third-party imports print (``site-packages/...: XWarning: ...``
    and its ``warnings.warn(`` source line), e.g. torch 2.14's torch.jit.interface deprecation."""
    out, skip_next = [], False
    for line in stderr.splitlines():
        if skip_next and line.startswith(" "):
            skip_next = False
            continue
        skip_next = "site-packages" in line and "Warning: " in line
        if not skip_next:
            out.append(line)
    return out


def _refused(cmd, env):
    """Run ``cmd``: it must fail with status 1 and exactly one line on stderr, no traceback."""
    proc = _call(cmd, env)
    lines = [line for line in _without_library_warnings(proc.stderr) if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(lines) == 1, \
        f"{proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return lines[0]


def test_a_3d_checkpoint_for_2d_is_refused_in_one_line_by_both_trainers_and_by_inspect(planned, tmp_path):
    env, root, plans = planned
    ckpt = tmp_path / "pretrained_3d.pt"
    torch.save(mosmos_checkpoint(plans["configurations"]["3d_fullres"]), ckpt)
    bad = {**env, "MOSMOS_PRETRAINED": str(ckpt)}
    for trainer in ("nnUNetTrainerMOSMOS_tiny", "nnUNetTrainerMOSMOSEncoder"):
        line = _refused(["nnUNetv2_train", 904, "2d", 0, "-tr", trainer, "-device", "cpu"], bad)
        assert line.startswith(f"{trainer} cannot start: {ckpt} does not fit this network's encoder"), line
        assert f"mosmos-pretrain -d {DATASET} -c 2d -p nnUNetPlans" in line
    assert not (root / "results" / DATASET).exists()  # the failed starts left no model folders

    proc = _call(["mosmos-inspect", ckpt, "-d", 904, "-c", "2d"], env)
    assert proc.returncode == 1 and "check:         does NOT fit" in proc.stdout and "-c 2d" in proc.stdout
    proc = _call(["mosmos-inspect", ckpt, "-d", 904, "-c", "3d_fullres"], env)
    assert proc.returncode == 0 and "check:         fits" in proc.stdout


def test_an_empty_checkpoint_is_one_line_and_the_earlier_run_is_kept(planned, tmp_path):
    env, root, _ = planned
    empty = tmp_path / "empty.pt"
    empty.touch()
    fold = root / "results" / DATASET / "nnUNetTrainerMOSMOS_tiny__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_best.pth").write_bytes(b"an earlier run")
    try:
        line = _refused(["nnUNetv2_train", 904, "2d", 0, "-tr", "nnUNetTrainerMOSMOS_tiny", "-device", "cpu"],
                        {**env, "MOSMOS_PRETRAINED": str(empty)})
        assert f"{empty} is empty (0 bytes)" in line and "mosmos-pretrain" in line
        assert sorted(p.name for p in fold.iterdir()) == ["checkpoint_best.pth"]
    finally:
        shutil.rmtree(root / "results" / DATASET)


def test_the_fitting_checkpoint_passes_the_start_up_check(planned, tmp_path):
    """Control: the 2d checkpoint gets past __init__ (nnU-Net then fails for its own reason: no
    preprocessed data), so the refusals above are about the fit and nothing else."""
    env, root, plans = planned
    ckpt = tmp_path / "pretrained_2d.pt"
    torch.save(mosmos_checkpoint(plans["configurations"]["2d"]), ckpt)
    proc = _call(["nnUNetv2_train", 904, "2d", 0, "-tr", "nnUNetTrainerMOSMOSEncoder", "-device", "cpu", "--val"],
                 {**env, "MOSMOS_PRETRAINED": str(ckpt)})
    out = proc.stdout + proc.stderr
    assert "cannot start" not in out and "training is not finished" in out, out[-3000:]
    shutil.rmtree(root / "results" / DATASET, ignore_errors=True)
