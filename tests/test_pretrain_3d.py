"""Native 3D pre-training on phantom volumes with reports and masks, against real nnU-Net plans:
MOSMOS-only, + organ-grounded, + negative-free; each lowers its loss and its checkpoint loads into the
3d_fullres MOSMOS network without inflation. Bad input: a mask off its image's grid, reports without
an assignable sentence, volumes without reports."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_mosmos.checkpoint import load_mosmos_checkpoint
from nnunet_mosmos.encoders import build_plain_network
from nnunet_mosmos.network import MOSMOSNetwork, TagBranchConfig
from nnunet_mosmos.pretrained import load_pretrained
from pretrain.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BIN = Path(sys.executable).parent
DATASET = "Dataset902_MOSMOSPhantom3D"


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    """8 phantoms (16 x 32 x 32) with reports + label maps, planned for 3d_fullres."""
    from nnunet_mosmos.synthetic import write_dataset

    root = tmp_path_factory.mktemp("nnunet3d")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "results")}
    folder = write_dataset(root / "raw", 902, name="MOSMOSPhantom3D", num_train=8, num_test=0, shape=(16, 32, 32),
                           slices_per_case=1)
    proc = subprocess.run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "902", "-c", "3d_fullres", "-np", "1",
                           "--no_pp"], env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plans = json.loads((root / "pre" / DATASET / "nnUNetPlans.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield {"root": root, "raw": folder, "plans": plans}


def _run(nnunet, tiny_text_encoder, out, *extra, manifest=None) -> int:
    manifest = manifest or nnunet["raw"] / "reports_manifest.csv"
    return main(["--data", "manifest", "--manifest", str(manifest), "-d", "902", "-c", "3d_fullres",
                 "--text-encoder", str(tiny_text_encoder), "-o", str(out), "--batch-size", "4", "--num-workers", "0",
                 "--device", "cpu", "--no-progress-bar", "--val-fraction", "0", "--seed", "0", *map(str, extra)])


def _falls(history, key, by=0.0):
    first = np.mean([h[key] for h in history[:2]])
    last = np.mean([h[key] for h in history[-2:]])
    print(f"{key}: first {first:.4f} last {last:.4f}")
    return last < first - by


def _network_3d(nnunet, ckpt):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(nnunet["plans"]).get_configuration("3d_fullres")
    dec = ckpt["tag_decoder"]
    cfg = TagBranchConfig(num_tags=7, text_dim=dec["config"]["text_dim"], stage=dec["stage"],
                          n_ctx=ckpt["prompt_context"].shape[0],
                          **{k: dec["config"][k] for k in ("d_model", "num_heads", "num_layers", "ffn_dim")})
    return MOSMOSNetwork(build_plain_network(cm, 1, 8), cfg), cm


def test_mosmos_objective_in_native_3d_loads_into_3d_fullres_without_inflation(nnunet, tiny_text_encoder,
                                                                               tmp_path, capsys):
    out = tmp_path / "mosmos3d.pt"
    assert _run(nnunet, tiny_text_encoder, out, "--max-steps", 24, "--lr", "1e-3", "--log-every", 4) == 0
    log = capsys.readouterr().out
    assert "PlainConvUNet 3D" in log and "Volumes: spacing" in log
    ckpt = load_mosmos_checkpoint(out)
    assert ckpt["encoder"]["dim"] == 3
    net, cm = _network_3d(nnunet, ckpt)
    pre = ckpt["preprocessing"]
    assert pre["dim"] == 3 and pre["image_size"] == list(cm.patch_size)
    assert pre["spacing"] == pytest.approx(list(cm.spacing))
    assert pre["normalization"] == cm.normalization_schemes[0]
    assert _falls(ckpt["provenance"]["history"], "loss")
    reports = load_pretrained(net, ckpt)
    enc = reports["encoder"]
    assert not enc["inflated"] and not enc["adapted"] and not enc["missing"] and not enc["mismatched"]
    state = net.encoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["encoder_3d"]["state_dict"].items())


def test_organ_grounded_objective_lowers_its_loss_and_counts_reports_without_organ_sentences(
        nnunet, tiny_text_encoder, tmp_path, capsys):
    manifest = tmp_path / "with_unassignable.csv"
    rows = list(csv.reader(open(nnunet["raw"] / "reports_manifest.csv", newline="", encoding="utf-8")))
    base = nnunet["raw"]
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for image, text, mask in rows[1:]:
            w.writerow([base / image, text, base / mask])
        image, _, mask = rows[1]
        w.writerow([base / image, "The heart is normal in size. No pericardial effusion.", base / mask])
    out = tmp_path / "organ.pt"
    assert _run(nnunet, tiny_text_encoder, out, "--objective", "organ-grounded", "--max-steps", 24, "--lr", "1e-3",
                "--log-every", 4, manifest=manifest) == 0
    log = capsys.readouterr().out
    assert "Organ-grounded objective: 8 pairs with a mask and assignable sentences" in log
    assert "1  organ-grounded: report with no sentence naming an organ" in log
    ckpt = load_mosmos_checkpoint(out)
    assert "organ" in ckpt["projections"] and ckpt["provenance"]["objectives"] == ["mosmos", "organ-grounded"]
    assert _falls(ckpt["provenance"]["history"], "organ", by=0.05)
    reports = load_pretrained(_network_3d(nnunet, ckpt)[0], ckpt)
    assert not reports["encoder"]["inflated"] and not reports["encoder"]["mismatched"]


def test_negative_free_objective_generates_text_for_volumes_without_reports(nnunet, tiny_text_encoder, tmp_path,
                                                                           capsys):
    manifest = tmp_path / "unreported.csv"
    rows = list(csv.reader(open(nnunet["raw"] / "reports_manifest.csv", newline="", encoding="utf-8")))
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for i, (image, text, mask) in enumerate(rows[1:]):
            w.writerow([nnunet["raw"] / image, text if i % 2 else "", nnunet["raw"] / mask])  # half unreported
    out = tmp_path / "nf.pt"
    assert _run(nnunet, tiny_text_encoder, out, "--objective", "negative-free", "--max-steps", 24, "--lr", "1e-3",
                "--log-every", 4, manifest=manifest) == 0
    ckpt = load_mosmos_checkpoint(out)
    assert ckpt["provenance"]["loss_weights"]["negative_free"] == 0.01
    assert ckpt["provenance"]["pairs"]["skipped"] == {}  # rows without text are used, not skipped
    assert _falls(ckpt["provenance"]["history"], "negative_free", by=1.0)
    reports = load_pretrained(_network_3d(nnunet, ckpt)[0], ckpt)
    assert not reports["encoder"]["inflated"] and not reports["encoder"]["mismatched"]


def test_mask_off_the_image_grid_is_one_error_naming_both_files(nnunet, tiny_text_encoder, tmp_path, capsys):
    rows = list(csv.reader(open(nnunet["raw"] / "reports_manifest.csv", newline="", encoding="utf-8")))
    image, text, mask = rows[1]
    bad = sitk.ReadImage(str(nnunet["raw"] / mask))
    bad.SetSpacing([s * 2 for s in bad.GetSpacing()])
    sitk.WriteImage(bad, str(tmp_path / "shifted_seg.nii.gz"))
    manifest = tmp_path / "bad.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for im, tx, mk in rows[1:]:
            w.writerow([nnunet["raw"] / im, tx, nnunet["raw"] / mk])
        w.writerow([nnunet["raw"] / image, text, tmp_path / "shifted_seg.nii.gz"])
    out = tmp_path / "bad.pt"
    assert _run(nnunet, tiny_text_encoder, out, "--max-steps", 2, manifest=manifest) == 2
    err = capsys.readouterr().err
    assert "shifted_seg.nii.gz" in err and Path(image).name in err and "spacing" in err
    assert not out.exists() and not (tmp_path / "bad_run").exists()


def test_organ_grounded_without_masks_or_in_2d_says_what_to_do(nnunet, tiny_text_encoder, tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert _run(nnunet, tiny_text_encoder, out, "--objective", "organ-grounded", "--dim", "2", "--max-steps",
                2) == 2
    assert "mask" in capsys.readouterr().err
