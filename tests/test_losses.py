import math

import pytest
import torch

from neurounlearn.losses import adversary_loss, confusion_loss, masked_regression_loss


def test_confusion_loss_is_log_k_for_uniform_logits():
    assert confusion_loss(torch.zeros(5, 4)).item() == pytest.approx(math.log(4), abs=1e-6)


def test_confusion_loss_is_larger_for_a_confident_head():
    confident = torch.tensor([[10.0, -10.0, -10.0]])
    assert confusion_loss(confident).item() > confusion_loss(torch.zeros(1, 3)).item() + 5


def test_confusion_loss_stays_finite_for_extreme_logits():
    # log(softmax) would give -inf here; log_softmax keeps it finite
    loss = confusion_loss(torch.tensor([[1000.0, -1000.0]]))
    assert torch.isfinite(loss)


def test_confusion_loss_ignores_masked_rows():
    logits = torch.tensor([[0.0, 0.0], [50.0, -50.0]])
    masked = confusion_loss(logits, torch.tensor([True, False]))
    assert masked.item() == pytest.approx(math.log(2), abs=1e-6)


def test_confusion_gradient_pushes_towards_uniform():
    logits = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)
    confusion_loss(logits).backward()
    assert logits.grad[0, 0] > 0 and logits.grad[0, 1] < 0  # descent lowers the top logit


def test_masked_regression_loss_skips_missing_targets():
    pred = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([1.0, float("nan"), 5.0])
    assert masked_regression_loss(pred, target).item() == pytest.approx(2.0)  # (0 + 4) / 2
    assert masked_regression_loss(pred, target, "l1").item() == pytest.approx(1.0)


def test_all_missing_targets_give_a_zero_that_backpropagates():
    pred = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = masked_regression_loss(pred, torch.full((2,), float("nan")))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None and pred.grad.abs().sum() == 0


def test_adversary_loss_ignores_minus_one_codes():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    only_first = adversary_loss(logits, torch.tensor([0, -1]))
    assert only_first.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])).item()
    )


def test_unknown_task_loss_kind_is_rejected():
    with pytest.raises(ValueError, match="mse"):
        masked_regression_loss(torch.zeros(2), torch.zeros(2), "huber")
