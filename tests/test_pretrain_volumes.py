"""Native 3D volumes for pre-training: reading, geometry checks, nnU-Net normalisation, patch sampling, data set."""
import json
import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pretrain.datasets import VolumePairDataset, collate_pairs
from pretrain.normalization import Normalizer
from pretrain.pairs import GeometryError, Pair, PairDataError
from pretrain.patches import PatchSampler
from pretrain.volumes import Volume, check_pair_geometry, pick_dicom_series, read_label_map, read_volume

SHARED_TS = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator"
SHAPE, SPACING = (20, 40, 40), (3.0, 1.0, 1.0)  # (z, y, x)
CT_PROPS = {"mean": 40.0, "std": 100.0, "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}


def write(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return Path(path)


def ct_like(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 50, SHAPE) - 500).astype(np.int16)


def organ_mask(shape=SHAPE) -> np.ndarray:
    """Label 1: a 2x4x4 block near a corner; label 2: a 4x10x10 block in the middle."""
    mask = np.zeros(shape, np.uint8)
    mask[17:19, 2:6, 33:37] = 1
    mask[8:12, 15:25, 15:25] = 2
    return mask


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_read_volume_formats(tmp_path, suffix):
    array = ct_like()
    volume = read_volume(write(tmp_path / f"ct{suffix}", array))
    assert volume.array.dtype == np.float32 and volume.array.shape == SHAPE
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))
    assert volume.spacing == pytest.approx(SPACING)
    assert volume.source.endswith(suffix) and volume.note is None


def test_read_volume_rescale_and_vector_pixels(tmp_path):
    raw = np.full(SHAPE, 1064, np.int16)
    assert np.all(read_volume(write(tmp_path / "raw.nii.gz", raw), rescale=(1.0, -1024.0)).array == 40.0)
    rgb = np.stack([np.full(SHAPE, v, np.uint8) for v in (10, 20, 60)], axis=-1)
    image = sitk.GetImageFromArray(rgb, isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.mha"))
    volume = read_volume(tmp_path / "rgb.mha")
    assert volume.array.shape == SHAPE and np.all(volume.array == 30.0)


def write_dicom_series(folder: Path, uid: str, number: int, slices: int, value: int):
    """GDCM's DICOM writer switches the process locale to "C" (seen with SimpleITK 2.x), after which
    Python opens text files as ASCII: restore it, or later tests fail on UTF-8 text."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_series(folder, uid, number, slices, value)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(folder: Path, uid: str, number: int, slices: int, value: int):
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # otherwise GDCM gives every file its own series UID
    for k in range(slices):
        image = sitk.GetImageFromArray(np.full((12, 10), value + k, np.int16))
        image.SetSpacing((0.5, 0.5))
        for tag, val in [("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.9"), ("0020|000e", uid),
                         ("0020|0011", str(number)), ("0020|0013", str(k + 1)),
                         ("0020|0032", f"0\\0\\{2.0 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                         ("0008|103e", f"series {number}")]:
            image.SetMetaData(tag, val)
        writer.SetFileName(str(folder / f"{uid}_{k:03d}.dcm"))
        writer.Execute(image)


def test_dicom_folder_with_two_series_picks_the_longest(tmp_path):
    encoding = locale.getpreferredencoding(False)
    write_dicom_series(tmp_path, "1.2.826.0.1.3", number=1, slices=5, value=0)
    assert locale.getpreferredencoding(False) == encoding  # the helper leaves the locale as it was
    write_dicom_series(tmp_path, "1.2.826.0.1.4", number=2, slices=8, value=100)
    files, note = pick_dicom_series(tmp_path)
    assert len(files) == 8 and all("1.2.826.0.1.4_" in f for f in files)
    assert note == (f"DICOM folder {tmp_path} holds 2 series: 1.2.826.0.1.4 (8 slices, chosen: most slices), "
                    "1.2.826.0.1.3 (5 slices)")
    volume = read_volume(tmp_path)
    assert volume.array.shape == (8, 12, 10) and volume.spacing == pytest.approx((2.0, 0.5, 0.5))
    assert volume.array[:, 0, 0].tolist() == list(range(100, 108))  # sorted by position, right series
    assert volume.metadata == {"modality": "CT", "description": "series 2"} and volume.note == note


def test_dicom_tie_goes_to_lowest_series_number_and_empty_folder_errors(tmp_path):
    write_dicom_series(tmp_path, "1.2.826.0.1.3", number=7, slices=4, value=0)
    write_dicom_series(tmp_path, "1.2.826.0.1.4", number=2, slices=4, value=100)
    files, note = pick_dicom_series(tmp_path)
    assert "1.2.826.0.1.4_" in files[0] and "tie broken by lowest SeriesNumber" in note
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PairDataError, match=f"DICOM folder {empty} holds no DICOM series"):
        read_volume(empty)


@pytest.mark.parametrize("case", ["size", "spacing"])
def test_label_map_geometry_mismatch_names_both_files_and_the_fix(tmp_path, case):
    image_path = write(tmp_path / "ct.nii.gz", ct_like())
    if case == "size":
        mask_path = write(tmp_path / "seg.nii.gz", organ_mask((20, 39, 40)))
        expected = "size (z, y, x) (20, 40, 40) vs (20, 39, 40)"
    else:
        mask_path = write(tmp_path / "seg.nii.gz", organ_mask(), spacing=(3.0, 1.5, 1.5))
        expected = "spacing (z, y, x) (3, 1, 1) vs (3, 1.5, 1.5) mm"
    volume = read_volume(image_path)
    for check in (lambda: read_label_map(mask_path, volume, image_path),
                  lambda: check_pair_geometry(image_path, mask_path)):
        with pytest.raises(GeometryError) as info:
            check()
        message = str(info.value)
        assert str(mask_path) in message and str(image_path) in message and expected in message
        assert "SimpleITK.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)" in message


def test_origin_tolerance_and_matching_label_map(tmp_path):
    image_path = write(tmp_path / "ct.nii.gz", ct_like())
    volume = read_volume(image_path)
    near = write(tmp_path / "near.nii.gz", organ_mask(), origin=(1e-5, 0.0, 0.0))
    labels = read_label_map(near, volume, image_path)
    assert np.issubdtype(labels.dtype, np.integer) and labels.shape == SHAPE
    np.testing.assert_array_equal(labels, organ_mask())
    far = write(tmp_path / "far.nii.gz", organ_mask(), origin=(0.5, 0.0, 0.0))
    with pytest.raises(GeometryError, match=r"origin \(x, y, z\) \(0, 0, 0\) vs \(0.5, 0, 0\) mm"):
        read_label_map(far, volume, image_path)


def test_check_pair_geometry_reads_headers_only(tmp_path):
    """A label map whose voxel data is cut off still gets its header checked (so no voxels were read)."""
    image_path = write(tmp_path / "ct.mha", ct_like())
    for name, shape in (("good.mha", SHAPE), ("bad.mha", (20, 39, 40))):
        path = write(tmp_path / name, organ_mask(shape))
        path.write_bytes(path.read_bytes()[:-500])
    check_pair_geometry(image_path, tmp_path / "good.mha")  # no error: geometry fine, voxels never touched
    with pytest.raises(GeometryError, match="size"):
        check_pair_geometry(image_path, tmp_path / "bad.mha")
    with pytest.raises(RuntimeError):  # the full read does need the voxels
        read_label_map(tmp_path / "good.mha", read_volume(image_path), image_path)


def test_normalizer_equals_nnunet_classes(tmp_path):
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (CTNormalization,
                                                                                    ZScoreNormalization)

    array = ct_like().astype(np.float32) * 3
    before = array.copy()
    zscore = Normalizer()
    np.testing.assert_allclose(zscore(array), ZScoreNormalization(intensityproperties={}).run(array.copy()))
    ct = Normalizer("CTNormalization", CT_PROPS)
    expected = CTNormalization(intensityproperties=CT_PROPS).run(array.copy())
    np.testing.assert_allclose(ct(array), expected)
    np.testing.assert_array_equal(array, before)  # callers' arrays are left alone unless inplace=True
    assert expected.min() == pytest.approx(-10.4) and "clip [-1000, 1000]" in ct.describe()

    from pretrain.plans import intensity_properties  # how a run gets the fingerprint's statistics

    fingerprint = tmp_path / "dataset_fingerprint.json"
    fingerprint.write_text(json.dumps({"foreground_intensity_properties_per_channel": {"0": CT_PROPS}}))
    np.testing.assert_allclose(Normalizer("CTNormalization", intensity_properties(tmp_path))(array), expected)
    with pytest.raises(ValueError, match="pass -d DATASET.*or use ZScoreNormalization"):
        Normalizer("CTNormalization")
    with pytest.raises(ValueError, match="unknown normalisation scheme 'Foo'"):
        Normalizer("Foo")


def gradient_volume(spacing=SPACING) -> Volume:
    """Value = x index: a patch's value range measures its field of view along x."""
    array = np.broadcast_to(np.arange(SHAPE[2], dtype=np.float32), SHAPE).copy()
    return Volume(array, spacing, "gradient")


def test_patch_shapes_and_resampling_to_target_spacing():
    volume = gradient_volume()
    native = PatchSampler((4, 16, 16), None, train=False).sample(volume, organ_mask(), None)
    assert native["image"].shape == (1, 4, 16, 16) and native["image"].dtype == torch.float32
    assert native["mask"].shape == (4, 16, 16) and native["mask"].dtype == torch.long and native["view2"] is None
    coarse_sampler = PatchSampler((4, 16, 16), (3.0, 2.0, 2.0), train=False)
    assert coarse_sampler.crop_size(SPACING) == (4, 32, 32)
    coarse = coarse_sampler.sample(volume, organ_mask(), None)
    assert coarse["image"].shape == (1, 4, 16, 16) and coarse["mask"].shape == (4, 16, 16)
    width = lambda p: float(p["image"].max() - p["image"].min())  # noqa: E731
    assert width(native) == 15.0
    assert 1.8 < width(coarse) / width(native) < 2.2  # twice the field of view at half the resolution
    assert set(coarse["mask"].unique().tolist()) <= {0, 1, 2}


def test_padding_uses_the_volume_minimum():
    array = np.full(SHAPE, 3.0, np.float32)
    array[0, 0, 0] = -2.0
    patch = PatchSampler((24, 8, 8), None, train=False).sample(Volume(array, SPACING, "v"), None, None)["image"][0]
    assert torch.all(patch[:2] == -2.0) and torch.all(patch[-2:] == -2.0) and torch.all(patch[2:22] == 3.0)


def test_foreground_oversampling():
    volume, mask = gradient_volume(), organ_mask()
    hits = {}
    for p in (0.0, 1.0):
        sampler = PatchSampler((2, 6, 6), None, foreground_p=p)
        hits[p] = sum(bool((sampler.sample(volume, mask, np.random.default_rng(s))["mask"] > 0).any())
                      for s in range(20))
    assert hits[1.0] == 20 and hits[0.0] < 20


def test_sampling_is_deterministic_per_seed_and_views_overlap():
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    volume = Volume((z * 10000 + y * 100 + x).astype(np.float32), SPACING, "coded")  # every voxel unique
    sampler = PatchSampler((8, 16, 16), None, jitter=0.0)
    a, b = (sampler.sample(volume, organ_mask(), np.random.default_rng(7), two_views=True) for _ in range(2))
    for key in ("image", "mask", "view2"):
        assert torch.equal(a[key], b[key])
    other = sampler.sample(volume, organ_mask(), np.random.default_rng(8), two_views=True)
    assert not torch.equal(a["image"], other["image"])
    for s in range(5):
        views = sampler.sample(volume, None, np.random.default_rng(s), two_views=True)
        first, second = (set(views[k].flatten().tolist()) for k in ("image", "view2"))
        assert first != second and len(first & second) > 0.2 * len(first)
    frozen = PatchSampler((8, 16, 16), None, train=False)
    c, d = (frozen.sample(volume, None, np.random.default_rng(s)) for s in (1, 2))
    assert torch.equal(c["image"], d["image"])
    np.testing.assert_array_equal(c["image"][0].numpy(), volume.array[6:14, 12:28, 12:28])


@pytest.fixture
def pairs(tmp_path):
    image = write(tmp_path / "ct.nii.gz", ct_like())
    mask = write(tmp_path / "seg.nii.gz", organ_mask())
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    return [Pair("with_mask", image, "", (1,), mask=mask),
            Pair("broken", broken, "liver lesion", (0,)),
            Pair("no_mask", image, "normal spleen", (0, 2))]


def test_volume_pair_dataset_items_and_collate(pairs):
    contexts = []
    ds = VolumePairDataset(pairs, num_tags=3, sampler=PatchSampler((8, 16, 16), (3.0, 2.0, 2.0)),
                           normalizer=Normalizer("CTNormalization", CT_PROPS), seed=1, two_views=True,
                           label_names={1: "adrenal", 2: "liver"},
                           text_for_missing=lambda ctx: contexts.append(ctx) or "generated report")
    item = ds[(0, 3)]
    assert set(item) == {"image", "view2", "mask", "has_mask", "text", "tags", "index", "failed", "constant"}
    assert item["image"].shape == item["view2"].shape == (1, 8, 16, 16) and item["mask"].shape == (8, 16, 16)
    assert item["has_mask"] is True and item["text"] == "generated report" and item["failed"] == []
    assert item["tags"].tolist() == [0.0, 0.0, 0.0]  # the tags of the generated text (none), not the row's
    assert contexts[0]["organs"] == {"adrenal": pytest.approx(32 * 3 / 1000), "liver": pytest.approx(400 * 3 / 1000)}
    assert contexts[0]["spacing"] == pytest.approx(SPACING) and contexts[0]["shape"] == SHAPE
    assert contexts[0]["image"] == str(pairs[0].image) and contexts[0]["modality"] is None
    assert -6.1 < float(item["image"].mean()) < -4.7  # CT-normalised (-500 - 40) / 100, times 1 ± 0.1, ± 0.1
    assert torch.equal(ds[(0, 3)]["image"], item["image"])  # same (index, epoch) -> same sample
    assert not torch.equal(ds[(0, 4)]["image"], item["image"])

    replaced = ds[1]  # unreadable file -> next pair, reported
    assert replaced["index"] == 2 and replaced["text"] == "normal spleen" and replaced["has_mask"] is False
    assert torch.count_nonzero(replaced["mask"]) == 0 and "broken.nii.gz" in replaced["failed"][0]

    batch = collate_pairs([item, replaced])
    assert batch["image"].shape == batch["view2"].shape == (2, 1, 8, 16, 16)
    assert batch["mask"].shape == (2, 8, 16, 16) and batch["has_mask"].tolist() == [True, False]
    assert batch["tags"].shape == (2, 3) and batch["index"].tolist() == [0, 2]
    assert batch["text"] == ["generated report", "normal spleen"] and len(batch["failed"]) == 1


def test_geometry_error_propagates_instead_of_being_skipped(tmp_path, pairs):
    wrong = write(tmp_path / "wrong.nii.gz", organ_mask((20, 39, 40)))
    bad = Pair("bad_mask", pairs[0].image, "liver", (0,), mask=wrong)
    ds = VolumePairDataset([bad, pairs[2]], num_tags=3, sampler=PatchSampler((8, 16, 16), None),
                           normalizer=Normalizer())
    with pytest.raises(GeometryError, match="wrong.nii.gz.*size"):
        ds[0]
    item = ds[1]  # a pair without two_views has no view2 key
    assert "view2" not in item and item["image"].shape == (1, 8, 16, 16)


@pytest.mark.skipif(not (SHARED_TS / "example_seg.nii.gz").is_file(), reason="shared TotalSegmentator data absent")
def test_real_ct_with_totalsegmentator_labels():
    image, seg = SHARED_TS / "example_ct_sm.nii.gz", SHARED_TS / "example_seg.nii.gz"
    check_pair_geometry(image, seg)
    class_map = json.loads((SHARED_TS / "class_map_total_and_total_mr.json").read_text())["total"]
    names = {int(k): v for k, v in class_map.items()}
    contexts = []
    ds = VolumePairDataset([Pair("ts", image, "", (0,), mask=seg)], 1,
                           PatchSampler((32, 64, 64), (1.5, 1.5, 1.5), foreground_p=1.0),
                           Normalizer("CTNormalization", {"mean": 60, "std": 150, "percentile_00_5": -1000,
                                                          "percentile_99_5": 1200}),
                           label_names=names, text_for_missing=lambda ctx: contexts.append(ctx) or "x")
    item = ds[0]
    assert item["image"].shape == (1, 32, 64, 64) and item["mask"].max() > 0
    organs = contexts[0]["organs"]
    assert 800 < organs["liver"] < 2500 and 50 < organs["spleen"] < 500  # plausible adult volumes (ml)
    with pytest.raises(GeometryError, match="example_seg_mr.nii.gz"):
        check_pair_geometry(image, SHARED_TS / "example_seg_mr.nii.gz")


def test_mosmos_pretrain_on_dicom_folders_says_which_series_it_used(tmp_path, tiny_text_encoder, capsys):
    """End to end through the CLI: DICOM folders with two series each, default 3D topology."""
    from nnunet_mosmos.checkpoint import load_mosmos_checkpoint
    from pretrain.cli import main

    rows = []
    for i in range(4):
        folder = tmp_path / f"study{i}"
        folder.mkdir()
        write_dicom_series(folder, f"1.2.826.0.1.{i}.1", number=1, slices=3, value=0)    # a scout
        write_dicom_series(folder, f"1.2.826.0.1.{i}.2", number=2, slices=10, value=50)  # the volume
        rows.append(f"{folder.name},CT: the liver and the spleen are normal.")
    (tmp_path / "dicom.csv").write_text("image,text\n" + "\n".join(rows) + "\n")
    out = tmp_path / "dicom.pt"
    assert main(["--data", "manifest", "--manifest", str(tmp_path / "dicom.csv"), "--dim", "3", "--image-size",
                 "8", "8", "8", "--max-steps", "1", "--batch-size", "2", "--val-fraction", "0", "--num-workers", "0",
                 "--device", "cpu", "--no-progress-bar", "--text-encoder", str(tiny_text_encoder), "-o",
                 str(out)]) == 0
    log = capsys.readouterr().out
    assert f"DICOM folder {tmp_path / 'study0'} holds 2 series: 1.2.826.0.1.0.2 (10 slices, chosen: most slices), " \
           "1.2.826.0.1.0.1 (3 slices)" in log
    ckpt = load_mosmos_checkpoint(out)
    assert ckpt["encoder"]["dim"] == 3 and ckpt["preprocessing"]["spacing"] is None  # default topology: native
