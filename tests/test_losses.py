"""Aligning loss, area fractions and ASL: the values a user's training relies on."""
import torch

from nnunet_mosmos.losses import AsymmetricLoss, PixelTagAligningLoss, class_area_fractions


def _maps_from_logits(logits):
    b, k = logits.shape[:2]
    return torch.softmax(logits.flatten(2), -1).view_as(logits)


def test_area_fractions_match_one_hot_average_pooling():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 1, 8, 16, 16)).float()
    fr = class_area_fractions(target, 4, (2, 4, 4))
    ref = torch.nn.functional.avg_pool3d(
        torch.nn.functional.one_hot(target[:, 0].long(), 4).movedim(-1, 1).float(), (4, 4, 4))
    assert torch.allclose(fr, ref, atol=1e-6)
    # a grid that does not divide the patch falls back to area interpolation
    assert class_area_fractions(target, 4, (3, 5, 5)).shape == (2, 4, 3, 5, 5)


def test_ignore_label_voxels_count_for_nothing():
    target = torch.full((1, 1, 4, 4), 3.0)
    fr = class_area_fractions(target, 3, (2, 2), ignore_label=3)
    assert fr.sum() == 0


def test_aligning_loss_falls_as_the_map_moves_onto_the_mask():
    target = torch.zeros(1, 1, 16, 16)
    target[0, 0, 8:, 8:] = 1  # class 1 in the lower-right quadrant
    loss = PixelTagAligningLoss(presence_weight=0.0)
    logits = torch.zeros(1, 1)
    values = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        m = torch.full((1, 1, 4, 4), 1e-3)
        m[0, 0, :2, :2] += 1 - t     # mass off the mask ...
        m[0, 0, 2:, 2:] += t         # ... moving onto it
        m = m / m.sum()
        values.append(loss(m, logits, target)["loss"].item())
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.05


def test_absent_classes_only_get_the_presence_term():
    target = torch.zeros(2, 1, 8, 8)  # no foreground at all
    loss = PixelTagAligningLoss(presence_weight=1.0)
    maps = _maps_from_logits(torch.randn(2, 3, 2, 2))
    out = loss(maps, torch.full((2, 3), -5.0), target)
    assert out["spatial"] == 0
    assert out["presence"] < 1e-3  # confidently absent -> tiny ASL
    assert loss(maps, torch.full((2, 3), 5.0), target)["presence"] > out["presence"]


def test_asl_matches_hand_computed_value():
    asl = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="sum")
    z = torch.tensor([[2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(z)
    pos = -torch.log(p[0, 0])
    p_neg = min(1.0, 1 - p[0, 1].item() + 0.05)
    neg = -torch.log(torch.tensor(p_neg)) * (1 - p_neg) ** 4
    assert torch.allclose(asl(z, y), pos + neg, atol=1e-6)


def test_aligning_loss_has_gradients_for_maps_and_logits():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, :4] = 1
    raw = torch.randn(1, 2, 4, 4, requires_grad=True)
    logits = torch.zeros(1, 2, requires_grad=True)
    PixelTagAligningLoss()(_maps_from_logits(raw), logits, target)["loss"].backward()
    assert raw.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0
