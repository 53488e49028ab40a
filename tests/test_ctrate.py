"""CT-RATE layout reader: rows, report texts, HU rescale, skip counts, layout errors."""
import numpy as np
import pytest

from pretrain.datasets import VolumePairDataset
from pretrain.normalization import Normalizer
from pretrain.pairs import Pair
from pretrain.patches import PatchSampler
from pretrain.sources.ctrate import CTRateLayoutError, read_ct_rate, write_ct_rate_like
from pretrain.volumes import read_volume

SPACING = (3.0, 1.0, 1.0)


def hu_volume(value: int) -> np.ndarray:
    array = np.full((6, 12, 12), value, np.int16)
    array[0] = -1000  # air
    return array


@pytest.fixture
def ct_rate(tmp_path):
    """3 volumes (train_1_a_2 without report) and 3 reports (train_3_a_1 without volume)."""
    volumes = [("train_1_a_1", hu_volume(40), SPACING), ("train_1_a_2", hu_volume(60), SPACING),
               ("train_2_a_1.nii.gz", hu_volume(-100), SPACING)]
    reports = {"train_1_a_1.nii.gz": {"Findings_EN": "Liver  normal.", "Impressions_EN": "No acute finding.",
                                      "Technique_EN": "Non-contrast chest CT."},
               "train_2_a_1": {"Findings_EN": "Small pleural effusion.", "Impressions_EN": ""},
               "train_3_a_1": "Report whose volume was never downloaded."}
    write_ct_rate_like(tmp_path, volumes, reports)
    return tmp_path


def test_read_ct_rate_rows_texts_and_skips(ct_rate):
    rows, skipped = read_ct_rate(ct_rate)
    assert [r[0] for r in rows] == ["train_1_a_1.nii.gz", "train_2_a_1.nii.gz"]
    assert rows[0][1] == ct_rate / "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz"
    assert rows[0][2] == "Findings: Liver normal. Impression: No acute finding."
    assert rows[1][2] == "Findings: Small pleural effusion."
    assert rows[0][3] == {"rescale": (1.0, -1024.0)}
    assert skipped.counts == {"report without volume on disk": 1, "volume without report": 1}
    assert skipped.examples["volume without report"][0].endswith("train_1_a_2.nii.gz")
    with_technique, _ = read_ct_rate(ct_rate / "dataset", text_fields=("Technique_EN", "Findings_EN"))
    assert with_technique[0][2] == "Technique: Non-contrast chest CT. Findings: Liver normal."


def test_rescale_gives_hounsfield_units(ct_rate):
    rows, _ = read_ct_rate(ct_rate)
    _, path, _, info = rows[0]
    assert float(read_volume(path).array.max()) == 40 + 1024  # stored raw, as CT-RATE ships it
    hu = read_volume(path, info["rescale"]).array
    assert hu.max() == 40.0 and hu.min() == -1000.0
    pairs = [Pair(rid, image, text, (0,), info=info) for rid, image, text, info in rows]
    ds = VolumePairDataset(pairs, 1, PatchSampler((4, 8, 8), None, train=False),
                           Normalizer("CTNormalization", {"mean": 40.0, "std": 10.0, "percentile_00_5": -100.0,
                                                          "percentile_99_5": 200.0}))
    assert float(ds[0]["image"][0, -1].abs().max()) == 0.0  # 40 HU -> (40 - 40) / 10, so rescale was applied


def test_validation_split_and_missing_metadata_row(tmp_path):
    write_ct_rate_like(tmp_path, [("valid_5_a_1", hu_volume(0), SPACING), ("valid_6_b_2", hu_volume(0), SPACING)],
                       {"valid_5_a_1": "Normal.", "valid_6_b_2": "Normal."})
    metadata = tmp_path / "dataset/metadata/validation_metadata.csv"
    metadata.write_text("\n".join(metadata.read_text().splitlines()[:2]) + "\n")  # drop valid_6_b_2's row
    rows, skipped = read_ct_rate(tmp_path, split="validation")
    assert [r[0] for r in rows] == ["valid_5_a_1.nii.gz"] and read_ct_rate(tmp_path, "valid")[0] == rows
    assert skipped.counts == {"volume without RescaleSlope/RescaleIntercept in the metadata CSV": 1}
    metadata.unlink()  # no metadata file at all: the volumes are taken to hold HU already
    rows, skipped = read_ct_rate(tmp_path, split="valid")
    assert len(rows) == 2 and rows[0][3] is None and skipped.total() == 0


def test_wrong_root_names_the_expected_layout(tmp_path, ct_rate):
    with pytest.raises(CTRateLayoutError) as info:
        read_ct_rate(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "dataset") in message and "radiology_text_reports" in message
    assert "<root>/dataset/{train,valid}/<split>_<patient>/" in message and isinstance(info.value, ValueError)
    (ct_rate / "dataset/radiology_text_reports/train_reports.csv").unlink()
    with pytest.raises(CTRateLayoutError, match="radiology_text_reports/train_reports.csv does not exist"):
        read_ct_rate(ct_rate)
    with pytest.raises(CTRateLayoutError, match="dataset/valid does not exist"):
        read_ct_rate(ct_rate, split="valid")
