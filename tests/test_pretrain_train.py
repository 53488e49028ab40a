"""Pre-training runs on CPU: the loss falls, --resume is exact, DDP (gloo, 2 processes), signals."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnunet_mosmos.checkpoint import load_mosmos_checkpoint
from pretrain.cli import main

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """32 synthetic axial image-report pairs (8 phantoms x 4 slices)."""
    from nnunet_mosmos.synthetic import write_dataset

    raw = tmp_path_factory.mktemp("raw")
    folder = write_dataset(raw, 901, num_train=8, num_test=0, shape=(16, 48, 48), slices_per_case=4)
    return folder / "pairs2d" / "manifest.csv"


def _args(pairs, text_encoder, out, *extra):
    return ["--data", "synthetic", "--manifest", str(pairs), "--text-encoder", str(text_encoder), "-o", str(out),
            "--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--device", "cpu",
            "--no-progress-bar", *map(str, extra)]


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_contrastive_loss_decreases(pairs, tiny_text_encoder, tmp_path):
    out = tmp_path / "run.pt"
    assert main(_args(pairs, tiny_text_encoder, out, "--max-steps", 60, "--lr", "1e-3", "--log-every", 5,
                      "--val-fraction", 0, "--seed", 0)) == 0
    ckpt = load_mosmos_checkpoint(out)
    hist = ckpt["provenance"]["history"]
    first = sum(h["contrastive"] for h in hist[:2]) / 2
    last = sum(h["contrastive"] for h in hist[-2:]) / 2
    print(f"contrastive loss: first 10 steps {first:.4f}, last 10 steps {last:.4f}")
    assert abs(first - math.log(8)) < 0.05  # chance level for a batch of 8 at the start
    assert last < first - 0.1
    assert ckpt["provenance"]["steps"] == 60
    run = tmp_path / "run_run"
    assert {"last.pt", "progress.png", "training_log.txt"} <= {p.name for p in run.iterdir()}
    assert "Tag frequencies" in (run / "training_log.txt").read_text()


def test_resume_continues_exactly(pairs, tiny_text_encoder, tmp_path):
    common = ("--max-steps", 8, "--save-every", 3, "--log-every", 2, "--num-workers", 1, "--val-fraction", 0.1)
    assert main(_args(pairs, tiny_text_encoder, tmp_path / "straight.pt", *common)) == 0
    assert main(_args(pairs, tiny_text_encoder, tmp_path / "split.pt", *common, "--stop-after", 4)) == 0
    assert _state(tmp_path / "split_run" / "last.pt")["step"] == 4
    assert not (tmp_path / "split.pt").exists()  # the checkpoint is written only when training is done
    assert main(_args(pairs, tiny_text_encoder, tmp_path / "split.pt", *common, "--resume")) == 0
    a, b = _state(tmp_path / "straight_run" / "last.pt"), _state(tmp_path / "split_run" / "last.pt")
    assert a["step"] == b["step"] == 8
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_resume_without_state_and_option_errors(pairs, tiny_text_encoder, tmp_path, capsys):
    assert main(_args(pairs, tiny_text_encoder, tmp_path / "x.pt", "--max-steps", 2, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["--data", "synthetic", "--manifest", str(pairs), "-c", "2d"]) == 2
    assert "-c/--configuration needs -d" in capsys.readouterr().err
    assert main(["--data", "synthetic", "--manifest", str(pairs)]) == 2
    assert "no output file" in capsys.readouterr().err
    assert main(_args(pairs, tiny_text_encoder, tmp_path / "x.pt", "--batch-size", 64)) == 2
    assert "too few" in capsys.readouterr().err


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def test_two_process_ddp_with_gloo(pairs, tiny_text_encoder, tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "pretrain.cli",
           *_args(pairs, tiny_text_encoder, out, "--max-steps", 3, "--batch-size", 4, "--log-every", 1)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    ckpt = load_mosmos_checkpoint(out)
    assert ckpt["provenance"]["optimizer"]["world_size"] == 2
    # the first step scores each image against the 8 reports of BOTH ranks: chance level is log(8)
    assert abs(ckpt["provenance"]["history"][0]["contrastive"] - math.log(8)) < 0.05
    # each rank caches the report embeddings of its own shard, in its own file next to last.pt
    counts = _state(tmp_path / "ddp_run" / "last.pt")["report_cache"]
    assert len(counts) == 2 and all(0 < n <= 12 for n in counts)
    for rank, n in enumerate(counts):
        saved = torch.load(tmp_path / "ddp_run" / f"report_embeddings.rank{rank}.pt", weights_only=True)
        assert len(saved["keys"]) == n and saved["features"].shape[0] == n


def _gather_worker(rank, world, port, folder):
    import torch.distributed as dist

    from pretrain.losses import ContrastiveLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 5), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(8, 5), dim=-1)
    local = image[rank * 4:(rank + 1) * 4].clone().requires_grad_()
    loss = ContrastiveLoss()(local, text[rank * 4:(rank + 1) * 4], torch.tensor(10.0))
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": local.grad / world}, Path(folder) / f"{rank}.pt")
    dist.destroy_process_group()


def test_gathered_contrastive_loss_equals_the_full_batch_loss(tmp_path):
    """Each rank's local loss + DDP averaging == the single-process loss on the whole batch, gradients too."""
    import socket

    import torch.multiprocessing as mp

    from pretrain.losses import ContrastiveLoss

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 5), dim=-1).requires_grad_()
    text = torch.nn.functional.normalize(torch.randn(8, 5), dim=-1)
    full = ContrastiveLoss()(image, text, torch.tensor(10.0))
    full.backward()
    assert torch.allclose(sum(p["loss"] for p in parts) / 2, full.detach(), atol=1e-6)
    assert torch.allclose(torch.cat([p["grad"] for p in parts]), image.grad, atol=1e-6)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_valid_last_pt_and_resume_continues(pairs, tiny_text_encoder, tmp_path, sig):
    out = tmp_path / "sig.pt"
    cmd = [str(BIN / "mosmos-pretrain"), *_args(pairs, tiny_text_encoder, out, "--max-steps", 100000,
                                                "--save-every", 100000, "--log-every", 1)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "sig_run" / "training_log.txt"
    deadline = time.time() + 180
    while time.time() < deadline and not (log.is_file() and "step 2/" in log.read_text()):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, output
    assert "Traceback" not in output and "--resume" in output
    state = _state(tmp_path / "sig_run" / "last.pt")
    assert state["format"] == "nnunet-mosmos-pretrain-state" and state["step"] >= 2
    assert not out.exists() and not list((tmp_path / "sig_run").glob(".*tmp*"))
    args = _args(pairs, tiny_text_encoder, out, "--max-steps", 100000, "--save-every", 100000, "--resume",
                 "--stop-after", 1)
    assert main(args) == 0
    assert _state(tmp_path / "sig_run" / "last.pt")["step"] == state["step"] + 1


def test_average_precision_and_learning_rate_schedule():
    import numpy as np

    from pretrain.engine import lr_lambda
    from pretrain.monitor import average_precision

    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(average_precision(np.array([0.5, 0.4]), np.array([0, 0])))
    f = lr_lambda(warmup=4, total=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(12) == pytest.approx(0.5) and f(20) == pytest.approx(0.0)


def test_tag_decoder_learning_rate_is_its_own_group():
    """--tag-decoder-lr: the decoder gets its own peak LR, the schedule scales it like the rest, and
    without it the optimizer keeps the two groups that earlier runs' --resume state has."""
    from torch import nn

    from pretrain.optim import lr_lambda, make_optimizer

    model = nn.Module()
    model.encoder = nn.Linear(4, 4)
    model.tag_decoder = nn.Linear(4, 2)
    assert [g["lr"] for g in make_optimizer(model, 1e-3, 0.05).param_groups] == [1e-3, 1e-3]
    opt = make_optimizer(model, 1e-3, 0.05, tag_decoder_lr=1e-2)
    own = {id(p) for p in model.tag_decoder.parameters()}
    by_lr: dict = {}
    for g in opt.param_groups:
        by_lr.setdefault(g["lr"], set()).update(id(p) for p in g["params"])
    assert set(by_lr) == {1e-3, 1e-2} and by_lr[1e-2] == own
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0, 0.05, 0.0]  # weights decay, biases not
    torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup=2, total=10))  # sets each group's lr at step 0
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([5e-4, 5e-3])  # warm-up step 1 of 2


def test_tag_decoder_lr_is_logged_and_recorded(pairs, tiny_text_encoder, tmp_path):
    out = tmp_path / "run.pt"
    assert main(_args(pairs, tiny_text_encoder, out, "--max-steps", 2, "--tag-decoder-lr", "3e-3",
                      "--val-fraction", 0)) == 0
    assert load_mosmos_checkpoint(out)["provenance"]["optimizer"]["tag_decoder_lr"] == 3e-3
    assert "lr 0.0003 (tag decoder 0.003)" in (tmp_path / "run_run" / "training_log.txt").read_text()
