"""The contract every strategy honours: finite losses, and each step moves only what it should."""

import math

import pytest
import torch
from torch import nn

from neurounlearn.config import ConfoundConfig
from neurounlearn.models.unlearning import MLPEncoder, UnlearningModel
from neurounlearn.registry import STRATEGIES, strategy_class
from neurounlearn.training.strategies import (
    BaselineStrategy,
    FeatureMemory,
    GRLStrategy,
    IterativeStrategy,
    as_at_inference,
    frozen,
)


class Host:
    """A plain stand-in for the Lightning module."""

    def __init__(self, model, strategy, *, epoch=0, progress=0.5):
        self.model = model
        self.current_epoch = epoch
        self._progress = progress
        self._opts = strategy.configure_optimizers(
            model, lr=1e-2, weight_decay=0.0, adversary_lr=1e-2
        )

    @property
    def progress(self):
        return self._progress

    def optimizers(self):
        return self._opts

    def manual_backward(self, loss):
        loss.backward()


def make(strategy_cls, **kw):
    torch.manual_seed(0)
    model = UnlearningModel(
        MLPEncoder(in_features=5, hidden=[8], embedding_dim=4, dropout=0.0),
        nn.Linear(4, 1),
        {"site": 3},
    )
    return model, strategy_cls(confounds=[ConfoundConfig(name="site")], **kw)


def batch(y_missing=False, codes=None):
    g = torch.Generator().manual_seed(1)
    y = torch.full((12,), float("nan")) if y_missing else torch.randn(12, generator=g)
    return {
        "x": torch.randn(12, 5, generator=g),
        "y": y,
        "codes": torch.tensor(codes if codes is not None else [[i % 3] for i in range(12)]),
    }


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


CASES = [
    (BaselineStrategy, {}, 0),
    (IterativeStrategy, {"mode": "sequential", "pretrain_epochs": 1}, 0),
    (IterativeStrategy, {"mode": "sequential", "pretrain_epochs": 1}, 1),
    (IterativeStrategy, {"mode": "joint", "pretrain_epochs": 1}, 1),
    (GRLStrategy, {}, 0),
]


@pytest.mark.parametrize(("cls", "kw", "epoch"), CASES)
def test_step_logs_finite_values_and_trains_every_part(cls, kw, epoch):
    model, strategy = make(cls, **kw)
    before = {n: snapshot(getattr(model, n)) for n in ("encoder", "task_head", "confound_heads")}
    logs = strategy.training_step(Host(model, strategy, epoch=epoch), batch())
    assert logs and all(math.isfinite(float(v)) for v in logs.values())
    assert "task_loss" in logs and "adv_acc/site" in logs
    for name, snap in before.items():
        assert changed(snap, getattr(model, name)), name


def test_registry_maps_every_config_name():
    assert set(STRATEGIES) == {"baseline", "iterative", "grl"}
    with pytest.raises(ValueError, match="choose one of"):
        strategy_class("dann")


def test_baseline_never_moves_the_encoder_without_a_task_signal():
    model, strategy = make(BaselineStrategy)
    enc, heads = snapshot(model.encoder), snapshot(model.confound_heads)
    strategy.training_step(Host(model, strategy), batch(y_missing=True))
    assert not changed(enc, model.encoder)
    assert changed(heads, model.confound_heads)  # the monitoring adversary still learns


def test_iterative_pretrain_does_not_unlearn():
    model, strategy = make(IterativeStrategy, pretrain_epochs=5)
    enc = snapshot(model.encoder)
    strategy.training_step(Host(model, strategy, epoch=0), batch(y_missing=True))
    assert not changed(enc, model.encoder)


@pytest.mark.parametrize("mode", ["sequential", "joint"])
def test_rows_without_targets_still_serve_unlearning(mode):
    model, strategy = make(IterativeStrategy, mode=mode, pretrain_epochs=0)
    enc, task_head = snapshot(model.encoder), snapshot(model.task_head)
    logs = strategy.training_step(Host(model, strategy), batch(y_missing=True))
    assert changed(enc, model.encoder)  # moved by the confusion loss alone
    assert not changed(task_head, model.task_head)
    assert "conf_loss/site" in logs


def test_adversary_step_moves_heads_only():
    model, strategy = make(IterativeStrategy)
    host = Host(model, strategy)
    enc, heads = snapshot(model.encoder), snapshot(model.confound_heads)
    f = model.encode(batch()["x"])
    strategy.adversary_step(host, host.optimizers()[1], f, batch()["codes"])
    assert not changed(enc, model.encoder)
    assert changed(heads, model.confound_heads)


def test_confusion_loss_gives_no_gradient_to_the_heads():
    model, strategy = make(IterativeStrategy)
    f = model.encode(batch()["x"])
    loss, _ = strategy.weighted_confusion(model, f, batch()["codes"])
    loss.backward()
    assert all(p.grad is None for p in model.confound_heads.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.confound_heads.parameters())  # restored by frozen()


def test_rows_outside_the_subset_do_not_train_the_heads():
    model, strategy = make(IterativeStrategy)
    heads = snapshot(model.confound_heads)
    strategy.training_step(Host(model, strategy), batch(codes=[[-1]] * 12))
    assert not changed(heads, model.confound_heads)


def test_grl_sends_no_adversarial_gradient_at_the_start_of_the_schedule():
    model, strategy = make(GRLStrategy)
    enc = snapshot(model.encoder)
    strategy.training_step(Host(model, strategy, progress=0.0), batch(y_missing=True))
    assert not changed(enc, model.encoder)
    strategy.training_step(Host(model, strategy, progress=1.0), batch(y_missing=True))
    assert changed(enc, model.encoder)
    assert model.reversal["site"].weight.item() == pytest.approx(1.0, rel=1e-3)


def test_more_adversary_steps_fit_the_heads_better():
    losses = []
    for steps in (1, 10):
        model, strategy = make(IterativeStrategy, adversary_steps=steps)
        host = Host(model, strategy)
        b = batch()
        f = model.encode(b["x"])
        strategy.adversary_step(host, host.optimizers()[1], f, b["codes"])
        losses.append(
            strategy.adversary_losses(model.confound_logits(f.detach()), b["codes"])["site"].item()
        )
    assert losses[1] < losses[0]


def test_frozen_restores_requires_grad_after_an_error():
    layer = nn.Linear(2, 2)
    with pytest.raises(RuntimeError), frozen(layer):
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in layer.parameters())


# ----------------------------------------------------------------------------- adversary memory


def test_memory_keeps_the_newest_rows_with_their_targets_and_no_gradient():
    memory = FeatureMemory(3)
    first = torch.ones(2, 4, requires_grad=True)
    memory.push(first * 1.0, {"codes": torch.tensor([[0], [1]]), "values": torch.zeros(2, 1)})
    memory.push(first * 2.0, {"codes": torch.tensor([[2], [0]]), "values": torch.ones(2, 1)})
    assert len(memory) == 3
    assert memory.features[:, 0].tolist() == [2.0, 2.0, 1.0]  # newest first; the oldest dropped
    assert memory.targets["codes"][:, 0].tolist() == [2, 0, 0]
    assert memory.targets["values"][:, 0].tolist() == [1.0, 1.0, 0.0]
    assert not memory.features.requires_grad


def test_memory_joins_the_batch_first_and_keeps_its_gradient():
    memory = FeatureMemory(4)
    memory.push(torch.zeros(3, 2), torch.tensor([[1], [1], [1]]))
    x = torch.ones(2, 2, requires_grad=True)
    joined, targets = memory.combined(x * 3.0, torch.tensor([[0], [0]]))
    assert joined.shape == (5, 2) and targets["codes"][:, 0].tolist() == [0, 0, 1, 1, 1]
    joined.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.full((2, 2), 3.0))


def test_memory_fewer_rows_where_they_would_pass_the_byte_cap():
    memory = FeatureMemory(10, max_bytes=3 * 4 * 4)  # room for 3 rows of 4 float32 values
    for _ in range(3):
        memory.push(torch.zeros(2, 4), torch.tensor([[0], [1]]))
    assert len(memory) == 3


def test_adversary_step_learns_from_the_batch_and_the_memory():
    """The heads see both; what they log is the batch's own rows."""
    model, strategy = make(BaselineStrategy, memory=6, adversary_steps=2)
    host = Host(model, strategy)
    first = batch()
    strategy.training_step(host, first)  # the memory now holds 6 of these 12 rows
    seen = []
    original = strategy.confound_outputs

    def spy(model, features, targets, **kw):
        seen.append(len(features))
        return original(model, features, targets, **kw)

    strategy.confound_outputs = spy
    small = {k: v[:4] for k, v in first.items()}
    logs = strategy.training_step(host, small)
    assert seen == [10, 10]  # 4 batch rows + 6 remembered, in both head updates
    assert 0.0 <= float(logs["adv_acc/site"]) <= 1.0
    assert float(logs["adv_acc/site"]) * 4 == pytest.approx(round(float(logs["adv_acc/site"]) * 4))


@pytest.mark.parametrize(("cls", "kw", "epoch"), CASES)
def test_every_strategy_steps_with_a_memory(cls, kw, epoch):
    model, strategy = make(cls, memory=8, **kw)
    host = Host(model, strategy, epoch=epoch)
    strategy.training_step(host, batch())
    enc = snapshot(model.encoder)
    logs = strategy.training_step(host, batch())
    assert len(strategy.memory) == 8
    assert all(math.isfinite(float(v)) for v in logs.values())
    if cls is not BaselineStrategy:
        assert changed(enc, model.encoder)


def test_heads_standardise_over_the_batch_and_the_memory():
    """The batch's head outputs come from one pass over batch + memory (the heads' batch
    standardisation sees every row), and only the batch's rows are returned."""
    model, strategy = make(GRLStrategy, memory=12)
    rows = batch()
    strategy.memory.push(model.encode(rows["x"]) + 5.0, rows)  # remembered rows far off
    small = {k: v[:4] for k, v in rows.items()}
    f = model.encode(small["x"])
    out = strategy.heads_on(model, f, small)["site"]
    joined, targets = strategy.memory.combined(f, small)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, strategy.confound_outputs(model, joined, targets)["site"][:4])
    alone = strategy.confound_outputs(model, f, small)["site"]
    assert not torch.allclose(out, alone)


def test_as_at_inference_uses_running_statistics_and_restores_the_modes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    x = torch.randn(8, 3) * 5 + 2
    net.train()
    with as_at_inference(net):
        inside = net(x)
        assert not any(m.training for m in net.modules())
    net.eval()
    np_eval = net(x)
    net.train()
    assert torch.allclose(inside, np_eval)
    assert all(m.training for m in net.modules())
    inside.sum().backward()  # gradients still flow through the encoder
    assert net[0].weight.grad is not None


def _bn_model():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    encoder.out_features = 4  # what UnlearningModel reads of an encoder
    return UnlearningModel(encoder, nn.Linear(4, 1), {"site": 3})


@pytest.mark.parametrize("cls", [BaselineStrategy, IterativeStrategy, GRLStrategy])
def test_eval_view_shows_the_heads_the_encoder_as_at_inference(cls):
    model = _bn_model()
    strategy = cls(confounds=[ConfoundConfig(name="site")], adversary_view="eval")
    b = batch()
    model.train()
    f = model.encode(b["x"])
    seen = strategy.adversary_input(model, b["x"], f, grad=False)
    model.eval()
    expected = model.encode(b["x"])
    assert torch.allclose(seen, expected)
    assert not torch.allclose(f, expected)  # batch statistics differ from the running ones
    model.train()
    plain = cls(confounds=[ConfoundConfig(name="site")])
    assert plain.adversary_input(model, b["x"], f, grad=False) is f


@pytest.mark.parametrize("cls", [BaselineStrategy, IterativeStrategy, GRLStrategy])
def test_eval_view_steps_are_finite_and_leave_the_modes_as_they_were(cls):
    model = _bn_model()
    kw = {"pretrain_epochs": 0} if cls is IterativeStrategy else {}
    strategy = cls(confounds=[ConfoundConfig(name="site")], adversary_view="eval", **kw)
    host = Host(model, strategy, epoch=1)
    model.train()
    logs = strategy.training_step(host, batch())
    assert all(math.isfinite(float(v)) for v in logs.values())
    assert all(m.training for m in model.modules())


def test_unknown_adversary_view_is_refused():
    with pytest.raises(ValueError, match="adversary view"):
        BaselineStrategy(confounds=[ConfoundConfig(name="site")], adversary_view="test")
