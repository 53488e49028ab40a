"""Pre-training data: ROCO v1/v2 (real CC BY captions, generated images), manifests, bad samples."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from nnunet_mosmos.tags import TagVocabulary, extract_tags
from pretrain.datasets import PairDataset, collate_pairs
from pretrain.pairs import Pair, PairDataError, describe_source, split_pairs
from pretrain.sources import load_pairs
from pretrain.sources.roco import RocoLayoutError, read_roco_v1
from pretrain.transforms import PairTransform

ROCO_COPY = Path(__file__).parent / "data" / "roco_ccby"
ROCO_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "roco"
N_IMAGES = 40  # figures "downloaded"; the other captions have no image (as after a partial fetch)


def _records():
    """Real CC BY captions: the copy in tests/data, else the CC BY rows of the shared ROCO test split."""
    if (ROCO_COPY / "test" / "radiology" / "captions.txt").is_file():
        return read_roco_v1(ROCO_COPY, "test", "radiology")
    if (ROCO_SHARED / "test" / "radiology" / "captions.txt").is_file():
        return [r for r in read_roco_v1(ROCO_SHARED, "test", "radiology") if r.licence == "CC BY"][:200]
    pytest.skip("no ROCO captions available")


def _jpg(path: Path, seed: int, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def records():
    return _records()


@pytest.fixture
def roco_v1(tmp_path, records):
    """ROCO v1 layout with the real caption files and JPEGs for the first N_IMAGES figures."""
    folder = tmp_path / "roco" / "test" / "radiology"
    folder.mkdir(parents=True)
    ids = [r.id for r in records]
    (folder / "captions.txt").write_text("".join(f"{r.id}\t {r.caption}\n" for r in records), encoding="utf-8")
    (folder / "cuis.txt").write_text("".join(f"{r.id}\t\t" + "\t".join(r.cuis) + "\n" for r in records))
    (folder / "licences.txt").write_text("ROCO_ID,PMC_ID,CC\n" + "".join(f"{i},PMC1_x.jpg,CC BY\n" for i in ids))
    for i, rid in enumerate(ids[:N_IMAGES]):
        _jpg(folder / "images" / f"{rid}.jpg", i)
    return tmp_path / "roco"


@pytest.fixture
def roco_v2(tmp_path, records):
    """ROCO v2 layout (CSV with quoted captions keeping stray spaces) with the same captions."""
    root = tmp_path / "roco2"
    root.mkdir()
    with open(root / "test_captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["ID", "Caption"])
        for i, r in enumerate(records):
            w.writerow([f"ROCOv2_2023_test_{i:06d}", f"  {r.caption} "])
    with open(root / "test_concepts.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ID", "CUIs"])
        for i, r in enumerate(records):
            w.writerow([f"ROCOv2_2023_test_{i:06d}", ";".join(r.cuis)])
    for i in range(N_IMAGES):
        _jpg(root / "test" / f"ROCOv2_2023_test_{i:06d}.jpg", i)
    return root


def _expected(records, with_image):
    vocab = TagVocabulary.default()
    tagged = [r for r in records[:with_image] if extract_tags(r.caption, vocab)]
    return tagged, with_image - len(tagged), len(records) - with_image


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_roco_pairs_are_skipped_and_counted_by_reason(layout, roco_v1, roco_v2, records):
    root = roco_v1 if layout == "v1" else roco_v2
    source = load_pairs("roco", roco_root=root, split="test")
    tagged, untagged, missing = _expected(records, N_IMAGES)
    assert len(source.pairs) == len(tagged) > 5
    assert source.skipped.counts["missing image"] == missing
    assert source.skipped.counts["caption with no organ tag"] == untagged
    assert source.skipped.total() + len(source.pairs) == len(records)
    names = source.vocabulary.names
    for pair, record in zip(source.pairs, tagged):
        assert {names[t] for t in pair.tags} == extract_tags(record.caption)
        assert pair.text == " ".join(record.caption.split())  # v2's stray spaces are gone
        assert pair.image.is_file()
    text = describe_source(source)
    assert "Tag frequencies" in text and "missing image" in text
    assert sum(source.tag_frequencies().values()) == sum(len(p.tags) for p in source.pairs)


def test_roco_caption_with_bad_bytes_is_skipped_and_counted_not_fatal(roco_v1, records):
    captions = roco_v1 / "test" / "radiology" / "captions.txt"
    lines = captions.read_bytes().splitlines(keepends=True)
    rid = records[0].id
    lines[0] = rid.encode() + b"\t Liver \xff\xfe lesion on CT.\n"  # not UTF-8
    captions.write_bytes(b"".join(lines))
    source = load_pairs("roco", roco_root=roco_v1, split="test", keep_untagged=True)
    assert source.skipped.counts["non-UTF-8 caption"] == 1
    assert rid not in {p.image.stem for p in source.pairs}


def test_roco_keep_untagged(roco_v1, records):
    source = load_pairs("roco", roco_root=roco_v1, split="test", keep_untagged=True)
    assert len(source.pairs) == N_IMAGES
    assert "caption with no organ tag" not in source.skipped.counts


def test_roco_dataset_items_and_unreadable_image_replacement(roco_v1):
    source = load_pairs("roco", roco_root=roco_v1, split="test")
    source.pairs[0].image.write_bytes(b"this is not a JPEG")  # corrupt after the cheap checks
    ds = PairDataset(source.pairs, len(source.vocabulary), PairTransform(32, train=True), seed=0)
    item = ds[(0, 0)]
    assert item["index"] == 1 and len(item["failed"]) == 1
    assert str(source.pairs[0].image) in item["failed"][0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["tags"].shape == (len(source.vocabulary),)
    assert item["tags"][list(source.pairs[1].tags)].eq(1).all() and item["tags"].sum() == len(source.pairs[1].tags)
    batch = collate_pairs([ds[(i, 0)] for i in range(4)])
    assert batch["image"].shape == (4, 1, 32, 32) and len(batch["text"]) == 4 and len(batch["failed"]) == 1


def test_wrong_roco_layout_is_a_hard_error(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RocoLayoutError, match="captions"):
        load_pairs("roco", roco_root=tmp_path, split="train")
    from pretrain.cli import main

    assert main(["--data", "roco", "--roco-root", str(tmp_path), "-o", str(tmp_path / "x.pt")]) != 0
    err = capsys.readouterr().err
    assert "mosmos-pretrain: error:" in err and "ROCO" in err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x_run").exists()  # nothing half-written


def test_zero_usable_pairs_is_a_hard_error(roco_v1, capsys):
    shutil.rmtree(roco_v1 / "test" / "radiology" / "images")
    with pytest.raises(PairDataError, match="no usable image-text pairs"):
        load_pairs("roco", roco_root=roco_v1, split="test")
    from pretrain.cli import main

    assert main(["--data", "roco", "--roco-root", str(roco_v1), "--split", "test", "-o",
                 str(roco_v1 / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "no usable image-text pairs" in err and "missing image" in err


# --------------------------------------------------------------------------- manifests
def _manifest_files(folder: Path):
    """Good and bad samples of every kind, plus the expected outcome."""
    (folder / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 40), dtype=np.uint8)).save(folder / "img" / "grey.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "img" / "rgb.jpg")
    Image.fromarray(rng.integers(0, 4000, (36, 36)).astype(np.uint16)).save(folder / "img" / "deep.png")
    vol = sitk.GetImageFromArray(rng.normal(100, 30, (6, 24, 28)).astype(np.float32))
    sitk.WriteImage(vol, str(folder / "img" / "ct.nii.gz"))
    good = [("img/grey.png", "Axial CT of the liver."), ("img/rgb.jpg", "Chest film showing both lungs."),
            ("img/deep.png", "MRI of the brain, no lesion."), ("img/ct.nii.gz", "CT abdomen: kidneys and spleen.")]
    bad = [("img/missing.png", "CT of the liver.", "missing image"),
           ("img/grey.png", "   ", "empty caption"),
           ("img/grey.png", "A photograph of a flower.", "caption with no organ tag")]
    return good, bad


def test_manifest_csv_with_2d_and_3d_images_and_bad_rows(tmp_path):
    good, bad = _manifest_files(tmp_path)
    rows = b"image,text\n" + b"".join(f'{i},"{t}"\n'.encode() for i, t in good + [b[:2] for b in bad])
    rows += b'img/grey.png,"Liver \xff\xfe lesion"\n'  # not UTF-8
    (tmp_path / "pairs.csv").write_bytes(rows)
    source = load_pairs("manifest", manifest=tmp_path / "pairs.csv")
    assert [p.image.name for p in source.pairs] == [Path(g[0]).name for g in good]
    assert dict(source.skipped.counts) == {"missing image": 1, "empty caption": 1,
                                          "caption with no organ tag": 1, "non-UTF-8 caption": 1}
    ds = PairDataset(source.pairs, len(source.vocabulary), PairTransform((24, 32), train=True), seed=3)
    for i in range(len(ds)):
        item = ds[(i, 0)]
        assert item["image"].shape == (1, 24, 32) and not item["failed"]
        assert torch.isfinite(item["image"]).all()
    # a 3D volume gives a (random) axial slice, the same one again for the same (epoch, index)
    assert torch.equal(ds[(3, 5)]["image"], ds[(3, 5)]["image"])
    slices = {ds[(3, e)]["image"].sum().item() for e in range(6)}
    assert len(slices) > 1


def test_manifest_jsonl_with_malformed_lines(tmp_path):
    good, bad = _manifest_files(tmp_path)
    lines = [json.dumps({"image": i, "text": t}) for i, t in good + [b[:2] for b in bad]]
    lines += ["{not json", "{\"image\": \"img/grey.png\", \"text\": \"liver\"", ""]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = load_pairs("manifest", manifest=tmp_path / "pairs.jsonl")
    assert len(source.pairs) == len(good)
    assert source.skipped.counts["malformed manifest line"] == 2
    assert source.skipped.counts["missing image"] == 1


def test_manifest_errors_name_the_file_and_format(tmp_path):
    with pytest.raises(PairDataError, match="does not exist"):
        load_pairs("manifest", manifest=tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("path,caption\na.png,liver\n")
    with pytest.raises(PairDataError, match=r"bad\.csv.*image,text"):
        load_pairs("manifest", manifest=tmp_path / "bad.csv")
    (tmp_path / "x.tsv").write_text("image\ttext\n")
    with pytest.raises(PairDataError, match="unknown extension"):
        load_pairs("manifest", manifest=tmp_path / "x.tsv")


def test_synthetic_manifest_is_found_through_nnunet_raw(tmp_path, monkeypatch):
    from nnunet_mosmos.synthetic import write_dataset

    write_dataset(tmp_path / "raw", 901, num_train=2, num_test=0, shape=(8, 24, 24), slices_per_case=2)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    source = load_pairs("synthetic", dataset="901")
    assert len(source.pairs) == 4 and source.description.endswith("pairs2d/manifest.csv")
    with pytest.raises(ValueError, match="unknown dataset id 902"):
        load_pairs("synthetic", dataset=902)
    with pytest.raises(PairDataError, match="--manifest"):
        load_pairs("synthetic")


def test_transform_zscore_crop_and_determinism():
    image = np.random.default_rng(0).normal(50, 10, (60, 80)).astype(np.float32)
    from nnunet_mosmos.slices import zscore

    z = zscore(image)
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3
    eval_t = PairTransform(32, train=False)
    assert torch.equal(eval_t(z), eval_t(z)) and eval_t(z).shape == (1, 32, 32)
    train_t = PairTransform(32, train=True)
    a = train_t(z, np.random.default_rng([0, 1, 2]))
    b = train_t(z, np.random.default_rng([0, 1, 2]))
    c = train_t(z, np.random.default_rng([0, 1, 3]))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_split_is_seeded_and_disjoint(roco_v1):
    pairs = load_pairs("roco", roco_root=roco_v1, split="test").pairs
    train, val = split_pairs(pairs, 0.2, seed=1)
    assert len(val) == round(0.2 * len(pairs)) and not {p.id for p in train} & {p.id for p in val}
    assert split_pairs(pairs, 0.2, seed=1) == (train, val)
    assert split_pairs(pairs, 0.0, seed=1) == (pairs, [])


def test_generated_text_for_a_pair_without_report_brings_its_own_tags(tmp_path):
    from nnunet_mosmos.reports import template_report
    from nnunet_mosmos.tags import TagVocabulary

    vocab = TagVocabulary.default()
    png = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(png)
    pair = Pair("row", png, "", ())
    seen = []
    ds = PairDataset([pair], len(vocab), PairTransform(16, train=True), two_views=True, vocabulary=vocab,
                     text_for_missing=lambda ctx: seen.append(ctx) or template_report({"liver": 1500.0,
                                                                                       "kidney_left": 150.0}))
    item = ds[(0, 0)]
    assert "liver" in item["text"] and seen[0]["image"] == str(png)
    on = {vocab.names[i] for i in item["tags"].nonzero().flatten().tolist()}
    assert on == {"liver", "kidney"}
    assert item["view2"].shape == item["image"].shape and not torch.equal(item["view2"], item["image"])
