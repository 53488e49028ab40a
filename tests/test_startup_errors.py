"""A MOSMOS trainer that cannot start: one line (MOSMOSStartError), exit status 1, no empty model folder.

In process, built as ``nnUNetv2_train`` builds the trainer (plans dict + dataset.json, nothing
initialised), so each case costs a fraction of a second; ``test_nnunet_bad_input.py`` runs the real
console scripts for the cases that matter most.
"""
import json
import subprocess
import sys
import warnings
from copy import deepcopy
from pathlib import Path

import pytest
import torch

import plans_fixtures
from benchmarks.common import plans_like, plans_like_configuration, workspace_env
from nnunet_mosmos.training import nnUNetTrainerMOSMOS, nnUNetTrainerMOSMOSEncoder
from nnunet_mosmos.training.startup import ENV_TRACEBACK, MOSMOSStartError

SMALL = dict(d_model=32, num_heads=4, num_layers=1, ffn_dim=64, dropout=0.0, self_attention=True)
CONFIGS = {"2d": plans_like_configuration([32, 32], base_features=8, max_stages=3),
           "3d_fullres": plans_like_configuration([16, 32, 32], base_features=8, max_stages=3)}


class SmallMOSMOS(nnUNetTrainerMOSMOS):
    tag_decoder_kwargs = SMALL


class SmallEncoderOnly(nnUNetTrainerMOSMOSEncoder):
    pass


def mosmos_checkpoint(configuration: dict, text_dim: int = 32) -> dict:
    """A valid MOSMOS checkpoint whose encoder is the one nnU-Net builds for ``configuration`` (a plans dict)."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    return plans_fixtures.mosmos_checkpoint(ConfigurationManager(configuration), text_dim=text_dim)


@pytest.fixture
def workspace(tmp_path, tiny_text_encoder, monkeypatch):
    """nnU-Net folders in tmp_path; ``start(cls, config, pretrained=None, labels=None)`` builds a trainer."""
    monkeypatch.delenv("MOSMOS_PROMPTS", raising=False)
    monkeypatch.delenv(ENV_TRACEBACK, raising=False)

    def start(cls=SmallMOSMOS, config="2d", pretrained=None, labels=None):
        plans, dataset_json = plans_like(deepcopy(CONFIGS), labels)
        regions = [name for name, value in dataset_json["labels"].items() if isinstance(value, list)]
        if regions:  # a valid region-based dataset.json names the order nnU-Net paints the regions in
            dataset_json["regions_class_order"] = list(range(1, len(dataset_json["labels"])))
        plans["continue_training"] = False  # what nnU-Net's get_trainer_from_args adds
        with workspace_env(tmp_path, str(tiny_text_encoder), False, pretrained):
            return cls(plans, config, 0, dataset_json, torch.device("cpu"))

    start.results = tmp_path / "results"
    return start


def _nothing_left(results: Path):
    """No folder or file of the failed start under $nnUNet_results."""
    left = [p for p in results.rglob("*")] if results.exists() else []
    assert left == [], left


def test_the_error_is_one_line_and_exit_status_1_without_a_traceback():
    err = MOSMOSStartError("first line\n  second line")
    assert isinstance(err, SystemExit) and str(err) == "first line second line" and err.code == str(err)
    proc = subprocess.run([sys.executable, "-c", "from nnunet_mosmos.training.startup import MOSMOSStartError\n"
                           "raise MOSMOSStartError('x.pt does not fit\\nfix: pre-train')"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr == "x.pt does not fit fix: pre-train\n"


@pytest.mark.parametrize("cls", [SmallMOSMOS, SmallEncoderOnly])
def test_a_3d_checkpoint_for_2d_is_refused_at_init_naming_the_configuration_to_pretrain(
        workspace, tmp_path, cls):
    ckpt = tmp_path / "pre3d.pt"
    torch.save(mosmos_checkpoint(CONFIGS["3d_fullres"]), ckpt)
    with pytest.raises(MOSMOSStartError) as info:
        workspace(cls, "2d", pretrained=ckpt)
    message = str(info.value)
    assert "\n" not in message and f"{cls.__name__} cannot start: {ckpt}" in message
    assert "does not fit this network's encoder" in message and "mismatched" in message
    assert "mosmos-pretrain -d Dataset950_MOSMOSBench -c 2d -p nnUNetPlans" in message
    _nothing_left(workspace.results)


@pytest.mark.parametrize("cls", [SmallMOSMOS, SmallEncoderOnly])
def test_a_fitting_checkpoint_starts_and_leaves_the_random_state_alone(workspace, tmp_path, cls):
    ckpt = tmp_path / "pre2d.pt"
    torch.save(mosmos_checkpoint(CONFIGS["2d"]), ckpt)
    torch.manual_seed(0)
    trainer = workspace(cls, "2d", pretrained=ckpt)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))  # the fit check built an encoder without using the seeded stream
    assert trainer.pretrained_path == str(ckpt.resolve()) and Path(trainer.output_folder).is_dir()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", b"just some text\n"])
def test_an_empty_or_truncated_checkpoint_is_one_line_naming_the_file(workspace, tmp_path, content):
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(content)
    with pytest.raises(MOSMOSStartError, match=r"broken\.pt.*mosmos-pretrain") as info:
        workspace(SmallMOSMOS, "2d", pretrained=ckpt)
    assert "\n" not in str(info.value)
    _nothing_left(workspace.results)


def test_missing_pretrained_file_and_encoder_trainer_without_checkpoint(workspace, tmp_path, monkeypatch):
    with pytest.raises(MOSMOSStartError, match=r"MOSMOS_PRETRAINED=.*nope\.pt does not exist"):
        workspace(SmallMOSMOS, "2d", pretrained=tmp_path / "nope.pt")
    with pytest.raises(MOSMOSStartError, match="needs a MOSMOS pre-training checkpoint"):
        workspace(SmallEncoderOnly, "2d")
    _nothing_left(workspace.results)


def test_bad_prompts_file_and_region_dataset(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("MOSMOS_PROMPTS", str(tmp_path / "missing.json"))
    with pytest.raises(MOSMOSStartError, match="missing.json does not exist.*point the environment variable "
                                               "MOSMOS_PROMPTS"):
        workspace()
    monkeypatch.delenv("MOSMOS_PROMPTS")
    with pytest.raises(MOSMOSStartError, match="label-based datasets only"):
        workspace(labels={"background": 0, "whole tumor": [1, 2], "tumor core": [2]})
    _nothing_left(workspace.results)


def test_an_unknown_configuration_is_one_line_too(workspace):
    with pytest.raises(MOSMOSStartError, match="3d_lowres.*Available configurations"):
        workspace(SmallMOSMOS, "3d_lowres")


def test_a_failed_start_keeps_what_an_earlier_run_left(workspace, tmp_path):
    fold = workspace.results / "Dataset950_MOSMOSBench" / "SmallMOSMOS__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_best.pth").write_bytes(b"earlier run")
    with pytest.raises(MOSMOSStartError):
        workspace(SmallMOSMOS, "2d", pretrained=tmp_path / "nope.pt")
    assert sorted(p.name for p in fold.iterdir()) == ["checkpoint_best.pth"]  # no new log, nothing removed


def test_traceback_on_request(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_TRACEBACK, "1")
    with pytest.raises(FileNotFoundError):
        workspace(SmallMOSMOS, "2d", pretrained=tmp_path / "nope.pt")


def test_labels_without_organ_words_warn_once_in_the_training_log(workspace):
    labels = {"background": 0, "1": 1, "label_2": 2, "liver": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # logged, not raised as a Python warning
        trainer = workspace(SmallMOSMOS, "2d", labels=labels)
    log = Path(trainer.log_file).read_text()
    assert log.count("WARNING: label name(s)") == 1
    assert "['1', 'label_2']" in log and "MOSMOS_PROMPTS" in log and '{"1": "<organ name>"' in log


def test_prompt_override_silences_the_warning(workspace, tmp_path, monkeypatch):
    override = tmp_path / "prompts.json"
    override.write_text(json.dumps({"1": "liver", "label_2": "spleen"}))
    monkeypatch.setenv("MOSMOS_PROMPTS", str(override))
    trainer = workspace(SmallMOSMOS, "2d", labels={"background": 0, "1": 1, "label_2": 2})
    assert trainer.class_prompts == ["liver", "spleen"]
    assert "WARNING" not in Path(trainer.log_file).read_text()
