"""Loss values on small hand-computed cases."""
import math

import pytest
import torch

from training import losses


def logits_for(probs):
    """Two-class logits [B, K, 2] whose softmax gives P(abnormal) = probs."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=-1)


PROBS = [[0.2, 0.6, 0.4], [0.1, 0.3, 0.25]]
LABELS = torch.tensor([3, 0])  # list label 3 counts as anomalous


def test_mil_loss_hand_value():
    # video 0: top clip p=0.6, label 1 -> CE = -log 0.6, weight 0.6
    # video 1: top clip p=0.3, label 0 -> CE = -log 0.7, weight 0.7
    expected = (0.6 * -math.log(0.6) + 0.7 * -math.log(0.7)) / 2
    value = losses.mil_loss(logits_for(PROBS), LABELS)
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_smooth_and_sparse_hand_values():
    probs = torch.tensor(PROBS, dtype=torch.float64)
    # (0.6-0.2)^2 + (0.4-0.6)^2 = 0.2 ; (0.3-0.1)^2 + (0.25-0.3)^2 = 0.0425
    assert losses.smooth_loss(probs).item() == pytest.approx((0.2 + 0.0425) / 2)
    assert losses.sparse_loss(probs).item() == pytest.approx((1.2 + 0.65) / 2)


def test_promptmil_total_and_parts():
    total, parts = losses.promptmil_loss(logits_for(PROBS), LABELS, w_smooth=0.01, w_sparse=0.001)
    mil = (0.6 * -math.log(0.6) + 0.7 * -math.log(0.7)) / 2
    assert parts["mil"].item() == pytest.approx(mil)
    assert parts["smooth"].item() == pytest.approx(0.12125)
    assert parts["sparse"].item() == pytest.approx(0.925)
    assert total.item() == pytest.approx(mil + 0.01 * 0.12125 + 0.001 * 0.925)


def test_mil_picks_first_clip_on_ties_and_weight_gradient():
    logits = logits_for([[0.7, 0.7, 0.1]]).requires_grad_()
    losses.mil_loss(logits, torch.tensor([0])).backward()
    # Only the first of the tied top clips gets gradient.
    assert logits.grad[0, 0].abs().sum() > 0
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0

    # Not detached (published): d/dz [w * CE] differs from the detached-weight gradient.
    a = logits_for([[0.3, 0.8]]).requires_grad_()
    b = logits_for([[0.3, 0.8]]).requires_grad_()
    losses.mil_loss(a, torch.tensor([1])).backward()
    losses.mil_loss(b, torch.tensor([1]), detach_weight=True).backward()
    assert not torch.allclose(a.grad, b.grad)
    # Detached: gradient of 0.8 * CE(z, 1) w.r.t. z = 0.8 * (softmax - onehot).
    expected = 0.8 * torch.tensor([0.2, -0.2], dtype=torch.float64)
    assert torch.allclose(b.grad[0, 1], expected)


def test_clip_ce_and_advtrain_ce():
    logits = logits_for([[0.2, 0.9]])
    clip_labels = torch.tensor([[0, 1]])
    ce = (-math.log(0.8) - math.log(0.9)) / 2
    assert losses.clip_ce_loss(logits, clip_labels).item() == pytest.approx(ce)
    total, parts = losses.advtrain_loss(logits, torch.tensor([1]), clip_labels, "ce", 0.5, 1.0)
    assert total.item() == pytest.approx(ce + 0.5 * 0.49)
    assert "sparse" not in parts
    with pytest.raises(ValueError, match="ADV_TRAIN.LOSS"):
        losses.advtrain_loss(logits, torch.tensor([1]), clip_labels, "hinge", 0.5, 1.0)


def test_bad_logits_shape_is_reported():
    with pytest.raises(ValueError, match=r"\[B, K, C\]"):
        losses.mil_loss(torch.zeros(4, 2), torch.zeros(4))


def test_mil_normal_all_scores_every_clip_of_normal_videos():
    import torch

    from training.losses import mil_loss

    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]],    # normal video, clip 1 looks anomalous
                           [[0.0, 3.0], [1.0, 0.0], [2.0, 0.0]]])   # anomalous video
    labels = torch.tensor([0, 1])
    top = mil_loss(logits, labels, detach_weight=True)
    every = mil_loss(logits, labels, detach_weight=True, normal="all")
    probs = logits.softmax(-1)
    ce = -probs[0, :, 0].log()
    expected_normal = (ce * probs[0].max(-1).values).mean()
    expected_anom = -probs[1, 0, 1].log() * probs[1, 0].max()
    assert torch.isclose(every, (expected_normal + expected_anom) / 2)
    assert torch.isclose(top, (ce[1] * probs[0, 1].max() + expected_anom) / 2)
    # anomalous videos only: both variants agree
    assert torch.isclose(mil_loss(logits[1:], labels[1:], normal="all"), mil_loss(logits[1:], labels[1:]))


def test_mil_anomalous_bottom_adds_the_lowest_clip_as_normal():
    import torch

    from training.losses import mil_loss

    logits = torch.tensor([[[0.0, 3.0], [1.0, 0.0], [2.0, 0.0]],    # anomalous video; clip 2 is the lowest
                           [[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])   # normal video: unchanged
    labels = torch.tensor([1, 0])
    probs = logits.softmax(-1)
    extra = -probs[0, 2, 0].log() * probs[0, 2].max()
    plain = mil_loss(logits, labels, detach_weight=True)
    bottom = mil_loss(logits, labels, detach_weight=True, anomalous_bottom=True)
    assert torch.isclose(bottom, plain + extra / 2)
