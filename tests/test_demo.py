"""`mosmos-demo --quick`: the README's first set-up command, shortened for CI, end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_runs_the_whole_story_and_writes_valid_outputs(tmp_path, tiny_text_encoder):
    import SimpleITK as sitk
    from PIL import Image

    out = tmp_path / "demo"
    env = {**os.environ, "nnUNet_n_proc_DA": "0", "nnUNet_compile": "0",
           "OMP_NUM_THREADS": "1"}
    env.pop("nnUNet_extTrainer", None)  # the demo must register the trainers itself
    proc = subprocess.run([str(Path(sys.executable).parent / "mosmos-demo"), "--quick", "-o", str(out),
                           "--text-encoder", str(tiny_text_encoder), "-device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Dice per organ" in proc.stdout and "liver" in proc.stdout

    ds = out / "raw" / "Dataset990_MOSMOSDemo"
    assert (out / "preprocessed" / "Dataset990_MOSMOSDemo" / "mosmos_pretrained" / "nnUNetPlans__2d.pt").is_file()
    assert "docs/benchmarks.md" in proc.stdout  # the demo names where the measured comparison is
    log = next((out / "results").glob("Dataset990_MOSMOSDemo/*/fold_0/training_log_*.txt")).read_text()
    assert "MOSMOS: initialised from" in log  # fine-tuning started from the pre-trained checkpoint
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    assert len(summary["mean"]) == 7
    case = next((ds / "imagesTs").glob("*_0000.nii.gz"))
    image = sitk.ReadImage(str(case))
    pred = sitk.ReadImage(str(out / "predictions" / case.name.replace("_0000", "")))
    assert pred.GetSize() == image.GetSize()
    maps = sorted((out / "attention").glob("*_attention_*.nii.gz"))
    assert len(maps) == 7
    assert sitk.ReadImage(str(maps[0])).GetSize() == image.GetSize()
    with Image.open(next((out / "attention").glob("*_attention.png"))) as png:
        png.verify()
