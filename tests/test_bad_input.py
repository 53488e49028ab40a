"""Bad input that used to pass silently or crash: label names without organ words, broken checkpoints in
mosmos-inspect, outputs that cannot be written, truncated and all-black images in mosmos-attention."""
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_mosmos.io_checks import OutputError, check_output_file, check_output_folder, write_text_atomic
from nnunet_mosmos.tags import UninformativeLabelWarning, class_prompts, uninformative_prompts
from test_startup_errors import CONFIGS, mosmos_checkpoint

TS = Path(__file__).parent / "data" / "totalsegmentator"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes into read-only folders


# --------------------------------------------------------------------------- prompts
def test_label_names_without_organ_words_warn_once_naming_the_fix():
    labels = {"background": 0, "1": 1, "label_2": 2, "Segment_3": 3, "liver": 4, "L3": 5, "lv": 6}
    with pytest.warns(UninformativeLabelWarning) as record:
        prompts = class_prompts(labels)
    assert len(record) == 1
    message = str(record[0].message)
    assert "['1', 'label_2', 'Segment_3']" in message and "MOSMOS_PROMPTS" in message
    assert prompts[3:] == ["liver", "L3", "left ventricle"]  # still returned: a warning, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert class_prompts(labels, {"1": "liver", "label_2": "spleen", "Segment_3": "aorta"})[:3] == \
            ["liver", "spleen", "aorta"]
        class_prompts({"background": 0, "kidney_right": 1, "rib_left_3": 2, "vertebrae_L1": 3, "BrainStem": 4})


def test_uninformative_prompts_words():
    assert uninformative_prompts({"a": "1", "b": "third label", "c": "left", "d": "class 2", "e": "A"}) == \
        ["a", "b", "c", "d", "e"]
    assert uninformative_prompts({"a": "right kidney", "b": "duodenum", "c": "L3", "d": "tumor core"}) == []


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04", b"\x80\x02}q\x00(X", b"plain text, not torch\n"])
def test_inspect_gives_one_line_for_an_empty_truncated_or_foreign_file(tmp_path, capsys, content):
    from pretrain.inspect_checkpoint import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert main([str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("mosmos-inspect: error: ")
    assert str(bad) in err and "mosmos-pretrain" in err


def test_a_truncated_real_checkpoint_is_a_checkpoint_error(tmp_path):
    from nnunet_mosmos.checkpoint import CheckpointError, load_mosmos_checkpoint

    good = tmp_path / "good.pt"
    torch.save(mosmos_checkpoint(CONFIGS["2d"]), good)
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"cut{cut}\.pt \(\d+ bytes\) is not a readable PyTorch file: "
                                                  "truncated"):
            load_mosmos_checkpoint(bad)


# --------------------------------------------------------------------------- outputs
def test_output_checks(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_file(a_file / "result.json")
    with pytest.raises(OutputError, match="is a file; give a folder"):
        check_output_folder(a_file)
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    write_text_atomic(tmp_path / "new" / "r.json", "{}\n")
    assert (tmp_path / "new" / "r.json").read_text() == "{}\n"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["r.json"]  # no temp file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "new"]  # no probe file left


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write to .*locked"):
            check_output_file(locked / "auc.json")
        with pytest.raises(OutputError, match="cannot write to .*locked"):
            check_output_folder(locked / "maps")
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------- mosmos-attention
def _truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _attention(capsys, argv):
    from nnunet_mosmos.attention_cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_attention_refuses_a_bad_output_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "maps"
    a_file.write_text("not a folder")
    image = TS / "example_ct_sm.nii.gz"
    rc, out, err = _attention(capsys, ["--checkpoint", tmp_path / "missing.pt", "-i", image, "-o", a_file])
    assert rc == 1 and err.count("\n") == 1 and "is a file; give a folder" in err  # not the checkpoint's error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]


def test_attention_refuses_a_truncated_input_and_writes_nothing(tmp_path, capsys):
    cut = _truncated_copy(TS / "example_ct_sm.nii.gz", tmp_path / "cut_ct.nii.gz")
    out_dir = tmp_path / "maps"
    rc, out, err = _attention(capsys, ["--checkpoint", tmp_path / "missing.pt", "-i", cut, "-o", out_dir])
    assert rc == 1 and err.count("\n") == 1 and str(cut) in err and "truncated" in err
    assert not out_dir.exists()


def test_attention_warns_about_an_all_black_image(tmp_path, capsys, tiny_text_encoder):
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(mosmos_checkpoint(CONFIGS["2d"]), ckpt)
    black = sitk.GetImageFromArray(np.zeros((3, 40, 40), np.float32))
    sitk.WriteImage(black, str(tmp_path / "black.nii.gz"))
    rc, out, err = _attention(capsys, ["--checkpoint", ckpt, "--text-encoder", tiny_text_encoder, "-i",
                                       tmp_path / "black.nii.gz", "-o", tmp_path / "maps", "--no-png"])
    assert rc == 0, err
    assert "black.nii.gz has the value 0 in every voxel" in err
    probs = json.loads((tmp_path / "maps" / "tag_probabilities.json").read_text())
    assert set(probs["black"]) == {"liver", "kidney"}

