"""The one place that maps configuration names to classes.

Strategies are registered here; 3D CNN encoders in :data:`neurounlearn.models.encoders.ENCODERS`
(re-exported below), which :func:`~neurounlearn.models.encoders.build_encoder` reads.
"""

from __future__ import annotations

from neurounlearn.models.encoders import ENCODERS
from neurounlearn.training.strategies import (
    BaselineStrategy,
    GRLStrategy,
    IterativeStrategy,
    Strategy,
)

__all__ = ["ENCODERS", "STRATEGIES", "strategy_class"]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (BaselineStrategy, IterativeStrategy, GRLStrategy)
}


def strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}"
        ) from None
