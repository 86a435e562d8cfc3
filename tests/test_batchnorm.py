"""Batch-norm statistics recomputed after training."""

import pytest
import torch
from torch import nn

from neurounlearn.training.batchnorm import recompute_batchnorm


def test_running_statistics_become_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(100.0)  # stale statistics from training
    batches = [torch.randn(8, 3) * (i + 1) + i for i in range(4)]
    assert recompute_batchnorm(bn, batches) == 4
    expected_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    expected_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == pytest.approx(0.1)  # the layer's own momentum is back


def test_dropout_is_off_during_the_pass_and_modes_come_back():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x

    net = nn.Sequential(nn.Dropout(0.9), Spy(), nn.BatchNorm1d(4))
    net.eval()
    x = torch.ones(6, 4)
    recompute_batchnorm(net, [x])
    torch.testing.assert_close(seen[0], x)  # dropout would have zeroed (and rescaled) entries
    assert not net.training and not net[0].training and not net[2].training


def test_a_module_without_batch_norm_is_left_alone():
    net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    before = [p.clone() for p in net.parameters()]
    assert recompute_batchnorm(net, [torch.randn(4, 2)]) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
