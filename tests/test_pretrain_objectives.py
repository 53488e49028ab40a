"""The optional pre-training objectives: organ-grounded contrast (CT-GLIP) and Barlow Twins (GTGM)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_mosmos.tags import TagVocabulary
from pretrain.pairs import Pair
from pretrain.grounding import NO_MASK, NO_SENTENCE, OrganGrounding
from pretrain.label_names import LabelNamesError, load_label_names
from pretrain.losses import PretrainLoss
from pretrain.objectives import BarlowTwinsLoss, OrganGroundedLoss, masked_stage_means


def test_barlow_twins_is_low_for_equal_decorrelated_views_and_high_for_unrelated_ones():
    torch.manual_seed(0)
    z = torch.randn(512, 16)
    loss = BarlowTwinsLoss()
    same = loss(z, z.clone())
    unrelated = loss(z, torch.randn(512, 16))
    assert same < 0.5
    assert unrelated > 6.0  # each of the 16 diagonal terms ~ (0 - 1)^2, halved -> ~8


def test_organ_loss_rewards_alignment_and_counts_dictionary_negatives():
    organ = F.normalize(torch.eye(3, 8), dim=-1)
    scale = torch.tensor(50.0)
    loss = OrganGroundedLoss()
    texts = ["liver normal", "spleen enlarged", "kidney cyst"]
    aligned = loss(organ, organ.clone(), None, texts, scale)
    assert aligned < 1e-3
    # the opposite-state phrase equal to the organ's own embedding: the organ can no longer pick its text
    hard = loss(organ, organ.clone(), organ.clone()[:, None], texts, scale)
    assert hard > 0.3
    shuffled = loss(organ, organ.roll(1, 0), None, texts, scale)
    assert shuffled > 10


def test_identical_texts_are_not_each_others_negatives():
    # two scans whose liver sentences are the same string, with the same embeddings: no penalty
    organ = F.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]), dim=-1)
    loss = OrganGroundedLoss()(organ, organ.clone(), None, ["liver normal", "liver normal", "spleen"],
                               torch.tensor(50.0))
    assert loss < 1e-3


@pytest.mark.parametrize("dim", [2, 3])
def test_masked_stage_means_pool_each_stage_inside_the_region(dim):
    shape = (8,) * dim
    mask = torch.zeros(2, *shape, dtype=torch.long)
    mask[0, :4] = 3  # first half of axis 0 is organ 3
    mask[1, 4:] = 5
    full = torch.zeros(2, 2, *shape)
    full[:, 0] = torch.arange(8.0).view(-1, *([1] * (dim - 1)))  # channel 0: the index along axis 0
    full[:, 1] = 1.0
    half = F.avg_pool2d(full, 2) if dim == 2 else F.avg_pool3d(full, 2)
    pooled = masked_stage_means([full, half], mask, [(0, (3,)), (1, (5, 9))])
    assert pooled.shape == (2, 4)
    assert torch.allclose(pooled[0], torch.tensor([1.5, 1.0, 1.5, 1.0]))  # mean of 0..3 at both resolutions
    assert torch.allclose(pooled[1], torch.tensor([5.5, 1.0, 5.5, 1.0]))


def test_pretrain_loss_adds_the_optional_terms_only_when_their_outputs_exist():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    out = {"image": img, "text": txt, "logit_scale": torch.tensor(10.0), "tag_logits": torch.randn(4, 3)}
    tags = torch.zeros(4, 3)
    base = PretrainLoss()(out, tags)
    assert base["organ"] == 0 and base["negative_free"] == 0
    assert torch.isclose(base["loss"], base["contrastive"] + base["tag"])
    both = PretrainLoss(organ_weight=2.0, negative_free_weight=0.5)(
        {**out, "image2": img, "view1": torch.randn(4, 5), "view2": torch.randn(4, 5),
         "organ": img[:2], "organ_text": txt[:2], "organ_negatives": None, "organ_texts": ["a", "b"]}, tags)
    assert both["organ"] > 0 and both["negative_free"] > 0
    expected = both["contrastive"] + both["tag"] + 2.0 * both["organ"] + 0.5 * both["negative_free"]
    assert torch.isclose(both["loss"], expected)


# --------------------------------------------------------------------------- label names, grounding
def test_label_names_from_nnunet_dataset_json_plain_map_and_totalsegmentator_class_map(tmp_path):
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "kidney_left": 4}}))
    assert load_label_names(ds) == {1: "liver", 4: "kidney_left"}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"0": "background", "2": "spleen"}))
    assert load_label_names(plain) == {2: "spleen"}
    multi = tmp_path / "class_map.json"
    multi.write_text(json.dumps({"total": {"1": "spleen"}, "total_mr": {"1": "spleen", "2": "kidney_right"}}))
    assert load_label_names(multi, "total_mr") == {1: "spleen", 2: "kidney_right"}
    with pytest.raises(LabelNamesError, match="--label-map-key"):
        load_label_names(multi)
    with pytest.raises(LabelNamesError, match="no key 'totl'"):
        load_label_names(multi, "totl")


class _Dictionary:
    def negatives(self, organ, sentence, k=1, rng=None):
        return [f"the {organ} is abnormal {i}" for i in range(k)]


def test_grounding_pairs_organs_in_the_patch_with_their_sentences(tmp_path):
    names = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "duodenum"}
    pairs = [Pair("a", tmp_path / "a.nii.gz", "The liver is enlarged. Both kidneys are normal. Heart normal.", (),
                  tmp_path / "a_seg.nii.gz"),
             Pair("b", tmp_path / "b.nii.gz", "No acute findings.", (), tmp_path / "b_seg.nii.gz"),
             Pair("c", tmp_path / "c.nii.gz", "The spleen is normal.", (), None)]
    g = OrganGrounding(pairs, names, TagVocabulary.default(), _Dictionary(), negatives_per_organ=2, min_voxels=4)
    assert g.tag_values == {"liver": [1], "spleen": [2], "kidney": [3, 4]}  # duodenum: open-set, no tag
    assert set(g.sentences[0]) == {"liver", "kidney"}  # the heart has no mask value
    assert g.skipped.counts[NO_SENTENCE] == 1 and g.skipped.counts[NO_MASK] == 1 and g.usable == 1
    masks = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    masks[0, :2] = 1          # 32 liver voxels
    masks[0, 3, 0, :2] = 4    # 2 kidney voxels: below min_voxels
    batch = g.batch(masks, torch.tensor([0, 1]))
    assert batch["items"] == [(0, (1,))]
    assert batch["texts"] == ["The liver is enlarged."]
    assert batch["negatives"] == [["the liver is abnormal 0", "the liver is abnormal 1"]]
    masks[0, 3, 1:3] = 3      # now 8 more right-kidney voxels: kidney pairs up, both sides pooled together
    batch = g.batch(masks, torch.tensor([0, 1]))
    assert batch["items"] == [(0, (1,)), (0, (3, 4))]
    assert math.isclose(len(batch["texts"]), 2)
