"""scripts/gpu_kit.sh: the dry run (every step of the device run, tiny and on CPU) and the kit's parts.

The device run itself needs the GPU machine; what can go wrong before it (a step's command line, the
budget, the output folder's shape, the text model's architecture, the wheel repacking) is tested here.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_kit.sh"
STEPS = ["env", "text_model", "overhead_3d_fullres", "overhead_2d", "pretrain_2d", "pretrain_3d", "e2e"]
OUTPUTS = {"kit.json", "kit.log", "overhead_3d_fullres.json", "overhead_2d.json", "pretrain_2d.json",
           "pretrain_3d.json", "e2e.json"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("kit_out"), tmp_path_factory.mktemp("kit_work")
    env = dict(os.environ, KIT_WORK=str(work), KIT_PYTHON=sys.executable, HF_HUB_OFFLINE="1")
    for key in ("MOSMOS_TEXT_ENCODER", "MOSMOS_PRETRAINED", "KIT_STEPS", "KIT_TOTAL_S", "nnUNet_compile"):
        env.pop(key, None)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], env=env, capture_output=True, text=True,
                          timeout=2400, cwd=str(REPO))
    return proc, out, work


@pytest.mark.slow
def test_dry_run_output_shape(dry_run):
    proc, out, work = dry_run
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    files = {p.name for p in out.iterdir()}
    assert files == OUTPUTS and len(files) <= 8  # the device tool returns at most 8 files
    kit = json.loads((out / "kit.json").read_text())
    assert kit["kit"] == "mosmos_gpu_kit" and kit["mode"] == "dry" and kit["ok"] is True
    assert [s["name"] for s in kit["steps"]] == STEPS and all(s["status"] == "ok" for s in kit["steps"])
    assert set(kit["outputs"]) == OUTPUTS
    res = kit["results"]
    assert res["env"]["import_errors"] == [] and res["env"]["cuda_available"] in (True, False)
    minilm = res["text_model"]["config"]
    assert (minilm["num_hidden_layers"], minilm["hidden_size"], minilm["num_attention_heads"],
            minilm["intermediate_size"], minilm["vocab_size"]) == (6, 384, 12, 1536, 30522)
    assert res["text_model"]["vocab_size"] == 30522 and 22 < res["text_model"]["params_m"] < 23.5
    for config in ("3d_fullres", "2d"):
        row = res[f"overhead_{config}"][config]
        for variant in ("mosmos", "lean"):
            assert row[variant]["train"] > 0 and row[variant]["inference"] > 0, (config, variant, row)
        full = json.loads((out / f"overhead_{config}.json").read_text())
        assert full["settings"]["lean"] is True and full["settings"]["device"] == "cpu"
        assert full["settings"]["text_encoder"] == str(work / "text_encoder")
    for dim in ("2d", "3d"):
        (point,) = res[f"pretrain_{dim}"]
        assert point["pairs_per_s_full"] > 0 and point["ratio"] > 0
        assert len(point["image_size"]) == (2 if dim == "2d" else 3)
    e2e = res["e2e"]
    assert e2e["ok"] is True and e2e["compiled"] is False  # nnU-Net compiles on CUDA only
    assert len(e2e["epoch_times_s"]) == 1 and 0 <= e2e["mean_dice"] <= 1
    assert set(e2e["step_seconds"]) == {"synthetic", "plan_and_preprocess", "train", "predict", "evaluate"}
    full = json.loads((out / "e2e.json").read_text())
    assert full["settings"]["trainer"] == "nnUNetTrainerMOSMOS_study" and full["prediction"]["cases"] == 1
    log = (out / "kit.log").read_text()
    for name in STEPS:
        assert f"===== {name}: ok" in log
    assert "training_log_" in log and "e2e_train.log" in log
    assert "MOSMOS GPU kit (dry): all steps ok" in proc.stdout


def test_gpu_step_commands(tmp_path):
    """The device run: CUDA, compile, autocast, real sizes, the lean branch, the e2e run on CUDA."""
    from benchmarks.gpu.kit import OUTPUTS as KIT_OUTPUTS
    from benchmarks.gpu.kit import SHARES, step_commands

    cmds = step_commands("gpu", tmp_path / "out", tmp_path / "work", "python3")
    assert list(cmds) == STEPS == list(SHARES)
    for name in ("overhead_3d_fullres", "overhead_2d"):
        c = cmds[name]
        assert c[1] == "scripts/bench_overhead.py" and "--quick" not in c
        assert {"--compile", "--real-size", "--lean"} <= set(c) and c[c.index("--device") + 1] == "cuda"
        assert c[c.index("--trainer") + 1] == "nnUNetTrainerMOSMOS_full"  # full vs lean in one run
        assert c[c.index("-c") + 1] == name.split("_", 1)[1]
    for name in ("pretrain_2d", "pretrain_3d"):
        c = cmds[name]
        assert {"--amp", "--compile", "--real-size"} <= set(c) and c[c.index("--device") + 1] == "cuda"
    assert "--dim" in cmds["pretrain_3d"] and "--dim" not in cmds["pretrain_2d"]
    e2e = cmds["e2e"]
    assert e2e[e2e.index("--device") + 1] == "cuda" and e2e[e2e.index("--size") + 1] == "gpu"
    for name, file in KIT_OUTPUTS.items():
        assert str(tmp_path / "out" / file) in cmds[name]
    assert len(KIT_OUTPUTS) + 2 <= 8  # + kit.json + kit.log: what the device tool returns
    dry = step_commands("dry", tmp_path / "out", tmp_path / "work", "python3")
    assert all("--compile" not in c and "--real-size" not in c for c in dry.values())


def test_budget_stops_a_step_and_skips_the_rest(tmp_path, monkeypatch):
    """A step that overruns its share is killed (its whole process group); with nothing left, the rest is skipped."""
    from benchmarks.gpu import kit

    slow = [sys.executable, "-c", "import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"]
    monkeypatch.setattr(kit, "step_commands", lambda *a: {"pretrain_2d": slow, "e2e": slow})
    monkeypatch.setattr(kit, "MIN_STEP_S", 2)
    result = kit.run_kit("dry", tmp_path / "out", tmp_path / "work", 3.0, ["pretrain_2d", "e2e"], sys.executable)
    first, second = result["steps"]
    assert first["status"] == "timeout" and first["wall_s"] < 30
    assert second["status"] == "skipped" and result["ok"] is False
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"kit.json", "kit.log"}
    assert json.loads((tmp_path / "out" / "kit.json").read_text())["steps"][0]["status"] == "timeout"


def test_repacked_wheel_keeps_its_members_and_pip_installs_it(tmp_path):
    """The bundle fits 64 MiB only because its wheels are LZMA-packed: pip must still install them."""
    import base64
    import hashlib

    from benchmarks.gpu.bundle import repack

    code = "".join(f"VALUE_{i} = {i * i % 977}  # line {i}\n" for i in range(20000)).encode()
    files = {"kitdemo/__init__.py": code,
             "kitdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: kitdemo\nVersion: 1.0\n",
             "kitdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n"}

    def record_line(name, data):
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{name},sha256={digest},{len(data)}\n"

    files["kitdemo-1.0.dist-info/RECORD"] = ("".join(record_line(n, d) for n, d in files.items())
                                             + "kitdemo-1.0.dist-info/RECORD,,\n").encode()
    wheel = tmp_path / "kitdemo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    before, after = repack(wheel)
    assert after < before
    with zipfile.ZipFile(wheel) as z:
        assert {i.filename: z.read(i) for i in z.infolist()} == files
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--disable-pip-version-check", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (target / "kitdemo" / "__init__.py").read_bytes() == code


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_bundle_check_counts_the_working_tree(tmp_path):
    from benchmarks.gpu.bundle import LIMIT_BYTES, WHEELS, check

    repo, bundle = tmp_path / "repo", tmp_path / "bundle"
    repo.mkdir()
    bundle.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "tracked.txt").write_bytes(b"a" * 1000)
    (repo / ".gitignore").write_text("ignored/\n")
    (repo / "ignored").mkdir()
    (repo / "ignored" / "big.bin").write_bytes(b"b" * 5000)
    (bundle / "nnunetv2-2.8.1-py3-none-any.whl").write_bytes(b"c" * 2000)
    r = check(bundle, repo)
    assert r["working_tree_bytes"] == 1000 + len("ignored/\n") and r["bundle_bytes"] == 2000
    assert r["total_bytes"] == r["working_tree_bytes"] + 2000 < LIMIT_BYTES
    assert "nnunetv2==2.8.1" not in r["missing"] and len(r["missing"]) == len(WHEELS) - 1 and r["fits"] is False


def test_text_model_has_minilm_architecture(tmp_path):
    """Random weights, all-MiniLM-L6-v2's shape; it loads through the package's own TextEncoder."""
    import torch

    from benchmarks.gpu.text_model import MINILM_L6_V2, make_minilm_like
    from nnunet_mosmos.text import TextEncoder

    info = make_minilm_like(tmp_path / "minilm")
    config = json.loads((tmp_path / "minilm" / "config.json").read_text())
    assert {k: config[k] for k in MINILM_L6_V2} == MINILM_L6_V2
    assert info["vocab_size"] == 30522 and 22 < info["params_m"] < 23.5  # all-MiniLM-L6-v2: 22.7 M
    enc = TextEncoder(str(tmp_path / "minilm"))
    assert enc.dim == 384
    ids = enc.tokenizer("a medical image of the liver")["input_ids"]
    assert enc.tokenizer.unk_token_id not in ids and len(ids) == 8  # [CLS] 6 words [SEP]: whole words, known
    with torch.no_grad():
        out = enc.encode(["a medical image of the liver", "right kidney"])
    assert out.shape == (2, 384) and torch.isfinite(out).all()
