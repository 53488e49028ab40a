"""Export against real nnU-Net plans: the encoder loads strictly into nnU-Net's own network (2d and
3d_fullres), inflation and stem adaptation are numerically right, mosmos-inspect, bad files."""
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nnunet_mosmos.checkpoint import (CheckpointError, describe_checkpoint, fit_encoder_state,
                                      load_mosmos_checkpoint, save_mosmos_checkpoint)
from nnunet_mosmos.encoders import build_plain_network

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DATASET = "Dataset901_MOSMOSPhantom"
STEM = "stages.0.0.convs.0.conv.weight"


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory, tiny_text_encoder):
    """A planned + preprocessed synthetic dataset (2d, 3d_fullres) and one export per configuration."""
    from nnunet_mosmos.synthetic import write_dataset

    root = tmp_path_factory.mktemp("nnunet")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "results")}
    write_dataset(root / "raw", 901, num_train=4, num_test=0, shape=(16, 32, 32), slices_per_case=4)
    proc = subprocess.run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "901", "-c", "2d", "3d_fullres",
                           "-np", "1"], env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from pretrain.cli import main

        files = {}
        for config in ("2d", "3d_fullres"):
            args = ["--data", "synthetic", "-d", "901", "-c", config, "--max-steps", "2", "--batch-size", "4",
                    "--num-workers", "0", "--device", "cpu", "--no-progress-bar", "--text-encoder",
                    str(tiny_text_encoder)]
            if config == "2d":
                args += ["-o", str(root / "explicit" / "2d.pt")]
            assert main(args) == 0
            files[config] = root / "explicit" / "2d.pt" if config == "2d" else \
                root / "pre" / DATASET / "mosmos_pretrained" / "nnUNetPlans__3d_fullres.pt"
        yield {"root": root, "env": env, "files": files, "mp": mp}


def _configuration(root: Path, config: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((root / "pre" / DATASET / "nnUNetPlans.json").read_text())
    return PlansManager(plans).get_configuration(config)


def test_default_output_location_and_run_folder(nnunet):
    pre = nnunet["root"] / "pre" / DATASET / "mosmos_pretrained"
    assert (pre / "nnUNetPlans__3d_fullres.pt").is_file()
    assert (pre / "nnUNetPlans__3d_fullres_run" / "last.pt").is_file()
    assert (nnunet["root"] / "explicit" / "2d_run" / "progress.png").is_file()


@pytest.mark.parametrize("config", ["2d", "3d_fullres"])
def test_encoder_loads_strictly_into_the_network_nnunet_builds(nnunet, config):
    ckpt = load_mosmos_checkpoint(nnunet["files"][config])
    cm = _configuration(nnunet["root"], config)
    entry = ckpt["encoder_3d"] if config == "3d_fullres" else ckpt["encoder"]
    assert (ckpt["encoder_3d"] is None) == (config == "2d")
    assert entry["dim"] == len(cm.patch_size)
    encoder = build_plain_network(cm, 1, 8).encoder
    expected = encoder.state_dict()
    assert list(entry["state_dict"]) == list(expected)  # key for key, same order
    assert all(entry["state_dict"][k].shape == v.shape for k, v in expected.items())
    encoder.load_state_dict(entry["state_dict"], strict=True)
    prov = ckpt["provenance"]["nnunet"]
    assert prov["configuration"] == config and prov["dataset"] == DATASET
    # the 2D twin kept every stage/feature of the configuration
    assert ckpt["encoder"]["arch_kwargs"]["features_per_stage"] == cm.network_arch_init_kwargs["features_per_stage"]


def test_inflated_first_conv_equals_the_2d_conv_on_a_depth_constant_input(nnunet):
    ckpt = load_mosmos_checkpoint(nnunet["files"]["3d_fullres"])
    w2, b2 = ckpt["encoder"]["state_dict"][STEM], ckpt["encoder"]["state_dict"][STEM.replace("weight", "bias")]
    w3, b3 = ckpt["encoder_3d"]["state_dict"][STEM], ckpt["encoder_3d"]["state_dict"][STEM.replace("weight", "bias")]
    kd = w3.shape[2]
    assert kd > 1 and torch.allclose(w3.sum(2), w2, atol=1e-6)
    x2 = torch.randn(2, 1, 32, 32)
    x3 = x2.unsqueeze(2).repeat(1, 1, 8, 1, 1)
    y2 = F.conv2d(x2, w2, b2, padding=w2.shape[-1] // 2)
    y3 = F.conv3d(x3, w3, b3, padding=(kd // 2, w3.shape[-2] // 2, w3.shape[-1] // 2))
    inner = y3[:, :, kd // 2: 8 - kd // 2]  # zero padding along depth only touches the border slices
    assert torch.allclose(inner, y2.unsqueeze(2).expand_as(inner), atol=1e-5)


def test_stem_is_adapted_to_two_input_channels(nnunet):
    from pretrain.export import target_encoder

    ckpt = load_mosmos_checkpoint(nnunet["files"]["3d_fullres"])
    target = {**ckpt["provenance"]["nnunet"], "input_channels": 2}
    entry, summary = target_encoder(ckpt["encoder"], target)
    # the stem conv and its alias in ConvDropoutNormReLU.all_modules (same tensor, two keys)
    assert entry["input_channels"] == 2 and summary["adapted"] == 2 and summary["inflated"] >= 1
    encoder = build_plain_network(_configuration(nnunet["root"], "3d_fullres"), 2, 8).encoder
    encoder.load_state_dict(entry["state_dict"], strict=True)
    w1, w2 = ckpt["encoder_3d"]["state_dict"][STEM], entry["state_dict"][STEM]
    assert w2.shape[1] == 2
    x = torch.randn(1, 1, 8, 16, 16)
    assert torch.allclose(F.conv3d(x.repeat(1, 2, 1, 1, 1), w2), F.conv3d(x, w1), atol=1e-5)
    # fit_encoder_state reports the adaptation the same way for a 2D target
    state, report = fit_encoder_state(ckpt["encoder"]["state_dict"],
                                      build_plain_network(_configuration(nnunet["root"], "2d"), 2, 8)
                                      .encoder.state_dict(), source_channels=1)
    assert STEM in report["adapted"] and all(k.startswith("stages.0.0.convs.0.") for k in report["adapted"])
    assert not report["mismatched"] and not report["missing"] and not report["unexpected"]


def test_mosmos_inspect(nnunet):
    env = {**os.environ, **nnunet["env"]}
    proc = subprocess.run([str(BIN / "mosmos-inspect"), str(nnunet["files"]["3d_fullres"]), "-d", "901", "-c",
                           "3d_fullres"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("MOSMOS checkpoint", "encoder_3d:", f"fits:          nnU-Net {DATASET} plans nnUNetPlans "
                 "configuration 3d_fullres", "check:         fits", "vocabulary:", "zscore-per-image"):
        assert text in out, out
    from pretrain.inspect_checkpoint import main

    # the 2D export against the 3D configuration: the 2D encoder is inflated on the fly and still fits
    assert main([str(nnunet["files"]["2d"]), "-d", "901", "-c", "3d_fullres"]) == 0
    assert main([str(nnunet["files"]["2d"])]) == 0


def test_unknown_dataset_missing_plans_and_configuration_are_clear_errors(nnunet, tmp_path, capsys):
    from pretrain.cli import main

    base = ["--data", "synthetic", "--manifest", str(nnunet["root"] / "raw" / DATASET / "pairs2d" / "manifest.csv"),
            "--max-steps", "1", "-o", str(tmp_path / "x.pt")]
    assert main(base + ["-d", "977", "-c", "2d"]) == 2
    assert "unknown dataset id 977" in capsys.readouterr().err
    assert main(base + ["-d", "901", "-c", "3d_lowres_nope"]) == 2
    assert "available: ['2d', '3d_fullres']" in capsys.readouterr().err
    assert main(base + ["-d", "901", "-c", "2d", "-p", "nnUNetResEncUNetMPlans"]) == 2
    err = capsys.readouterr().err
    assert "nnUNetResEncUNetMPlans.json does not exist" in err and "nnUNetv2_plan_and_preprocess -d 901" in err


# --------------------------------------------------------------------------- bad files
def _cuda_tagged_copy(src: Path, dst: Path) -> None:
    """Rewrite a CPU-saved file so its storages claim 'cuda:0' (what a GPU run saves)."""
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        data = zin.read(pkl)
        assert b"X\x03\x00\x00\x00cpu" in data
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
            for n in names:
                content = zin.read(n)
                if n == pkl:
                    content = content.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
                zout.writestr(zin.getinfo(n), content)
    dst.write_bytes(buf.getvalue())


def test_gpu_saved_checkpoint_loads_on_cpu(nnunet, tmp_path):
    ckpt = load_mosmos_checkpoint(nnunet["files"]["2d"])
    save_mosmos_checkpoint(tmp_path / "cpu.pt", ckpt)
    _cuda_tagged_copy(tmp_path / "cpu.pt", tmp_path / "gpu.pt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pt", weights_only=True)
    again = load_mosmos_checkpoint(tmp_path / "gpu.pt")
    assert all(torch.equal(again["encoder"]["state_dict"][k], v) for k, v in ckpt["encoder"]["state_dict"].items())
    assert again["encoder"]["state_dict"][STEM].device.type == "cpu"


class _Custom:
    pass


@pytest.mark.parametrize("kind,message", [
    ("missing", "no such file"),
    ("text", "not a readable PyTorch file"),
    ("truncated", "not a readable PyTorch file"),
    ("random", "not a MOSMOS checkpoint"),
    ("state_dict", "bare state dict"),
    ("nnunet", "plain nnU-Net training checkpoint"),
    ("pickled_object", "not a MOSMOS checkpoint"),
    ("newer", "newer than this nnunet-mosmos"),
    ("no_encoder", "missing entries ['encoder']"),
    ("prefixed_keys", "start with 'encoder.'"),
    ("text_dim", "text widths disagree"),
])
def test_bad_checkpoints_are_named_and_explained(nnunet, tmp_path, kind, message, capsys):
    good = load_mosmos_checkpoint(nnunet["files"]["2d"])
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("hello")
    elif kind == "truncated":
        path.write_bytes(nnunet["files"]["2d"].read_bytes()[:5000])
    elif kind == "random":
        torch.save({"weights": torch.zeros(3), "epoch": 3}, path)
    elif kind == "state_dict":
        torch.save(good["encoder"]["state_dict"], path)
    elif kind == "nnunet":
        torch.save({"network_weights": good["encoder"]["state_dict"], "trainer_name": "nnUNetTrainer",
                    "current_epoch": 1000, "init_args": {"configuration": "2d"}}, path)
    elif kind == "pickled_object":
        torch.save({"format": "nnunet-mosmos-checkpoint", "thing": _Custom()}, path)
    elif kind != "missing":
        bad = dict(good)
        if kind == "newer":
            bad["version"] = 99
        elif kind == "no_encoder":
            del bad["encoder"]
        elif kind == "prefixed_keys":
            bad["encoder"] = {**good["encoder"], "state_dict": {f"encoder.{k}": v for k, v in
                                                                good["encoder"]["state_dict"].items()}}
        elif kind == "text_dim":
            bad["prompt_context"] = torch.zeros(4, 7)
        torch.save(bad, path)
    with pytest.raises(CheckpointError) as info:
        load_mosmos_checkpoint(path)
    assert str(path) in str(info.value) and message in str(info.value)
    if kind in ("random", "nnunet", "state_dict"):
        assert "mosmos-pretrain" in str(info.value)  # says how to make a real one
    from pretrain.inspect_checkpoint import main

    assert main([str(path)]) == 1
    assert message in capsys.readouterr().err


def test_save_is_atomic_and_validates(nnunet, tmp_path):
    good = load_mosmos_checkpoint(nnunet["files"]["2d"])
    target = tmp_path / "out.pt"
    save_mosmos_checkpoint(target, good)
    before = target.read_bytes()
    with pytest.raises(CheckpointError):
        save_mosmos_checkpoint(target, {**good, "vocabulary": []})
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.pt"]
    assert "fits:" in describe_checkpoint(good)
