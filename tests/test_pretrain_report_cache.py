"""The report-embedding cache (issue 13): the frozen text encoder's features per caption, computed once.

Same losses as encoding every batch (up to float32 rounding, 1e-5 relative), its own cache per DDP
rank (tests/test_pretrain_train.py runs two gloo processes), saved next to last.pt so that --resume
stays bit for bit.
"""
import math
import re
from pathlib import Path

import pytest
import torch

from pretrain.cli import main
from pretrain.text_cache import ReportEmbeddingCache, cache_file

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text(tiny_text_encoder):
    from nnunet_mosmos.text import TextEncoder

    return TextEncoder(str(tiny_text_encoder))


def test_cached_features_equal_the_encoder_and_each_caption_is_encoded_once(text):
    cache = ReportEmbeddingCache(text)
    first = ["CT: the liver is enlarged.", "The spleen is normal.", "CT: the liver is enlarged."]
    second = ["The spleen is normal.", "Both kidneys are small.", "CT: the liver is enlarged."]
    with torch.no_grad():
        for texts in (first, second):
            torch.testing.assert_close(cache(texts), text.encode(texts), atol=1e-6, rtol=0)
    assert len(cache) == 3 and cache.misses == 3 and cache.hits == 3


def test_saved_cache_reloads_its_prefix_and_refuses_another_encoder(text, tmp_path):
    cache = ReportEmbeddingCache(text)
    cache(["a liver", "a spleen"])
    cache(["a kidney"])
    state = cache.state_dict()
    torch.save(state, tmp_path / "c.pt")
    again = ReportEmbeddingCache(text)
    assert again.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True), rows=2) is None
    assert len(again) == 2 and torch.equal(again(["a spleen"]), cache(["a spleen"])) and again.misses == 0
    assert "expects 4" in again.load_state_dict(state, rows=4)
    assert "written for text encoder other" in again.load_state_dict({**state, "text_encoder": "other"}, rows=1)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """16 synthetic axial pairs: 4 phantoms x 4 slices, each slice with its own report."""
    from nnunet_mosmos.synthetic import write_dataset

    folder = write_dataset(tmp_path_factory.mktemp("raw"), 901, num_train=4, num_test=0, shape=(16, 48, 48),
                           slices_per_case=4)
    return folder / "pairs2d" / "manifest.csv"


def _args(pairs, text_encoder, out, *extra):
    return ["--data", "manifest", "--manifest", str(pairs), "--text-encoder", str(text_encoder), "-o", str(out),
            "--image-size", "32", "--batch-size", "4", "--num-workers", "0", "--device", "cpu",
            "--val-fraction", "0.25", "--no-progress-bar", "--log-every", "1", "--lr", "1e-3", *map(str, extra)]


def test_cached_and_uncached_runs_give_the_same_losses(pairs, tiny_text_encoder, tmp_path, capsys):
    assert main(_args(pairs, tiny_text_encoder, tmp_path / "cached.pt", "--max-steps", 9, "--save-every", 3)) == 0
    log = capsys.readouterr().out
    found = re.search(r"Report-embedding cache \(rank 0\): (\d+) distinct texts, (\d+) hits / (\d+) encoded", log)
    distinct, hits, misses = map(int, found.groups())
    assert distinct == misses <= 12 and hits == 9 * 4 - misses  # 12 training pairs, 3 epochs: hits from epoch 2 on
    assert main(_args(pairs, tiny_text_encoder, tmp_path / "plain.pt", "--max-steps", 9, "--save-every", 3,
                "--no-report-cache")) == 0
    cached, plain = (torch.load(tmp_path / f"{n}_run" / "last.pt", weights_only=True) for n in ("cached", "plain"))
    assert len(cached["history"]) == len(plain["history"]) == 9
    # same values up to float32 rounding: a cached embedding was computed in another batch (other
    # padding) than its recomputation, so losses drift by ~1e-6 relative over a few steps (CI saw 1.2e-6)
    for a, b in zip(cached["history"], plain["history"]):
        assert a["step"] == b["step"] and math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)
    assert cached["report_cache"] == [distinct] and plain["report_cache"] == [0]
    assert cache_file(tmp_path / "cached_run", 0).is_file() and not cache_file(tmp_path / "plain_run", 0).exists()


def test_resume_without_the_cache_file_says_so_and_continues(pairs, tiny_text_encoder, tmp_path, capsys):
    out = tmp_path / "r.pt"
    assert main(_args(pairs, tiny_text_encoder, out, "--max-steps", 4, "--stop-after", 2)) == 0
    Path(cache_file(tmp_path / "r_run", 0)).unlink()
    capsys.readouterr()
    assert main(_args(pairs, tiny_text_encoder, out, "--max-steps", 4, "--resume")) == 0
    log = capsys.readouterr().out
    assert "WARNING: report-embedding cache not reused (rank 0: " in log and "will not repeat bit for bit" in log
    assert torch.load(tmp_path / "r_run" / "last.pt", weights_only=True)["step"] == 4
