"""Every name a configuration can choose has a class in the registry, and nothing more."""

from __future__ import annotations

from typing import get_args

import pytest

from neurounlearn.choices import (
    CNN_ENCODER_NAMES,
    ENCODER_NAMES,
    ITERATIVE_MODES,
    MODEL_ARMS,
    STRATEGY_NAMES,
    EncoderChoice,
)
from neurounlearn.config import (
    BaselineStrategyConfig,
    GRLStrategyConfig,
    IterativeStrategyConfig,
    StrategyConfig,
    validate_config,
)
from neurounlearn.models.encoders import CNN_ENCODERS
from neurounlearn.registry import ENCODERS, STRATEGIES, build_strategy, strategy_class
from neurounlearn.training.strategies import GRLStrategy, IterativeStrategy


def test_every_strategy_name_has_a_class_and_back() -> None:
    assert tuple(STRATEGIES) == STRATEGY_NAMES
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert strategy_class(name) is cls


def test_every_strategy_name_has_a_config_section() -> None:
    union = get_args(get_args(StrategyConfig)[0])
    assert {cls.model_fields["name"].default for cls in union} == set(STRATEGY_NAMES)
    for cls in (BaselineStrategyConfig, IterativeStrategyConfig, GRLStrategyConfig):
        assert type(validate_config({"strategy": {"name": cls().name}}).strategy) is cls


def test_every_encoder_name_has_a_class_and_back() -> None:
    assert tuple(ENCODERS) == ENCODER_NAMES
    assert tuple(CNN_ENCODERS) == CNN_ENCODER_NAMES
    assert set(CNN_ENCODERS) <= set(ENCODERS)
    assert get_args(EncoderChoice) == ("auto", *ENCODER_NAMES)


def test_model_arms_name_known_strategies_and_modes() -> None:
    for strategy, mode in MODEL_ARMS.values():
        assert strategy in STRATEGY_NAMES
        assert mode in ITERATIVE_MODES
    assert {s for s, _ in MODEL_ARMS.values()} == set(STRATEGY_NAMES)


@pytest.mark.parametrize(
    ("settings", "cls", "attrs"),
    [
        (
            {"name": "iterative", "mode": "joint", "pretrain_epochs": 3},
            IterativeStrategy,
            {"mode": "joint", "pretrain_epochs": 3},
        ),
        (
            {"name": "grl", "lambda_max": 0.5, "pretrain_epochs": 3},
            GRLStrategy,
            {"lambda_max": 0.5},
        ),
        (
            {"name": "grl", "adversary_view": "eval"},
            GRLStrategy,
            {"adversary_view": "eval"},
        ),
    ],
)
def test_build_strategy_passes_the_strategy_settings(
    settings: dict[str, object], cls: type, attrs: dict[str, object]
) -> None:
    cfg = validate_config(
        {"confounds": [{"name": "site"}], "strategy": {**settings, "adversary_steps": 4}}
    )
    strategy = build_strategy(cfg, task_kind="regression")
    assert type(strategy) is cls
    assert strategy.adversary_steps == 4
    assert {k: getattr(strategy, k) for k in attrs} == attrs
