"""mosmos-zeroshot: per-organ AUC JSON from a real (tiny) pre-training run, both scorers, open-vocabulary
organ names, real TotalSegmentator CT through its class map, the 3D slab path, and bad input."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_mosmos.checkpoint import build_encoder, fit_encoder_state, load_mosmos_checkpoint, save_mosmos_checkpoint
from pretrain.label_names import parse_label_names
from pretrain.zeroshot import ZeroShotModel, roc_auc, slab_units, select_organs
from pretrain.zeroshot_cli import main

DATA = Path(__file__).parent / "data"
TS = DATA / "totalsegmentator"
CLASS_MAP = DATA / "class_map_total_and_total_mr.json"
SHARED_TS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_text_encoder):
    """A synthetic raw dataset (4 train + 2 test phantoms) and a 3-step 2D pre-training checkpoint of it."""
    from nnunet_mosmos.synthetic import write_dataset
    from pretrain.engine import PretrainConfig, run

    root = tmp_path_factory.mktemp("zeroshot")
    folder = write_dataset(root / "raw", 951, num_train=4, num_test=2, shape=(16, 32, 32), slices_per_case=4)
    ckpt = root / "ckpt.pt"
    cfg = PretrainConfig(data="synthetic", manifest=str(folder / "pairs2d" / "manifest.csv"),
                         text_encoder=str(tiny_text_encoder), image_size=[32], batch_size=8, max_steps=3,
                         num_workers=0, device="cpu", output=str(ckpt), progress_bar=False, val_fraction=0.0,
                         decoder={"d_model": 32, "num_heads": 2, "num_layers": 1, "ffn_dim": 64}, embed_dim=16)
    assert run(cfg) == 0
    return {"root": root, "raw": root / "raw", "folder": folder, "ckpt": ckpt}


def _run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def _slices_with(label_file: Path, label: int, min_voxels: int = 10, crop=None) -> int:
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    if crop:
        seg = seg[:, crop[0]:crop[1], crop[2]:crop[3]]
    return int(((seg == label).reshape(len(seg), -1).sum(1) >= min_voxels).sum())


def test_synthetic_test_cases_both_methods(setup, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(setup["raw"]))
    out = tmp_path / "res" / "auc.json"
    rc, res, err = _run(capsys, [setup["ckpt"], "-d", 951, "-o", out])
    assert rc == 0, err
    assert json.loads(out.read_text()) == res
    assert res["checkpoint"] == str(setup["ckpt"]) and res["unit"] == "axial slice" and res["min_voxels"] == 10
    assert res["cases"] == ["phantom_004", "phantom_005"] and res["n_units"] == 2 * 16
    assert set(res["methods"]) == {"tag-decoder", "contrastive"}
    labels = json.loads((setup["folder"] / "dataset.json").read_text())["labels"]
    for method, entry in res["methods"].items():
        organs = entry["organs"]
        assert set(organs) == set(labels) - {"background"}
        defined = [v["auc"] for v in organs.values() if v["auc"] is not None]
        assert defined and all(0.0 <= a <= 1.0 for a in defined)
        assert entry["macro_auc"] == pytest.approx(np.mean(defined), abs=1e-4)
        for v in organs.values():
            assert v["n_pos"] + v["n_neg"] == 32
            assert (v["auc"] is None) == (v["n_pos"] in (0, 32))
    # ground truth = slices with >= 10 voxels of the label, counted independently here
    liver = res["methods"]["tag-decoder"]["organs"]["liver"]
    expected = sum(_slices_with(setup["folder"] / "labelsTs" / f"{c}.nii.gz", labels["liver"]) for c in res["cases"])
    assert liver["n_pos"] == expected > 0
    assert res["methods"]["contrastive"]["template"] == "a {modality} image showing the {organ}"
    assert res["methods"]["contrastive"]["modality"] == "CT"  # from dataset.json channel_names
    assert "macro" in err and "liver" in err  # the table


def test_roc_auc_is_mann_whitney_and_matches_sklearn():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.2])
    positive = np.array([False, False, True, True, False, True])
    # pairs (pos, neg): 0.35>0.1,0.35<0.4,0.35<0.8 ; 0.8>0.1,0.8>0.4,0.8=0.8 ; 0.2>0.1,0.2<0.4,0.2<0.8
    assert roc_auc(scores, positive) == pytest.approx((1 + 2.5 + 1) / 9)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert roc_auc(scores, positive) == pytest.approx(sklearn.roc_auc_score(positive, scores))
    assert roc_auc(scores, np.zeros(6, bool)) is None and roc_auc(scores, np.ones(6, bool)) is None


def test_open_vocabulary_names_and_tag_scores_match_pretraining(setup, capsys, tmp_path):
    """A label name outside the vocabulary gets a prompt and a score; a vocabulary organ scores exactly
    like the pre-training forward pass (all vocabulary queries together); other organs don't matter."""
    folder = setup["folder"]
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "Hepar_Organ", "2": "spleen", "3": "kidney_right", "4": "kidney_left",
                                 "5": "pancreas", "6": "gallbladder", "7": "stomach", "8": "aorta",
                                 "9": "inferior_vena_cava", "10": "urinary_bladder"}))
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    names_in_file = json.loads(names.read_text())
    assert max(labels.values()) <= len(names_in_file)  # every id in the maps is named
    image, label = folder / "imagesTs" / "phantom_004_0000.nii.gz", folder / "labelsTs" / "phantom_004.nii.gz"
    rc, res, err = _run(capsys, [setup["ckpt"], "--images", image, "--labels", label, "--label-names", names,
                                 "--method", "tag-decoder"])
    assert rc == 0, err
    model = ZeroShotModel.from_file(setup["ckpt"])
    assert "Hepar_Organ" in res["methods"]["tag-decoder"]["organs"] and "hepar organ" not in model.vocabulary
    assert res["methods"]["tag-decoder"]["organs"]["Hepar_Organ"]["prompt"] == "hepar organ"
    assert set(res["methods"]) == {"tag-decoder"}

    # a vocabulary organ's score == sigmoid of its logit with the vocabulary queries (pre-training forward)
    x = torch.randn(3, 1, 32, 32)
    vocab_queries = model.text.encode_prompts(model.context, model.vocabulary)
    with torch.no_grad():
        reference = torch.sigmoid(model.decoder(model.encoder(x)[model.stage], vocab_queries).logits)
    organs = select_organs({2: "spleen", 1: "liver", 11: "duodenum"})
    ours = model.score(x, model.organ_queries([o.prompt for o in organs]), None)["tag-decoder"]
    for k, o in enumerate(organs):
        if o.prompt in model.vocabulary:
            assert torch.allclose(ours[:, k], reference[:, model.vocabulary.index(o.prompt)], atol=1e-5)
    alone = model.score(x, model.organ_queries(["spleen"]), None)["tag-decoder"]
    assert torch.allclose(alone[:, 0], ours[:, 0], atol=1e-6)


def test_real_totalsegmentator_ct_through_the_class_map(setup, capsys):
    rc, res, err = _run(capsys, [setup["ckpt"], "--images", TS / "example_ct_sm.nii.gz", "--labels",
                                 TS / "example_seg.nii.gz", "--label-names", CLASS_MAP, "--label-map-key", "total"])
    assert rc == 0, err
    assert res["n_units"] == 30
    for entry in res["methods"].values():
        organs = entry["organs"]
        assert len(organs) == 117 and organs["kidney_right"]["prompt"] == "right kidney"
        assert organs["brain"]["auc"] is None and organs["brain"]["n_pos"] == 0  # abdomen: never present
        assert 10 <= entry["n_organs_defined"] < 117
    # slices are 101 x 122: the evaluation transform centre-crops to square, the counts follow the crop
    left = (122 - 101) // 2
    expected = _slices_with(TS / "example_seg.nii.gz", 5, crop=(0, 101, left, left + 101))
    assert res["methods"]["contrastive"]["organs"]["liver"]["n_pos"] == expected > 0


@pytest.mark.skipif(not (SHARED_TS / "example_mr_sm.nii.gz").is_file(), reason="shared TotalSegmentator MR absent")
def test_real_totalsegmentator_mr(setup, capsys):
    rc, res, err = _run(capsys, [setup["ckpt"], "--images", SHARED_TS / "example_mr_sm.nii.gz", "--labels",
                                 SHARED_TS / "example_seg_mr.nii.gz", "--label-names", CLASS_MAP,
                                 "--label-map-key", "total_mr", "--modality", "MRI", "--organs", "liver", "spleen"])
    assert rc == 0, err
    assert res["n_units"] == 20 and set(res["methods"]["contrastive"]["organs"]) == {"liver", "spleen"}
    assert res["methods"]["contrastive"]["modality"] == "MRI"


# --------------------------------------------------------------------------- 3D
def _checkpoint_3d(ckpt_2d: Path, out: Path, patch=(4, 32, 32), spacing=(5.0, 3.0, 3.0)) -> Path:
    """A 3D checkpoint built by hand: nnU-Net's 3D PlainConvUNet encoder (2D weights inflated where they
    fit), a tag decoder and image head sized for its stages, and the 3D preprocessing spec."""
    from nnunet_mosmos.tag_decoder import TagDecoder
    from pretrain.plans import default_arch_kwargs

    ckpt = load_mosmos_checkpoint(ckpt_2d)
    entry = {"arch_class_name": ckpt["encoder"]["arch_class_name"], "arch_kwargs": default_arch_kwargs((16, 32, 32)),
             "arch_kwargs_req_import": ckpt["encoder"]["arch_kwargs_req_import"], "input_channels": 1, "dim": 3}
    encoder = build_encoder({**entry, "state_dict": {}})
    state, _ = fit_encoder_state(ckpt["encoder"]["state_dict"], encoder.state_dict())
    entry["state_dict"] = {**encoder.state_dict(), **state}
    channels = entry["arch_kwargs"]["features_per_stage"]
    cfg = {**ckpt["tag_decoder"]["config"], "visual_channels": channels[-1]}
    torch.manual_seed(0)
    decoder = TagDecoder(**cfg)
    image_proj = torch.nn.Linear(channels[-1], ckpt["projections"]["embed_dim"])
    payload = {**ckpt, "encoder": entry, "encoder_3d": None,
               "tag_decoder": {"config": cfg, "stage": len(channels) - 1, "state_dict": decoder.state_dict()},
               "projections": {**ckpt["projections"], "image": image_proj.state_dict()},
               "preprocessing": {"dim": 3, "channels": 1, "image_size": list(patch), "spacing": list(spacing),
                                 "normalization": "CTNormalization",
                                 "intensity_properties": {"mean": 40.0, "std": 60.0, "percentile_00_5": -150.0,
                                                          "percentile_99_5": 250.0}}}
    return save_mosmos_checkpoint(out, payload)


def test_3d_checkpoint_scores_z_slabs(setup, capsys, monkeypatch, tmp_path):
    ckpt3d = _checkpoint_3d(setup["ckpt"], tmp_path / "3d.pt")
    monkeypatch.setenv("nnUNet_raw", str(setup["raw"]))
    rc, res, err = _run(capsys, [ckpt3d, "-d", 951])
    assert rc == 0, err
    # 16 x 32 x 32 at 2.5 x 1.5 x 1.5 mm -> 8 x 16 x 16 at 5 x 3 x 3 mm; slabs of 4, stride 2: z 0, 2, 4
    assert res["unit"] == "z-slab" and res["n_units"] == 2 * 3
    for entry in res["methods"].values():
        assert all(v["n_pos"] + v["n_neg"] == 6 for v in entry["organs"].values())
        assert all(v["auc"] is None or 0 <= v["auc"] <= 1 for v in entry["organs"].values())

    # the units themselves: CT-normalised (clipped to the percentiles), padded to the patch in-plane
    model = ZeroShotModel.from_file(ckpt3d)
    image = np.linspace(-1000, 1000, 16 * 32 * 32, dtype=np.float32).reshape(16, 32, 32)
    seg = np.zeros((16, 32, 32), np.int64)
    seg[:4, 8:24, 8:24] = 1  # 4 slices x 256 voxels -> 2 slices x 64 voxels after resampling
    units = slab_units(image, seg, (2.5, 1.5, 1.5), select_organs({1: "liver"}), model.ckpt["preprocessing"])
    assert tuple(units.inputs.shape) == (3, 1, 4, 32, 32)
    assert units.inputs.max() <= (250 - 40) / 60 + 1e-4 and units.inputs.min() >= (-150 - 40) / 60 - 1e-4
    assert units.counts[:, 0].tolist() == [128, 0, 0]
    assert units.where == [(0, 4), (2, 6), (4, 8)]


# --------------------------------------------------------------------------- bad input
def test_geometry_mismatch_names_both_files(setup, capsys, tmp_path):
    image = setup["folder"] / "imagesTs" / "phantom_004_0000.nii.gz"
    seg = sitk.ReadImage(str(setup["folder"] / "labelsTs" / "phantom_004.nii.gz"))
    seg.SetSpacing((1.0, 1.0, 1.0))
    bad = tmp_path / "shifted.nii.gz"
    sitk.WriteImage(seg, str(bad))
    rc, _, err = _run(capsys, [setup["ckpt"], "--images", image, "--labels", bad, "--label-names",
                               setup["folder"] / "dataset.json"])
    assert rc == 1
    assert str(bad) in err and str(image) in err and "grid" in err


def test_unknown_label_ids_are_named(setup, capsys, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "liver", "2": "spleen"}))
    rc, _, err = _run(capsys, [setup["ckpt"], "--images", TS / "example_ct_sm.nii.gz", "--labels",
                               TS / "example_seg.nii.gz", "--label-names", names])
    assert rc == 1 and "example_seg.nii.gz" in err and "[3, 4, 5" in err and str(names) in err
    # the MR class map on the CT label map: ids beyond total_mr's 50 are unknown
    rc, _, err = _run(capsys, [setup["ckpt"], "--images", TS / "example_ct_sm.nii.gz", "--labels",
                               TS / "example_seg.nii.gz", "--label-names", CLASS_MAP, "--label-map-key", "total_mr"])
    assert rc == 1 and "total_mr" in err and "label id(s)" in err


def test_checkpoint_errors_pass_through(setup, capsys, tmp_path):
    rc, _, err = _run(capsys, [tmp_path / "missing.pt", "--images", TS / "example_ct_sm.nii.gz", "--labels",
                               TS / "example_seg.nii.gz", "--label-names", CLASS_MAP, "--label-map-key", "total"])
    assert rc == 1 and "missing.pt: no such file" in err and "mosmos-pretrain" in err
    plain = tmp_path / "plain.pt"
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, plain)
    rc, _, err = _run(capsys, [plain, "--images", TS / "example_ct_sm.nii.gz", "--labels",
                               TS / "example_seg.nii.gz", "--label-names", CLASS_MAP, "--label-map-key", "total"])
    assert rc == 1 and "plain nnU-Net training checkpoint" in err


def test_input_errors(setup, capsys, tmp_path):
    ct, seg = TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz"
    rc, _, err = _run(capsys, [setup["ckpt"], "--images", ct, ct, "--labels", seg, "--label-names", CLASS_MAP,
                               "--label-map-key", "total"])
    assert rc == 1 and "2 file(s) but --labels 1" in err
    rc, _, err = _run(capsys, [setup["ckpt"], "--images", ct, "--labels", seg, "--label-names", CLASS_MAP])
    assert rc == 1 and "--label-map-key" in err and "total_mr" in err
    rc, _, err = _run(capsys, [setup["ckpt"], "--images", ct, "--labels", seg, "--label-names", CLASS_MAP,
                               "--label-map-key", "total", "--organs", "livr"])
    assert rc == 1 and "livr" in err
    rc, _, err = _run(capsys, [setup["ckpt"], "--images", ct, "--labels", seg, "--label-names", CLASS_MAP,
                               "--label-map-key", "total", "--template", "a {body} scan"])
    assert rc == 1 and "{modality} and {organ}" in err
    # contrastive scoring needs the projection heads
    ckpt = load_mosmos_checkpoint(setup["ckpt"])
    ckpt.pop("projections")
    bare = save_mosmos_checkpoint(tmp_path / "noproj.pt", ckpt)
    rc, _, err = _run(capsys, [bare, "--images", ct, "--labels", seg, "--label-names", CLASS_MAP,
                               "--label-map-key", "total", "--method", "contrastive"])
    assert rc == 1 and "--method tag-decoder" in err


def test_label_name_formats():
    assert parse_label_names({"labels": {"background": 0, "liver": 1, "spleen": 2}}) == {1: "liver", 2: "spleen"}
    assert parse_label_names({"0": "background", "1": "spleen"}) == {1: "spleen"}
    total = parse_label_names(json.loads(CLASS_MAP.read_text()), key="total")
    assert total[5] == "liver" and len(total) == 117


def test_folder_pairs_skip_other_channels(setup, capsys, tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    src = setup["folder"]
    shutil.copy(src / "imagesTs" / "phantom_005_0000.nii.gz", images)
    shutil.copy(src / "imagesTs" / "phantom_005_0000.nii.gz", images / "phantom_005_0001.nii.gz")
    shutil.copy(src / "labelsTs" / "phantom_005.nii.gz", labels)
    rc, res, err = _run(capsys, [setup["ckpt"], "--images", images, "--labels", labels, "--label-names",
                                 src / "dataset.json", "--organs", "liver", "--method", "tag-decoder"])
    assert rc == 0, err
    assert res["cases"] == ["phantom_005"] and res["n_units"] == 16


# --------------------------------------------------------------------------- outputs and damaged inputs
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _pair_folders(setup, tmp_path, cases=("phantom_004", "phantom_005")):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for case in cases:
        shutil.copy(setup["folder"] / "imagesTs" / f"{case}_0000.nii.gz", images)
        shutil.copy(setup["folder"] / "labelsTs" / f"{case}.nii.gz", labels)
    return images, labels


def test_a_bad_output_is_refused_before_any_work(setup, capsys, tmp_path):
    """-o a folder, under a file, in a read-only folder: one line, exit 1, nothing written. The checkpoint
    does not even exist: the -o check comes first, so a bad -o never costs an evaluation."""
    a_file = tmp_path / "file.json"
    a_file.write_text("{}")
    bad_outputs = [tmp_path, a_file / "auc.json"]
    if not AS_ROOT:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        bad_outputs.append(locked / "auc.json")
    try:
        for output in bad_outputs:
            rc, _, err = _run(capsys, [tmp_path / "missing.pt", "-d", 951, "-o", output])
            assert rc == 1 and err.count("\n") == 1 and err.startswith("mosmos-zeroshot: error: -o "), err
            assert "missing.pt" not in err
    finally:
        if not AS_ROOT:
            locked.chmod(0o700)
            assert list(locked.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"] + (["locked"] if not AS_ROOT else [])


def test_truncated_volumes_are_skipped_and_counted(setup, capsys, tmp_path):
    images, labels = _pair_folders(setup, tmp_path)
    cut = images / "phantom_005_0000.nii.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a copy cut short
    out = tmp_path / "auc.json"
    rc, res, err = _run(capsys, [setup["ckpt"], "--images", images, "--labels", labels, "--label-names",
                                 setup["folder"] / "dataset.json", "--method", "tag-decoder", "-o", out])
    assert rc == 0, err
    assert res["cases"] == ["phantom_004"] and res["n_units"] == 16
    assert [s["case"] for s in res["skipped"]] == ["phantom_005"] and str(cut) in res["skipped"][0]["reason"]
    assert "skipped 1 of 2 case(s) with truncated files: phantom_005" in err
    assert json.loads(out.read_text()) == res
    # a truncated label map is skipped the same way; when every case is skipped, that is an error
    label = labels / "phantom_004.nii.gz"
    label.write_bytes(label.read_bytes()[: label.stat().st_size // 2])
    rc, _, err = _run(capsys, [setup["ckpt"], "--images", images, "--labels", labels, "--label-names",
                               setup["folder"] / "dataset.json", "--method", "tag-decoder"])
    assert rc == 1 and "all 2 case(s) were skipped" in err


def test_an_all_black_image_is_scored_but_warned(setup, capsys, tmp_path):
    images, labels = _pair_folders(setup, tmp_path, ("phantom_004",))
    path = images / "phantom_004_0000.nii.gz"
    image = sitk.ReadImage(str(path))
    black = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(image).shape, -1000, np.float32))
    black.CopyInformation(image)
    sitk.WriteImage(black, str(path))
    rc, res, err = _run(capsys, [setup["ckpt"], "--images", images, "--labels", labels, "--label-names",
                                 setup["folder"] / "dataset.json", "--method", "tag-decoder"])
    assert rc == 0, err
    assert res["constant_images"] == ["phantom_004"] and res["skipped"] == []
    assert "has the value -1000 in every voxel" in err
