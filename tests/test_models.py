import pytest
import torch
from torch import nn

from neurounlearn.models.grl import GradientReversal, ganin_lambda
from neurounlearn.models.unlearning import MLPEncoder, UnlearningModel


def test_gradient_reversal_is_identity_forward_and_flips_gradient():
    grl = GradientReversal(weight=2.0)
    x = torch.tensor([1.0, -3.0], requires_grad=True)
    y = grl(x)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 1.0])).sum().backward()
    assert x.grad.tolist() == [-2.0, -2.0]


def test_gradient_reversal_weight_is_a_saved_buffer():
    grl = GradientReversal(weight=0.3)
    grl.set_weight(0.7)
    state = grl.state_dict()
    assert "weight" in state and state["weight"].item() == pytest.approx(0.7)
    assert not any(True for _ in grl.parameters())


def test_ganin_schedule_starts_at_zero_and_approaches_lambda_max():
    assert ganin_lambda(0.0, 2.0) == 0.0
    assert ganin_lambda(1.0, 2.0) == pytest.approx(2.0, rel=1e-3)
    assert ganin_lambda(0.2) < ganin_lambda(0.5) < ganin_lambda(0.9)


def test_model_outputs_named_shapes():
    model = UnlearningModel(
        MLPEncoder(in_features=6, hidden=[8], embedding_dim=4),
        nn.Linear(4, 1),
        {"site": 3, "scanner": 2},
    )
    out = model(torch.randn(5, 6))
    assert out.features.shape == (5, 4)
    assert out.task.shape == (5,)
    assert {k: v.shape for k, v in out.confounds.items()} == {"site": (5, 3), "scanner": (5, 2)}


def test_model_rejects_confound_with_one_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        UnlearningModel(MLPEncoder(in_features=3), nn.Linear(32, 1), {"site": 1})


def test_reversed_confound_logits_send_negative_gradient_to_features():
    model = UnlearningModel(
        MLPEncoder(in_features=3, hidden=[4], embedding_dim=2), nn.Linear(2, 1), {"s": 2}
    )
    model.reversal["s"].set_weight(1.0)
    f = torch.randn(4, 2, requires_grad=True)
    model.confound_logits(f, reverse=False)["s"].sum().backward()
    plain = f.grad.clone()
    f.grad = None
    model.confound_logits(f, reverse=True)["s"].sum().backward()
    assert torch.allclose(f.grad, -plain)


def test_ensemble_head_returns_one_set_of_logits_per_head():
    from neurounlearn.models.unlearning import ConfoundHead

    head = ConfoundHead(4, 3, hidden=8, n_heads=5)
    assert head(torch.randn(6, 4)).shape == (5, 6, 3)
    assert ConfoundHead(4, 3, n_heads=1)(torch.randn(6, 4)).shape == (6, 3)


def test_confound_head_sees_standardised_features_so_shrinking_cannot_hide_a_confound():
    from neurounlearn.models.unlearning import ConfoundHead

    torch.manual_seed(0)
    head = ConfoundHead(3, 2, hidden=0)
    f = torch.randn(64, 3)
    assert torch.allclose(head(f), head(f * 0.1), atol=1e-3)


def test_ensemble_losses_cover_every_head():
    from neurounlearn.config import ConfoundConfig
    from neurounlearn.training.strategies import IterativeStrategy

    s = IterativeStrategy(confounds=[ConfoundConfig(name="site")])
    logits = torch.zeros(4, 6, 3)
    logits[0, :, 0] = 20.0  # one confident head among uniform ones
    codes = torch.zeros(6, 1, dtype=torch.long)
    single = s.confusion_losses({"site": logits[1]}, codes)["site"]
    mixed = s.confusion_losses({"site": logits}, codes)["site"]
    assert mixed > single  # the confident head is not averaged away
    assert s.adversary_accuracy({"site": logits}, codes)["site"].item() == pytest.approx(1.0)


def test_public_api_is_importable_from_the_package():
    import neurounlearn

    for name in (
        "UnlearningModel",
        "GradientReversal",
        "confusion_loss",
        "LeakageAudit",
        "ComBatArm",
        "IterativeStrategy",
        "GRLStrategy",
        "BaselineStrategy",
        "fit",
    ):
        assert getattr(neurounlearn, name) is not None
    with pytest.raises(AttributeError):
        _ = neurounlearn.NotAThing


def test_every_lazy_export_is_listed_in_all():
    import neurounlearn

    assert set(neurounlearn._EXPORTS) | {"__version__"} == set(neurounlearn.__all__)
