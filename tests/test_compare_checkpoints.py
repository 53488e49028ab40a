"""benchmarks.compare_checkpoints --start: how far each part of a checkpoint moved in two runs."""
import math

import pytest
import torch

from benchmarks.compare_checkpoints import main, update_sizes


def _save(path, enc, dec):
    torch.save({"encoder": {"state_dict": {"w": enc}}, "tag_decoder": {"state_dict": {"w": dec}},
                "provenance": {"history": [1.0]}}, path)
    return str(path)


def test_update_sizes_per_part(tmp_path, capsys):
    start = _save(tmp_path / "s.pt", torch.zeros(3), torch.zeros(2))
    # run A moves the encoder by (3, 4, 0) and the decoder by (1, 0); run B twice as far / at right angles
    a = _save(tmp_path / "a.pt", torch.tensor([3.0, 4.0, 0.0]), torch.tensor([1.0, 0.0]))
    b = _save(tmp_path / "b.pt", torch.tensor([6.0, 8.0, 0.0]), torch.tensor([0.0, 1.0]))
    r = update_sizes(start, a, b)
    assert set(r) == {"encoder", "tag_decoder"}  # provenance is not a model part
    assert r["encoder"]["update_a"] == pytest.approx(5.0) and r["encoder"]["ratio"] == pytest.approx(2.0)
    assert r["encoder"]["cosine"] == pytest.approx(1.0)
    assert r["tag_decoder"]["ratio"] == pytest.approx(1.0) and r["tag_decoder"]["cosine"] == pytest.approx(0.0)
    main([a, b, "--start", start])
    out = capsys.readouterr().out
    assert "encoder: 1 tensors, |update| A 5.0000, B 10.0000, B/A 2.000, cosine 1.000" in out


def test_unmoved_part_has_infinite_ratio(tmp_path):
    start = _save(tmp_path / "s.pt", torch.zeros(2), torch.zeros(2))
    a = _save(tmp_path / "a.pt", torch.zeros(2), torch.ones(2))
    b = _save(tmp_path / "b.pt", torch.ones(2), torch.ones(2))
    assert math.isinf(update_sizes(start, a, b)["encoder"]["ratio"])
