"""Bad input in pre-training (issue 11): truncated volumes, malformed manifests, the output and run folder
(refused re-runs, concurrent runs, read-only folders, failed saves, stale temp files), inputs smaller than
the encoder's stride, constant images, checkpoint permissions.

The end-to-end cases run the real ``mosmos-pretrain`` console script in a subprocess and check the exit
code, the one-line message (no traceback) and what is, or is not, left on disk.
"""
import errno
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from nnunet_mosmos.checkpoint import atomic_torch_save
from nnunet_mosmos.images import TruncatedImageError, check_complete
from pretrain.datasets import PairDataset, VolumePairDataset
from pretrain.normalization import Normalizer
from pretrain.pairs import Pair, PairDataError
from pretrain.patches import PatchSampler
from pretrain.sources import load_pairs
from pretrain.transforms import PairTransform
from pretrain.volumes import read_volume

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _volume(path: Path, shape=(12, 24, 24), seed=0) -> Path:
    array = (np.random.default_rng(seed).random(shape) * 1000).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _cut(path: Path, keep: float = 0.6) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * keep)])
    return path


# --------------------------------------------------------------------------- truncated volumes
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_is_detected_where_simpleitk_would_zero_fill(tmp_path, suffix):
    good = _volume(tmp_path / f"good{suffix}")
    check_complete(good)  # complete: no error
    cut = _cut(_volume(tmp_path / f"cut{suffix}"))
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(cut)))  # what SimpleITK alone does: no error, zeros
    assert array.shape == (12, 24, 24) and not array[-1].any()
    with pytest.raises(TruncatedImageError, match=r"cut.* is truncated: its header describes 24x24x12 voxels of 16 "
                                                  r"bits"):
        check_complete(cut)
    with pytest.raises(TruncatedImageError):
        read_volume(cut)
    assert isinstance(TruncatedImageError("x"), RuntimeError)  # handled wherever SimpleITK's errors are


def test_complete_multi_member_gzip_passes(tmp_path):
    """A valid gzip may hold several members; its trailer then records only the last one's size."""
    raw = gzip.decompress(_volume(tmp_path / "v.nii.gz").read_bytes())
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    check_complete(tmp_path / "multi.nii.gz")
    assert read_volume(tmp_path / "multi.nii.gz").array.shape == (12, 24, 24)


def test_truncated_volume_is_replaced_and_counted_in_2d_and_3d(tmp_path):
    good = _volume(tmp_path / "good.nii.gz")
    cut = _cut(_volume(tmp_path / "cut.nii.gz", seed=1))
    pairs = [Pair("cut", cut, "liver", (0,)), Pair("good", good, "spleen", (1,))]
    for ds in (PairDataset(pairs, 2, PairTransform(16, train=True)),
               VolumePairDataset(pairs, 2, PatchSampler((4, 8, 8), None), Normalizer())):
        item = ds[(0, 0)]
        assert item["index"] == 1 and item["text"] == "spleen"
        assert len(item["failed"]) == 1 and "cut.nii.gz" in item["failed"][0] and "truncated" in item["failed"][0]


# --------------------------------------------------------------------------- constant images
def test_constant_images_are_replaced_and_counted(tmp_path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "black.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "ok.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 10, 10), -1024, np.int16)), str(tmp_path / "air.nii.gz"))
    pairs = [Pair("black", tmp_path / "black.png", "liver", (0,)), Pair("ok", tmp_path / "ok.png", "liver", (0,))]
    item = PairDataset(pairs, 1, PairTransform(16))[(0, 0)]
    assert item["index"] == 1 and item["constant"] == [str(tmp_path / "black.png")] and item["failed"] == []
    volumes = [Pair("air", tmp_path / "air.nii.gz", "liver", (0,)), Pair("v", _volume(tmp_path / "v.nii.gz"), "x", ())]
    item = VolumePairDataset(volumes, 1, PatchSampler((4, 8, 8), None), Normalizer())[(0, 0)]
    assert item["index"] == 1 and item["constant"] == [str(tmp_path / "air.nii.gz")]


# --------------------------------------------------------------------------- manifests
def test_csv_row_with_more_fields_than_the_header_is_an_error(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "manifest.csv").write_text('image,text\na.png,"CT: the liver, the spleen."\n'
                                           "a.png,CT: the liver, the spleen and the kidneys are normal.\n")
    with pytest.raises(PairDataError) as info:
        load_pairs("manifest", manifest=tmp_path / "manifest.csv")
    assert str(info.value).startswith('manifest.csv line 3 has 3 fields, the header has 2: quote the text')


@pytest.mark.parametrize("content, message", [
    ('{"img": "a.png", "caption": "liver"}\n', r"line 1 has the keys \['caption', 'img'\], expected 'image' and 'text'"),
    ('{"image": "a.png", "report": "liver"}\n', r"line 1 has the keys \['image', 'report'\], expected 'image' and "
                                                r"'text'"),
    ('[{"image": "a.png", "text": "liver"}]\n', r"holds a JSON array, not JSON Lines: write one object per line"),
    ('"a.png"\n', r"line 1 is a JSON str, expected an object"),
])
def test_jsonl_with_the_wrong_shape_names_what_was_found_and_what_is_expected(tmp_path, content, message):
    (tmp_path / "m.jsonl").write_text(content)
    with pytest.raises(PairDataError, match=message):
        load_pairs("manifest", manifest=tmp_path / "m.jsonl")


def test_jsonl_rows_without_a_report_are_still_allowed(tmp_path):
    """negative-free keeps rows without text: a line with only 'image' (or extra keys beside 'text') is fine."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text('{"image": "a.png"}\n{"image": "a.png", "text": "liver", "patient": 7}\n')
    source = load_pairs("manifest", manifest=tmp_path / "m.jsonl", allow_missing_text=True)
    assert [p.text for p in source.pairs] == ["", "liver"]


def test_folder_given_as_manifest(tmp_path):
    (tmp_path / "reports.csv").write_text("image,text\n")
    with pytest.raises(PairDataError, match=r"is a folder; give the manifest file itself \(the folder holds "
                                            r"reports.csv\)"):
        load_pairs("manifest", manifest=tmp_path)


# --------------------------------------------------------------------------- sizes
def test_input_smaller_than_the_total_stride_is_refused_with_the_minimum():
    from plans_fixtures import configuration

    from nnunet_mosmos.encoders import twin_2d_arch_kwargs
    from pretrain.plans import EncoderSpec, PlansError, check_input_size

    cm = configuration(2)  # 4 stages, total stride 8
    spec = EncoderSpec(cm.network_arch_class_name, twin_2d_arch_kwargs(cm.network_arch_init_kwargs),
                       list(cm.network_arch_init_kwargs_req_import), (8, 8))
    with pytest.raises(PlansError, match=r"--image-size 8x8 is too small for this encoder: its 4 stages have a total "
                                         r"stride of 8x8.*The minimum is 9 px on at least one axis"):
        check_input_size(spec)
    spec.image_size = (8, 9)
    check_input_size(spec)  # a 1x2 deepest map normalises


# --------------------------------------------------------------------------- permissions
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_save_keeps_the_users_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        path = atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == expected
    os.chmod(path, 0o640)
    atomic_torch_save({"a": 2}, path)  # a replaced file keeps its mode, as torch.save's would
    assert path.stat().st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------- the run folder
def test_lock_of_a_dead_process_is_removed_a_live_one_refuses(tmp_path):
    from pretrain.config import PretrainError
    from pretrain.run_folder import LOCK_NAME, RunFolder

    folder = RunFolder(tmp_path / "x.pt")
    folder.path.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder.path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    notes = folder.claim(resume=False, overwrite=False)
    assert any("Removed the lock" in n for n in notes) and folder.owned
    assert json.loads((folder.path / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(PretrainError, match=f"another mosmos-pretrain \\(pid {os.getpid()}\\) is writing to"):
        RunFolder(tmp_path / "x.pt").claim(resume=False, overwrite=False)
    folder.release()
    assert not (folder.path / LOCK_NAME).exists()
    (folder.path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(PretrainError, match="locked by pid 1 on host elsewhere"):
        RunFolder(tmp_path / "x.pt").claim(resume=False, overwrite=False)


def test_failed_save_is_one_line_and_leaves_no_temp_file(pairs, tiny_text_encoder, tmp_path, monkeypatch, capsys):
    from pretrain.cli import main

    out = tmp_path / "full.pt"
    assert main(_args(pairs, tiny_text_encoder, out, "--max-steps", 2, "--save-every", 1)) == 0
    before = (tmp_path / "full_run" / "last.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        if hasattr(f, "write"):
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    capsys.readouterr()
    code = main(_args(pairs, tiny_text_encoder, out, "--max-steps", 4, "--save-every", 1, "--resume"))
    monkeypatch.setattr(torch, "save", real_save)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("mosmos-pretrain: error:")]
    assert len(lines) == 1 and "could not write" in lines[0] and "No space left on device" in lines[0]
    assert "the disk is full" in lines[0] and "the previous last.pt is intact" in lines[0]
    assert (tmp_path / "full_run" / "last.pt").read_bytes() == before
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "full_run" / ".mosmos-pretrain.lock").exists()


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """16 synthetic axial image-report pairs (4 phantoms x 4 slices), PNG, with its manifest."""
    from nnunet_mosmos.synthetic import write_dataset

    raw = tmp_path_factory.mktemp("raw")
    folder = write_dataset(raw, 901, num_train=4, num_test=0, shape=(16, 48, 48), slices_per_case=4)
    return folder / "pairs2d" / "manifest.csv"


def _args(pairs, text_encoder, out, *extra):
    return ["--data", "manifest", "--manifest", str(pairs), "--text-encoder", str(text_encoder), "-o", str(out),
            "--image-size", "32", "--batch-size", "4", "--num-workers", "0", "--device", "cpu",
            "--val-fraction", "0", "--no-progress-bar", *map(str, extra)]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _cli(args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mosmos-pretrain"), *args], env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mosmos-pretrain: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_e2e_output_that_is_a_folder_or_not_writable(pairs, tiny_text_encoder, tmp_path):
    (tmp_path / "out").mkdir()
    before = _tree(tmp_path)
    line = _one_error_line(_cli(_args(pairs, tiny_text_encoder, tmp_path / "out", "--max-steps", 1)))
    assert f"-o {tmp_path / 'out'} is a folder; give the checkpoint's file name" in line
    assert _tree(tmp_path) == before
    locked = tmp_path / "readonly"
    locked.mkdir(mode=0o555)
    if _writable(locked):  # root writes through permission bits: take a read-only file system instead
        locked = Path("/sys")
        if not locked.is_dir() or _writable(locked):
            pytest.skip("no folder this process cannot write to")
    target = locked / "sub" / "x.pt"
    line = _one_error_line(_cli(_args(pairs, tiny_text_encoder, target, "--max-steps", 1)))
    assert f"cannot write to {locked} (" in line and "pick a writable -o" in line
    assert not target.parent.exists()


def test_e2e_malformed_csv_manifest(pairs, tiny_text_encoder, tmp_path):
    rows = pairs.read_text().splitlines()
    image = rows[1].split(",")[0]
    (tmp_path / "manifest.csv").write_text(
        "image,text\n" + f"{pairs.parent / image},CT: the liver, the spleen and both kidneys are normal.\n")
    line = _one_error_line(_cli(_args(tmp_path / "manifest.csv", tiny_text_encoder, tmp_path / "m.pt")))
    assert line == ("mosmos-pretrain: error: manifest.csv line 2 has 3 fields, the header has 2: quote the text "
                    f'("...") when it holds commas ({tmp_path / "manifest.csv"})')
    assert not (tmp_path / "m_run").exists() and not (tmp_path / "m.pt").exists()


def test_e2e_too_small_for_the_encoder(pairs, tiny_text_encoder, tmp_path):
    from plans_fixtures import configuration

    pre = tmp_path / "pre" / "Dataset950_Tiny"
    pre.mkdir(parents=True)
    cm = configuration(2, n_stages=5)  # total stride 16
    (pre / "nnUNetPlans.json").write_text(json.dumps({"dataset_name": pre.name, "plans_name": "nnUNetPlans",
                                                      "configurations": {"2d": cm.configuration}}))
    (pre / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}}))
    args = [*_args(pairs, tiny_text_encoder, tmp_path / "t.pt"), "--image-size", "16", "-d", "950", "-c", "2d"]
    line = _one_error_line(_cli(args, env=_env(nnUNet_preprocessed=str(tmp_path / "pre"))))
    assert "--image-size 16x16 is too small for this encoder: its 5 stages have a total stride of 16x16" in line
    assert "The minimum is 17 px on at least one axis" in line and not (tmp_path / "t_run").exists()


def test_e2e_truncated_and_constant_images_are_skipped_counted_and_named(pairs, tiny_text_encoder, tmp_path):
    manifest = tmp_path / "mixed.csv"
    rows = [line.split(",", 1) for line in pairs.read_text().splitlines()[1:]]
    lines = [f"{pairs.parent / image},{text}" for image, text in rows][:14]  # 16 rows: 4 batches draw them all
    _cut(_volume(tmp_path / "cut.nii.gz"))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "black.png")
    lines[:0] = ['cut.nii.gz,"CT: the liver is normal."', 'black.png,"CT: the liver is normal."']
    manifest.write_text("image,text\n" + "\n".join(lines) + "\n")
    proc = _cli(_args(manifest, tiny_text_encoder, tmp_path / "mixed.pt", "--max-steps", 4, "--dim", 2))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Unreadable images replaced by the next pair: 1" in out and "cut.nii.gz" in out and "truncated" in out
    assert "WARNING: constant (zero-variance) image(s), replaced by the next pair" in out
    assert "Constant (zero-variance) images replaced by the next pair: 1" in out and "black.png" in out
    assert (tmp_path / "mixed.pt").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_e2e_rerun_is_refused_concurrent_run_is_locked_out_and_sigkill_resumes_exactly(pairs, tiny_text_encoder,
                                                                                       tmp_path):
    common = ["--max-steps", 100000, "--save-every", 3, "--log-every", 1, "--seed", 3]
    out, run = tmp_path / "k.pt", tmp_path / "k_run"
    output = tmp_path / "first.out"
    with open(output, "w") as sink:
        first = subprocess.Popen([str(BIN / "mosmos-pretrain"), *_args(pairs, tiny_text_encoder, out, *common)],
                                 env=_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((run / "training_log.txt").is_file()
                                              and "step 4/" in (run / "training_log.txt").read_text()):
            assert first.poll() is None, output.read_text()
            time.sleep(0.2)
        second = _cli(_args(pairs, tiny_text_encoder, out, *common, "--resume"))  # same -o while the first runs
        assert f"another mosmos-pretrain (pid {first.pid}) is writing to {run}" in _one_error_line(second)
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert (run / ".mosmos-pretrain.lock").is_file()  # left behind by the killed run
    (run / ".last.pt.interrupted.tmp").write_bytes(b"half a save")  # as a kill during a save leaves it
    killed_at = torch.load(run / "last.pt", weights_only=True)["step"]
    before = (run / "last.pt").read_bytes()

    line = _one_error_line(_cli(_args(pairs, tiny_text_encoder, out, *common)))  # no --resume: refused
    assert f"an earlier run wrote {run / 'last.pt'}: add --resume to continue it, --overwrite to start over" in line
    assert (run / "last.pt").read_bytes() == before
    assert not (run / ".mosmos-pretrain.lock").exists()  # the dead run's lock was recognised as stale

    proc = _cli(_args(pairs, tiny_text_encoder, out, *common, "--resume", "--stop-after", 3))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "temporary file(s) an interrupted save left behind:" in proc.stdout
    assert ".last.pt.interrupted.tmp" in proc.stdout
    assert not (run / ".mosmos-pretrain.lock").exists() and not list(run.glob(".*tmp*"))

    straight = tmp_path / "s.pt"
    proc = _cli(_args(pairs, tiny_text_encoder, straight, *common, "--stop-after", killed_at + 3))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = torch.load(run / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "s_run" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == killed_at + 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])  # SIGKILL + resume: bit for bit
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]

    proc = _cli(_args(pairs, tiny_text_encoder, out, *common, "--max-steps", 2, "--overwrite"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--overwrite: removed last.pt, training_log.txt, progress.png" in proc.stdout
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2 and out.is_file()
