"""The one place that maps configuration names to classes."""

from __future__ import annotations

from neurounlearn.training.strategies import (
    BaselineStrategy,
    GRLStrategy,
    IterativeStrategy,
    Strategy,
)

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
