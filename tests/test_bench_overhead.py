"""scripts/bench_overhead.py: the quick mode runs and its JSON has the documented shape.

No timing thresholds: CI machines are shared and slow. The numbers themselves live in
docs/benchmarks.md.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_overhead.py"


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_pair(block: dict, name: str):
    assert {"plain", "mosmos", "ratio"} <= set(block), name
    for key in ("plain", "mosmos", "ratio"):
        assert _positive_finite(block[key]), (name, key, block[key])


@pytest.fixture(scope="module")
def quick_result(tiny_text_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    env = dict(os.environ, MOSMOS_TEXT_ENCODER=str(tiny_text_encoder), HF_HUB_OFFLINE="1")
    env.pop("MOSMOS_PRETRAINED", None)
    # memory is measured by default on CPU (fresh subprocesses); no flag needed
    # the full branch (the lean default has no text pass to profile)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--profile", "--trainer", "nnUNetTrainerMOSMOS_full",
                           "--text-encoder", str(tiny_text_encoder), "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert printed == json.loads(out.read_text())
    return printed


def test_quick_json_shape(quick_result, tiny_text_encoder):
    r = quick_result
    assert r["benchmark"] == "bench_overhead"
    assert {"date", "command", "machine", "versions", "settings", "configurations", "elapsed_s"} <= set(r)
    assert {"torch", "nnunetv2", "python"} <= set(r["versions"]) and r["versions"]["nnunetv2"].startswith("2.")
    assert {"platform", "processor", "cpu_count"} <= set(r["machine"])
    s = r["settings"]
    assert s["quick"] is True and s["device"] == "cpu" and s["repeats"] == 2 and s["mirroring"] is False
    assert s["isolate_memory"] is True and s["memory_repeats"] == 1 and s["lean"] is False and s["real_size"] is False
    assert s["text_encoder"] == str(tiny_text_encoder)
    assert set(r["configurations"]) == {"2d", "3d_fullres"}
    for name, c in r["configurations"].items():
        plans = c["plans"]
        assert len(plans["patch_size"]) == (2 if name == "2d" else 3)
        assert plans["num_tags"] == 7 and plans["tag_branch"]["num_tags"] == 7
        assert plans["inference_tiles"] >= 2
        for key in ("train_step_s", "inference_s", "peak_mem_mb", "inference_peak_mem_mb"):
            _check_pair(c[key], f"{name}.{key}")
        assert "fresh subprocess" in c["peak_mem_mb"]["method"] and "lean" not in c
        for key in ("peak_mem_mb", "inference_peak_mem_mb"):  # the peak splits into resident + running
            for variant, resident in c[key]["resident_mb"].items():
                assert 0 <= resident <= c[key][variant] + 1, (name, key, variant, resident)
        for key in ("ratio_paired", "ratio_min", "ratio_cpu"):
            assert _positive_finite(c["train_step_s"][key])
        assert len(c["train_step_s"]["runs"]["plain"]) == len(c["train_step_s"]["runs"]["mosmos"]) == 2
        assert set(c["targets"]) == {"train_step_s", "inference_s", "peak_mem_mb"}
        for t in c["targets"].values():
            assert isinstance(t["met"], bool) and _positive_finite(t["limit"])
        comp = c["profile"]["components_ms"]
        assert {"text_encoder_pass", "tag_decoder", "injection", "aligning_loss", "sum_of_additions"} <= set(comp)
        prof = c["profile"]["torch_profiler"]
        assert {"encoder", "decoder", "seg_loss"} <= set(prof["plain"]["modules"])
        assert {"encoder", "decoder", "seg_loss", "text_encoder_pass", "tag_decoder", "injection",
                "aligning_loss"} <= set(prof["mosmos"]["modules"])
        assert "text_encoder_pass" not in prof["plain"]["modules"]


def test_plans_file_and_prototypes_in_process(tiny_text_encoder, tmp_path, monkeypatch):
    """--plans of a preprocessed folder (plans + dataset.json beside it), prototypes, env restored."""
    from benchmarks import common, overhead, prototypes

    plans, dj = common.plans_like({"2d": common.plans_like_configuration([32, 32], batch_size=2)})
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    (tmp_path / "dataset.json").write_text(json.dumps(dj))
    monkeypatch.setenv("nnUNet_results", "/somewhere/else")
    out = tmp_path / "r.json"
    assert overhead.main(["--plans", str(tmp_path / "nnUNetPlans.json"), "-c", "2d", "--quick", "--prototypes",
                          "--trainer", "nnUNetTrainerMOSMOS_full", "--lean", "--no-isolate-memory", "--text-encoder", str(tiny_text_encoder),
                          "-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert os.environ["nnUNet_results"] == "/somewhere/else"
    c = r["configurations"]["2d"]
    _check_pair(c["train_step_s"], "train")
    for key in ("peak_mem_mb", "inference_peak_mem_mb"):
        assert c[key]["ratio"] is None and "not measured" in c[key]["method"]
    assert set(c["prototypes"]) == set(prototypes.PROTOTYPES)
    for p in c["prototypes"].values():
        assert _positive_finite(p["ratio_vs_plain"]) and _positive_finite(p["inference_ratio_vs_plain"])
        assert p["peak_mem_mb"] is None and p["peak_mem_ratio_vs_plain"] is None
        assert set(p["targets"]) == {"train_step_s", "inference_s", "peak_mem_mb"}
    # --lean: the shipped variant in the same interleaved run (the prototype of that name is the same class)
    lean = c["lean"]
    assert lean["class"] == "nnUNetTrainerMOSMOS_lean" == c["prototypes"]["lean"]["class"]
    assert _positive_finite(lean["ratio_vs_plain"]) and _positive_finite(lean["gain_vs_mosmos"])
    assert lean["params_m"] < c["plans"]["params_m"]["mosmos"]
    assert r["settings"]["variants"]["lean"] == "nnUNetTrainerMOSMOS_lean" and r["settings"]["isolate_memory"] is False


def test_plans_like_topology():
    from benchmarks.common import plans_like_configuration

    c2 = plans_like_configuration([64, 64])
    assert c2["architecture"]["arch_kwargs"]["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
    assert c2["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 512]
    c3 = plans_like_configuration([16, 32, 32])
    assert c3["architecture"]["arch_kwargs"]["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    with pytest.raises(ValueError):
        plans_like_configuration([32])


def test_memory_default_and_real_size_plans(capsys):
    """Memory is measured by default on CPU (opt out with --no-isolate-memory), in-process on CUDA; --real-size
    is nnU-Net's typical 2d (512x512, batch 12, 8 stages) and 3d_fullres (128^3, batch 2, 6 stages) plans."""
    from benchmarks.common import plans_like_configuration
    from benchmarks.overhead import REAL_SIZE, parse_args, variant_names

    assert parse_args([]).isolate_memory is True
    assert parse_args(["--quick"]).isolate_memory is True
    assert parse_args(["--no-isolate-memory"]).isolate_memory is False
    assert parse_args(["--device", "cuda"]).isolate_memory is False
    assert parse_args(["--device", "cuda", "--isolate-memory"]).isolate_memory is True
    assert list(variant_names(parse_args(["--lean"]))) == ["plain", "mosmos", "lean"]
    for argv in (["--real-size", "--patch", "32", "32"], ["--real-size", "--plans", "x.json"],
                 ["--memory-repeats", "0"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
        capsys.readouterr()
    r2 = REAL_SIZE["2d"]
    c2 = plans_like_configuration(r2["patch"], r2["batch_size"], max_stages=r2["max_stages"])
    a2 = c2["architecture"]["arch_kwargs"]
    assert c2["patch_size"] == [512, 512] and c2["batch_size"] == 12
    assert a2["n_stages"] == 8 and a2["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512, 512]
    c3 = plans_like_configuration(REAL_SIZE["3d_fullres"]["patch"], REAL_SIZE["3d_fullres"]["batch_size"])
    a3 = c3["architecture"]["arch_kwargs"]
    assert c3["patch_size"] == [128, 128, 128] and c3["batch_size"] == 2
    assert a3["n_stages"] == 6 and a3["features_per_stage"] == [32, 64, 128, 256, 320, 320]


def test_prototypes_are_class_attributes_only():
    """No prototype patches a shipped module: each is a shipped trainer or a one-attribute subclass."""
    import nnunet_mosmos.training as shipped
    from benchmarks.overhead import trainer_class
    from benchmarks.prototypes import PROTOTYPES

    for name, cls_name in PROTOTYPES.items():
        cls = trainer_class(cls_name)
        assert issubclass(cls, shipped.nnUNetTrainerMOSMOS), name
        if not hasattr(shipped, cls_name):  # one attribute changed from the full branch
            assert cls.__bases__ == (shipped.nnUNetTrainerMOSMOS_full,), name
            own = {k for k in vars(cls) if not k.startswith("__")}
            assert len(own) == 1 and own <= {"tag_decoder_kwargs", "tag_injection_levels", "train_prompt_context"}, \
                (name, own)
    assert trainer_class(PROTOTYPES["lean"]) is shipped.nnUNetTrainerMOSMOS_lean
    assert not trainer_class(PROTOTYPES["cached_embeddings"]).train_prompt_context


def test_harness_imports_public_names_only_and_the_packages_never_import_it():
    """benchmarks/ is not installed: it may import the packages (public names only, as it does its own
    siblings'), and nnunet_mosmos/pretrain must never import it."""
    import ast

    ours = ("benchmarks", "nnunet_mosmos", "pretrain")
    for f in sorted((REPO / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ours:
                assert not [a.name for a in node.names if a.name.startswith("_")], (f.name, node.module)
    for pkg in ("nnunet_mosmos", "pretrain"):
        for f in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not [m for m in modules if m.split(".")[0] == "benchmarks"], f
