"""scripts/bench_pretrain.py: quick runs end to end (JSON shape, positive numbers, plot) and argument errors.

No timing thresholds: CI machines are shared and slow. The numbers live in docs/benchmarks.md.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import plans_like, plans_like_configuration
from benchmarks.pretrain_throughput import parse_args, step_config
from nnunet_mosmos.tags import TagVocabulary
from nnunet_mosmos.text import TextEncoder
from pretrain.engine import build_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_pretrain.py"
COMPONENTS = {"image_encoder_fwd_bwd", "report_text_encoder_fwd", "prompt_context_fwd_bwd", "tag_decoder_fwd_bwd",
              "losses_fwd_bwd", "clip_grad_full", "optimizer_full", "optimizer_encoder_only", "sum_full_parts"}


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _run(args: list, tiny_text_encoder, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, MOSMOS_TEXT_ENCODER=str(tiny_text_encoder), HF_HUB_OFFLINE="1", **(extra_env or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(REPO))


@pytest.fixture
def preprocessed(tmp_path, monkeypatch) -> Path:
    """$nnUNet_preprocessed with Dataset950 holding a tiny 2d and 3d_fullres plan (no planner run)."""
    plans, dataset_json = plans_like({"2d": plans_like_configuration([32, 32]),
                                      "3d_fullres": plans_like_configuration([8, 16, 16])})
    folder = tmp_path / "pre" / plans["dataset_name"]
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    return tmp_path / "pre"


def test_quick_grid_json_and_plot(tiny_text_encoder, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "plot.png"
    proc = _run(["--quick", "--warmup", "0", "--batch-size", "2", "3", "--image-size", "16", "--image-size", "24", "16",
                 "--no-isolate-memory", "--text-encoder", str(tiny_text_encoder), "--json", str(out),
                 "--plot", str(png)], tiny_text_encoder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert r == json.loads(out.read_text())
    assert r["benchmark"] == "bench_pretrain"
    assert {"date", "command", "machine", "versions", "settings", "grid", "elapsed_s"} <= set(r)
    assert {"torch", "nnunetv2", "python"} <= set(r["versions"])
    assert {"platform", "processor", "cpu_count"} <= set(r["machine"])
    s = r["settings"]
    assert s["device"] == "cpu" and s["amp"] is None and s["compile"] is False and s["repeats"] == 2
    assert s["text_encoder"] == str(tiny_text_encoder) and s["num_tags"] == 20 and s["torch_threads"] == 1
    assert [(p["batch"], p["image_size"]) for p in r["grid"]] == [
        (2, [16, 16]), (3, [16, 16]), (2, [24, 16]), (3, [24, 16])]
    for p in r["grid"]:
        for key in ("pairs_per_s_full", "pairs_per_s_ceiling", "ratio", "ratio_paired", "step_ms_full",
                    "step_ms_ceiling"):
            assert _positive_finite(p[key]), (p["batch"], p["image_size"], key, p[key])
        assert p["ratio"] == pytest.approx(p["pairs_per_s_full"] / p["pairs_per_s_ceiling"], rel=1e-2)
        assert p["pairs_per_s_full"] == pytest.approx(p["batch"] / p["step_ms_full"] * 1000, rel=1e-2)
        assert len(p["runs_s"]["full"]) == len(p["runs_s"]["ceiling"]) == 2
        assert p["peak_mem_mb"]["full"] is None and "not measured" in p["peak_mem_mb"]["method"]
        assert COMPONENTS <= set(p["components_ms"])
        assert all(_positive_finite(p["components_ms"][k]) for k in COMPONENTS), p["components_ms"]
        enc = p["encoder"]
        assert enc["n_stages"] == 3 and enc["features_per_stage"] == [32, 64, 128]
        assert enc["trainable_params_m"] > enc["encoder_params_m"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_quick_with_dataset_plans_in_3d(tiny_text_encoder, preprocessed):
    proc = _run(["--quick", "--dim", "3", "-d", "950", "-c", "3d_fullres", "--no-components", "--repeats", "1",
                 "--warmup", "0", "--text-encoder", str(tiny_text_encoder)], tiny_text_encoder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout)
    assert r["settings"]["dim"] == 3 and "Dataset950_MOSMOSBench/nnUNetPlans/3d_fullres" in r["settings"]["source"]
    (point,) = r["grid"]
    assert point["batch"] == 4 and point["image_size"] == [8, 16, 16]  # the plans' patch, not the quick default
    assert _positive_finite(point["pairs_per_s_full"]) and _positive_finite(point["pairs_per_s_ceiling"])
    assert "components_ms" not in point and len(point["runs_s"]["full"]) == 1
    # memory by default on CPU: full step and ceiling each in a fresh process
    mem = point["peak_mem_mb"]
    assert r["settings"]["isolate_memory"] is True and "fresh subprocess" in mem["method"]
    assert _positive_finite(mem["ceiling"]) and mem["full"] > mem["ceiling"]
    assert mem["ratio"] == pytest.approx(mem["full"] / mem["ceiling"], rel=1e-2)


def test_dataset_plans_give_the_2d_twin(preprocessed):
    args = parse_args(["-d", "950", "-c", "2d", "--batch-size", "4"])
    (spec,) = args.specs
    assert spec.image_size == (32, 32) and spec.target["configuration"] == "2d"
    assert args.batch_size == [4] and args.repeats == 3 and args.threads == 1


def test_default_grid():
    args = parse_args([])
    assert args.batch_size == [8, 16, 32]
    assert [s.image_size for s in args.specs] == [(64, 64), (128, 128), (256, 256)]
    assert args.isolate_memory is True and parse_args(["--no-isolate-memory"]).isolate_memory is False


def test_report_cache_on_by_default_and_off_with_the_flag(tiny_text_encoder):
    """The step times what mosmos-pretrain trains: the report cache on; --no-report-cache the cost before it."""
    on, off = (step_config(parse_args(argv).no_report_cache) for argv in ([], ["--no-report-cache"]))
    assert on.report_cache is True and off.report_cache is False
    (spec,) = parse_args(["--image-size", "32"]).specs
    text, names = TextEncoder(str(tiny_text_encoder)), TagVocabulary.default().names
    cached, plain = (build_model(spec, text, names, cfg) for cfg in (on, off))
    assert plain.report_cache is None
    cached.train()
    cached.encode_text(["Axial CT of the liver.", "MRI of the spleen."])
    assert len(cached.report_cache) == 2  # the benchmark's model really goes through the cache


def test_real_size():
    """--real-size: nnU-Net's typical input at a small batch; --batch-size still applies."""
    args = parse_args(["--real-size"])
    assert [s.image_size for s in args.specs] == [(512, 512)] and args.batch_size == [12]
    args = parse_args(["--real-size", "--dim", "3", "--batch-size", "4"])
    assert [s.image_size for s in args.specs] == [(128, 128, 128)] and args.batch_size == [4]


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "1"], "at least 2 pairs"),
    (["--image-size", "32", "32", "32"], "give 1 or 2 sizes"),
    (["--dim", "3", "--image-size", "32", "64"], "give 1 or 3 sizes"),
    (["--image-size", "4"], "at least 8"),
    (["--amp"], "add --device cuda"),
    (["--compile"], "add --device cuda"),
    (["-c", "2d"], "-c/--configuration needs -d/--dataset"),
    (["-d", "950"], "-d/--dataset needs -c/--configuration"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--memory-repeats", "0"], "--memory-repeats must be >= 1"),
    (["--real-size", "--image-size", "64"], "--real-size sets the image size"),
    (["--json", "/nonexistent_folder/x.json"], "folder /nonexistent_folder does not exist"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_dataset_and_configuration(preprocessed, capsys):
    with pytest.raises(SystemExit):
        parse_args(["-d", "951", "-c", "2d"])
    assert "unknown dataset id 951" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["-d", "950", "-c", "3d_lowres"])
    err = capsys.readouterr().err
    assert "configuration '3d_lowres' is not in" in err and "nnUNetPlans.json" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
