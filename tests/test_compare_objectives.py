"""scripts/compare_objectives.py in its quick mode: every arm pre-trains (or not), fine-tunes the same
nnU-Net 3D network and is scored; output shape only (no thresholds on Dice or time)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[1]


def test_quick_comparison_runs_every_arm_and_resumes(tmp_path, tiny_text_encoder):
    cmd = [sys.executable, str(REPO / "scripts" / "compare_objectives.py"), "--quick", "-o", str(tmp_path / "run"),
           "--text-encoder", str(tiny_text_encoder), "--json", str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record == json.loads((tmp_path / "out.json").read_text())
    arms = ["scratch", "mosmos", "mosmos+organ-grounded", "mosmos+negative-free"]
    assert [r["arm"] for r in record["results"]] == arms
    loaded = {r["arm"]: r["encoder_tensors_loaded"] for r in record["results"]}
    assert loaded["scratch"] == 0 and all(loaded[a] > 0 for a in arms[1:])
    for r in record["results"]:
        assert 0.0 <= r["mean_dice"] <= 1.0 and len(r["per_class"]) == 7
    assert set(record["summary"]) == set(arms) and record["summary"]["scratch"]["vs_scratch"] == 0.0
    assert "| mosmos+organ-grounded |" in proc.stderr  # the markdown table
    for arm in arms[1:]:
        assert (tmp_path / "run" / "checkpoints" / f"{arm}_seed0.pt").is_file()
    # a second call finds every run done and only reports
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "pre-trained" not in again.stderr
    assert json.loads(again.stdout)["results"] == record["results"]
