"""The real-data benefit study (benchmarks/chaos.py, benchmarks/real_data.py).

The study itself runs for hours; here: the data writers on the small CHAOS copy and the
MedPix-format fixture of tests/data (see its README), the split rules, the argument handling, and
one ``--quick`` run end to end for the output shape only (slow).
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import chaos, real_data

DATA = Path(__file__).parent / "data"
CHAOS_SMALL, MEDPIX_FORMAT = DATA / "chaos_small", DATA / "medpix_format"
REPO = Path(__file__).resolve().parents[1]


def test_split_keeps_test_cases_apart_and_has_at_least_ten():
    labelled, pilot, test = (set(real_data.SPLIT[k]) for k in ("labelled", "pilot", "test"))
    assert len(test) >= 10
    assert not (labelled & test) and not (pilot & test) and not (labelled & pilot)
    assert labelled | pilot | test <= {1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39}


def test_chaos_dataset_is_an_nnunet_raw_dataset(tmp_path):
    import SimpleITK as sitk

    folder = real_data.write_chaos_dataset(tmp_path, 961, "CHAOSL1", (1,), (13,), (3,), CHAOS_SMALL)
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["CHAOS_001_0000.nii.gz"]
    assert [p.name for p in (folder / "labelsTs").iterdir()] == ["CHAOS_013.nii.gz"]
    assert (folder / "imagesVal" / "CHAOS_003_0000.nii.gz").is_file()
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}
    assert ds["channel_names"] == {"0": "MRI"} and ds["numTraining"] == 1 and "CC BY-SA" in ds["licence"]
    image = sitk.ReadImage(str(folder / "imagesTr" / "CHAOS_001_0000.nii.gz"))
    label = sitk.ReadImage(str(folder / "labelsTr" / "CHAOS_001.nii.gz"))
    assert image.GetPixelID() == sitk.sitkFloat32 and label.GetPixelID() == sitk.sitkUInt8
    assert image.GetSize() == label.GetSize() and image.GetSpacing() == label.GetSpacing()
    assert not list(tmp_path.glob("*.tmp"))
    # written once: a second call returns the same folder untouched
    stamp = (folder / "dataset.json").stat().st_mtime_ns
    assert real_data.write_chaos_dataset(tmp_path, 961, "CHAOSL1", (1,), (13,), (3,), CHAOS_SMALL) == folder
    assert (folder / "dataset.json").stat().st_mtime_ns == stamp


def test_missing_chaos_case_names_the_file(tmp_path):
    with pytest.raises(real_data.RealDataError, match="image_99.nii.gz is missing"):
        real_data.write_chaos_dataset(tmp_path, 961, "X", (99,), (), (), CHAOS_SMALL)
    assert not (tmp_path / "Dataset961_X").exists()


def test_medpix_manifest_keeps_torso_regions_and_joins_caption_and_findings(tmp_path):
    rows = real_data.medpix_rows(MEDPIX_FORMAT)
    assert {r["region"] for r in rows} <= set(real_data.TORSO_REGIONS)
    assert len(rows) == 8  # the fixture has no head/spine rows
    assert rows[0]["text"].startswith("Axial CT shows a large liver lesion.") and "Findings text" in rows[0]["text"]
    only_captions = real_data.medpix_rows(MEDPIX_FORMAT, with_findings=False)
    assert only_captions[0]["text"] == "Axial CT shows a large liver lesion."
    thorax = real_data.medpix_rows(MEDPIX_FORMAT, regions=("Thorax",))
    assert [r["text"].split(".")[0] for r in thorax] == ["Chest CT shows a lung nodule"]
    manifest = real_data.write_medpix_manifest(tmp_path / "m.jsonl", MEDPIX_FORMAT)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(lines) == 8 and set(lines[0]) == {"image", "text"} and Path(lines[0]["image"]).is_file()
    counts = real_data.tag_counts(rows)
    assert counts["Abdomen"]["tags"]["liver"] >= 2 and counts["Abdomen"]["pairs"] == 4


def test_chaos_slice_manifest_names_exactly_the_organs_on_each_slice(tmp_path):
    """Change 2's pre-training pairs: one per organ-bearing slice, 16-bit MR values, a report whose
    mined tags are the slice's organs (both kidneys are the one tag "kidney")."""
    import numpy as np
    import SimpleITK as sitk
    from PIL import Image

    from nnunet_mosmos.tags import extract_tags

    path = real_data.write_chaos_slice_manifest(tmp_path / "chaos_slices.jsonl", (1, 3), CHAOS_SMALL)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    seg = {c: sitk.GetArrayFromImage(sitk.ReadImage(str(CHAOS_SMALL / f"label_{c}.nii.gz"))) for c in (1, 3)}
    image = {c: sitk.GetArrayFromImage(sitk.ReadImage(str(CHAOS_SMALL / f"image_{c}.nii.gz"))) for c in (1, 3)}
    with_organ = {(c, z) for c in (1, 3) for z in range(seg[c].shape[0])
                  if any((seg[c][z] == v).sum() >= 50 for v in (1, 2, 3, 4))}
    assert len(rows) == len(with_organ) > 0
    names = {"liver": {1}, "kidney": {2, 3}, "spleen": {4}}
    for row in rows:
        case, z = (int(v) for v in re.fullmatch(r"chaos_slices_png/CHAOS_(\d{3})_z(\d{2})\.png", row["image"]).groups())
        assert (case, z) in with_organ
        present = {v for v in (1, 2, 3, 4) if (seg[case][z] == v).sum() >= 50}
        assert extract_tags(row["text"]) == {t for t, vs in names.items() if vs & present}
        png = np.asarray(Image.open(path.parent / row["image"]))
        assert png.dtype == np.uint16 and np.array_equal(png, np.clip(image[case][z], 0, 65535).astype(np.uint16))
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match=r"test cases \[13\] may not be pre-trained on"):
        real_data.write_chaos_slice_manifest(tmp_path / "bad.jsonl", (1, 13), CHAOS_SMALL)
    assert not (tmp_path / "bad.jsonl").exists()


def test_pretrain_source_chooses_the_manifest(tmp_path):
    _, config = chaos.parse_args(["-o", str(tmp_path), "--pretrain-source", "chaos"])
    runner = chaos.ChaosRunner(config)
    cmd = runner.pretrain_command(chaos.ARMS[-1])
    assert cmd[cmd.index("--manifest") + 1] == str(tmp_path.resolve() / "chaos_slices.jsonl")
    _, default = chaos.parse_args(["-o", str(tmp_path)])
    assert chaos.ChaosRunner(default).manifest.name == "medpix_torso.jsonl"


def test_budget_argument_and_pilot_arms():
    assert chaos.parse_budget("12x25") == (12, 25)
    with pytest.raises(Exception, match="EPOCHSxITERS"):
        chaos.parse_budget("300")
    _, config = chaos.parse_args(["-o", "x", "--pilot", "--budgets", "4x25", "8x25"])
    assert [a.name for a in config.arms] == ["plain_100it", "plain_200it"]
    assert [a.budget for a in config.arms] == [(4, 25), (8, 25)] and config.labelled == 2 and config.pilot
    _, config = chaos.parse_args(["-o", "x", "--labelled", "1"])
    assert [a.name for a in config.arms] == ["plain", "mosmos_scratch", "mosmos_pretrained",
                                             "mosmos_pretrained_noAlign", "encoder_pretrained", "lean_pretrained"]
    runner = chaos.ChaosRunner(config)
    assert runner.dataset == "Dataset961_CHAOSL1" and runner.plans == "nnUNetPlans_4mm_b4"
    assert runner.test_folders()[0].name == "imagesTs"
    lean = chaos.ALL_ARMS["lean_pretrained"]
    assert runner.pretrain_command(lean)[-2:] == ["--tag-decoder", "lean"]
    assert "-d" in runner.pretrain_command(lean) and "962" in runner.pretrain_command(lean)  # one plans, both counts


@pytest.mark.slow
def test_quick_study_writes_results_of_the_expected_shape(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--quick", "-o", str(out),
                           "--chaos-root", str(CHAOS_SMALL), "--medpix-root", str(MEDPIX_FORMAT)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "L2" / "study.json").read_text())
    assert [(r["arm"], r["seed"]) for r in record["runs"]] == [("plain", 0), ("encoder_pretrained", 0)]
    for run in record["runs"]:
        assert set(run["class_dice"]) == {"1", "2", "3", "4"} and run["num_test_cases"] == 1
        assert 0.0 <= run["mean_dice"] <= 1.0
    assert record["runs"][1]["pretrained"] and Path(record["runs"][1]["pretrained"]).is_file()
    assert "encoder_pretrained" in record["aggregate"]["paired"]["vs_plain"]
    log = next((out / "L2" / "runs" / "encoder_pretrained" / "seed0" / "results").rglob("training_log*.txt"))
    assert "encoder initialised from" in log.read_text()
    assert "| plain | 1 |" in proc.stdout
