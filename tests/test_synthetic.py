"""Synthetic phantom dataset: layout, nnU-Net validity, image/report agreement, determinism, CLI."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_mosmos.synthetic import LABELS, ORGANS, make_phantom, write_dataset
from nnunet_mosmos.synthetic import writer as writer_mod
from nnunet_mosmos.synthetic.cli import main
from nnunet_mosmos.synthetic.phantoms import case_rngs, sample_findings
from nnunet_mosmos.synthetic.reports import case_report, slice_report, visible_organs

SHAPE = (16, 32, 32)
SPACING = (2.5, 1.5, 1.5)
TINY = (8, 16, 16)

# Words a tag extractor would read as a mention of each organ (removal words excluded).
ORGAN_WORDS = {
    "liver": r"\b(liver|hepatic)\b",
    "spleen": r"\b(spleen|splenic)\b",
    "stomach": r"\b(stomach|gastric)\b",
    "aorta": r"\b(aorta|aortic)\b",
    "gallbladder": r"\bgallbladder\b",
}
REMOVAL = {"spleen": "splenectomy", "gallbladder": "cholecystectomy",
           "kidney_right": "right nephrectomy", "kidney_left": "left nephrectomy"}


def _kidney_mentioned(text: str, side: str) -> bool:
    return bool(re.search(rf"\b{side} kidney\b|\b(both kidneys|the kidneys)\b", text, re.I))


def assert_report_matches(text: str, present, absent, enlarged):
    """The report names every present organ, never an absent one except by its removal word."""
    for organ in ORGANS:
        side = organ.split("_")[1] if organ.startswith("kidney") else None
        mentioned = (_kidney_mentioned(text, side) if side
                     else re.search(ORGAN_WORDS[organ], text, re.I) is not None)
        if organ in present:
            assert mentioned, f"{organ} present but not mentioned: {text!r}"
        if organ in absent:
            assert not mentioned, f"{organ} absent but mentioned: {text!r}"
            assert REMOVAL[organ] in text.lower(), f"{organ} absent, no {REMOVAL[organ]}: {text!r}"
    for organ in enlarged:
        sentence = [s for s in text.split(".") if organ in s.lower() and "enlarged" in s.lower()]
        assert sentence, f"{organ} enlarged but the report doesn't say so: {text!r}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    return write_dataset(root, dataset_id=901, num_train=2, num_test=1, seed=0, shape=SHAPE,
                         spacing=SPACING, slices_per_case=3)


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_layout(dataset):
    assert dataset.name == "Dataset901_MOSMOSPhantom"
    for case in ("phantom_000", "phantom_001"):
        for rel in (f"imagesTr/{case}_0000.nii.gz", f"labelsTr/{case}.nii.gz", f"reportsTr/{case}.txt"):
            assert (dataset / rel).is_file(), rel
    for rel in ("imagesTs/phantom_002_0000.nii.gz", "labelsTs/phantom_002.nii.gz",
                "reportsTs/phantom_002.txt", "dataset.json", "reports_manifest.csv",
                "pairs2d/manifest.csv", "phantom_cases.json"):
        assert (dataset / rel).is_file(), rel
    assert not any(p.name.startswith(".") for p in dataset.parent.iterdir()), "temp folder left"
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 2 and list(meta["labels"]) == list(LABELS)
    assert "synthetic" in meta["description"].lower()


def test_nnunet_accepts_dataset(dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(dataset), num_processes=1)


def test_volumes_and_reports_agree(dataset):
    cases = json.loads((dataset / "phantom_cases.json").read_text())
    for case, info in cases.items():
        split = "Tr" if info["split"] == "train" else "Ts"
        image = sitk.ReadImage(str(dataset / f"images{split}/{case}_0000.nii.gz"))
        label_img = sitk.ReadImage(str(dataset / f"labels{split}/{case}.nii.gz"))
        assert image.GetPixelID() == sitk.sitkInt16 and label_img.GetPixelID() == sitk.sitkUInt8
        assert np.allclose(image.GetSpacing(), SPACING[::-1])
        assert image.GetSize() == SHAPE[::-1] and label_img.GetOrigin() == image.GetOrigin()
        label = sitk.GetArrayFromImage(label_img)
        assert label.max() <= max(LABELS.values())
        counts = np.bincount(label.ravel(), minlength=len(LABELS))
        present = [o for o in ORGANS if o not in info["absent"]]
        assert all(counts[LABELS[o]] > 0 for o in present), (case, counts)
        assert all(counts[LABELS[o]] == 0 for o in info["absent"]), (case, counts)
        text = (dataset / f"reports{split}/{case}.txt").read_text(encoding="utf-8")
        assert_report_matches(text, present, info["absent"], info["enlarged"])


def _special_indices():
    """First case indices (seed 0) with each kind of absence/enlargement, found from findings only."""
    wanted = {"spleen", "gallbladder", "kidney_right", "kidney_left", "big_liver", "big_spleen"}
    found = {}
    for index in range(400):
        findings, _ = sample_findings(case_rngs(0, index)[0])
        keys = set(findings.absent) | {f"big_{o}" for o in findings.enlarged}
        for key in keys & wanted:
            found.setdefault(key, index)
        if len(found) == len(wanted):
            break
    assert set(found) == wanted
    return sorted(set(found.values()))


@pytest.mark.parametrize("index", _special_indices())
def test_absent_and_enlarged_organs(index):
    phantom, text_rng = make_phantom(0, index, TINY, SPACING)
    f = phantom.findings
    counts = np.bincount(phantom.label.ravel(), minlength=len(LABELS))
    for organ in ORGANS:
        assert (counts[LABELS[organ]] == 0) == (organ in f.absent), (organ, counts)
    assert "liver" not in f.absent and "aorta" not in f.absent
    assert not {"kidney_right", "kidney_left"} <= f.absent
    assert_report_matches(case_report(f, text_rng), f.present, f.absent, f.enlarged)
    for organ in f.enlarged:
        assert f.size_cm[organ] > {"liver": 17.0, "spleen": 12.0}[organ]


def test_enlarged_organs_are_larger():
    def liver_voxels(big):
        out = []
        for index in range(200):
            findings, _ = sample_findings(case_rngs(0, index)[0])
            if ("liver" in findings.enlarged) == big:
                out.append(index)
            if len(out) == 3:
                break
        return np.mean([(make_phantom(0, i, TINY, SPACING)[0].label == 1).sum() for i in out])
    assert liver_voxels(True) > 1.5 * liver_voxels(False)


def test_determinism_by_seed(tmp_path):
    a, ra = make_phantom(7, 3, TINY, SPACING)
    b, rb = make_phantom(7, 3, TINY, SPACING)
    c, _ = make_phantom(8, 3, TINY, SPACING)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert case_report(a.findings, ra) == case_report(b.findings, rb)
    assert not np.array_equal(a.image, c.image)

    kw = dict(num_train=1, num_test=1, shape=TINY, spacing=SPACING, slices_per_case=2)
    one = write_dataset(tmp_path / "one", seed=5, **kw)
    two = write_dataset(tmp_path / "two", seed=5, **kw)
    other = write_dataset(tmp_path / "other", seed=6, **kw)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".gz":
            assert np.array_equal(_read(one / rel), _read(two / rel)), rel
        else:
            assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    assert not np.array_equal(_read(one / "imagesTr/phantom_000_0000.nii.gz"),
                              _read(other / "imagesTr/phantom_000_0000.nii.gz"))


def _manifest(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


def test_manifests(dataset):
    header, rows = _manifest(dataset / "reports_manifest.csv")
    assert header == ["image", "text", "mask"] and len(rows) == 2
    for image, text, mask in rows:
        assert (dataset / image).is_file() and image.startswith("imagesTr/")
        assert (dataset / mask).is_file() and mask.startswith("labelsTr/")
        assert text.startswith("EXAMINATION:") and "\n" not in text

    cases = json.loads((dataset / "phantom_cases.json").read_text())
    header, rows = _manifest(dataset / "pairs2d" / "manifest.csv")
    assert header == ["image", "text"] and 0 < len(rows) <= 2 * 3
    for image, text in rows:
        png = dataset / "pairs2d" / image
        assert png.is_file()
        gray = Image.open(png)
        assert gray.mode == "L" and gray.size == (SHAPE[2], SHAPE[1])
        label = np.asarray(Image.open(dataset / "pairs2d" / "labels" / png.name))
        assert label.shape == SHAPE[1:] and label.max() <= max(LABELS.values())
        visible = visible_organs(label)
        assert visible, f"{png.name} shows no organ"
        absent = [o for o in ORGANS if o not in visible]
        info = cases[png.name.split("_z")[0]]
        assert_report_matches(text, visible, [], [o for o in info["enlarged"] if o in visible])
        for organ in absent:   # not visible in this slice → not described
            if organ.startswith("kidney"):
                assert not _kidney_mentioned(text, organ.split("_")[1]), (organ, text)
            else:
                assert not re.search(ORGAN_WORDS[organ], text, re.I), (organ, text)


def test_slice_window_matches_volume(dataset):
    image = _read(dataset / "imagesTr/phantom_000_0000.nii.gz")
    _, rows = _manifest(dataset / "pairs2d" / "manifest.csv")
    name = rows[0][0]
    z = int(re.search(r"_z(\d+)\.png$", name).group(1))
    png = np.asarray(Image.open(dataset / "pairs2d" / name))
    expected = np.clip((image[z].astype(float) + 175) / 425 * 255, 0, 255)
    assert np.abs(png - expected).max() <= 0.5 + 1e-6


def test_slice_report_only_visible():
    phantom, rng = make_phantom(0, 0, TINY, SPACING)
    text = slice_report(["aorta"], phantom.findings, rng)
    assert "aorta" in text and "liver" not in text and "kidney" not in text


def test_cli_refuses_overwrite_and_overwrites(tmp_path, capsys):
    args = ["-o", str(tmp_path), "-d", "902", "--num-train", "1", "--num-test", "0",
            "--shape", *map(str, TINY), "--slices-per-case", "1"]
    assert main(args) == 0
    assert "Dataset902_MOSMOSPhantom" in capsys.readouterr().out
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert main(args + ["--overwrite", "--seed", "1"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset902_MOSMOSPhantom"]
    clash = ["-o", str(tmp_path), "-d", "902", "--name", "Other", "--shape", *map(str, TINY)]
    assert main(clash) != 0 and "already used" in capsys.readouterr().err


def test_cli_needs_output(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--num-train", "1"])
    assert exc.value.code != 0 and "nnUNet_raw" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert main(["--num-train", "1", "--num-test", "0", "--shape", *map(str, TINY)]) == 0
    assert (tmp_path / "Dataset901_MOSMOSPhantom" / "dataset.json").is_file()


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    real = writer_mod.make_phantom

    def broken(seed, index, *a, **k):
        if index == 1:
            raise RuntimeError("boom")
        return real(seed, index, *a, **k)

    monkeypatch.setattr(writer_mod, "make_phantom", broken)
    with pytest.raises(RuntimeError):
        write_dataset(tmp_path, num_train=2, num_test=0, shape=TINY)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_dataset(tmp_path, shape=(4, 8, 8))
    with pytest.raises(ValueError, match="dataset id"):
        write_dataset(tmp_path, dataset_id=1000, shape=TINY)
    assert list(tmp_path.iterdir()) == []


def test_no_torch_import():
    code = "import sys, nnunet_mosmos.synthetic; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
