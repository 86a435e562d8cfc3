"""Numbers and tables as text, one implementation for the CLI, the reports, the demo and the
benchmarks: a number or a dash, mean ± sd over seeds, and a markdown table.

A base-layer module: it imports nothing from the rest of the library, and numpy and pandas only
when a value is checked, so that importing it keeps the command line's start fast.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: What a missing number prints as.
DASH = "—"


def is_missing(value: Any) -> bool:
    """``True`` for ``None``, ``pd.NA``, ``pd.NaT`` and a float NaN (Python or numpy).

    Examples:
        >>> [is_missing(v) for v in (None, float("nan"), 0.0, "nan")]
        [True, True, False, False]
    """
    if value is None:
        return True
    if isinstance(value, float):  # also numpy's float64
        return math.isnan(value)
    import numpy as np
    import pandas as pd

    if value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, np.floating) and math.isnan(value)


def as_number(value: Any) -> float | None:
    """``value`` as a float; ``None`` when it is missing, text, or not a number.

    Examples:
        >>> [as_number(v) for v in (1, 0.5, None, float("nan"), "0.5")]
        [1.0, 0.5, None, None, None]
    """
    if value is None or isinstance(value, str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def fmt_number(
    value: Any, digits: int = 2, *, finite: bool = False, dash: str = DASH, signed: bool = False
) -> str:
    """``value`` with ``digits`` decimals, or ``dash`` when it is missing (:func:`is_missing`).

    Args:
        value: a number (int, float, numpy scalar), or a missing value.
        digits: decimals shown.
        finite: also print ±infinity as ``dash`` (by default it prints as ``inf``).
        dash: the text of a missing value.
        signed: a ``+`` before positive numbers (offsets, differences).

    Examples:
        >>> [fmt_number(v) for v in (0.456, 3, None, float("nan"))]
        ['0.46', '3.00', '—', '—']
        >>> fmt_number(12.345, 1), fmt_number(float("inf"), finite=True)
        ('12.3', '—')
        >>> fmt_number(1.25, 1, signed=True), fmt_number(-0.5, 2, signed=True)
        ('+1.2', '-0.50')
    """
    if is_missing(value):
        return dash
    number = float(value)
    if finite and math.isinf(number):
        return dash
    return f"{number:+.{digits}f}" if signed else f"{number:.{digits}f}"


@dataclass(frozen=True)
class MeanSD:
    """Mean and sample standard deviation of ``n`` values (``None`` and ``None`` when n is 0)."""

    mean: float | None
    sd: float | None
    n: int

    def as_dict(self, *, with_n: bool = True) -> dict[str, Any]:
        """``{"mean": ..., "sd": ..., "n": ...}`` (without ``n`` when ``with_n`` is False)."""
        out: dict[str, Any] = {"mean": self.mean, "sd": self.sd}
        if with_n:
            out["n"] = self.n
        return out


def mean_sd(values: Iterable[Any]) -> MeanSD:
    """Mean and sample sd (ddof 1; 0.0 for a single value) of the values that are not ``None``.

    Only ``None`` is dropped: a NaN stays in and makes both NaN (which
    :func:`fmt_mean_sd` prints as the dash).

    Examples:
        >>> mean_sd([1.0, None, 2.0, 3.0])
        MeanSD(mean=2.0, sd=1.0, n=3)
        >>> mean_sd([None])
        MeanSD(mean=None, sd=None, n=0)
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return MeanSD(None, None, 0)
    if any(math.isnan(v) for v in vals):  # statistics.stdev would raise on it
        return MeanSD(math.nan, math.nan, len(vals))
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return MeanSD(statistics.fmean(vals), sd, len(vals))


def fmt_mean_sd(
    stat: MeanSD | Mapping[str, Any] | None, digits: int = 2, *, dash: str = DASH
) -> str:
    """``"mean ± sd"`` with ``digits`` decimals each, or ``dash`` when there is no mean.

    Args:
        stat: a :class:`MeanSD`, or a mapping with ``"mean"`` and ``"sd"`` (as stored in a
            benchmark's JSON), or ``None``.
        digits: decimals of both numbers.
        dash: the text when ``stat`` or its mean is missing.

    Examples:
        >>> fmt_mean_sd(mean_sd([1, 2, 3])), fmt_mean_sd({"mean": None, "sd": None})
        ('2.00 ± 1.00', '—')
    """
    if stat is None:
        return dash
    mean, sd = (
        (stat.mean, stat.sd) if isinstance(stat, MeanSD) else (stat.get("mean"), stat.get("sd"))
    )
    if is_missing(mean):
        return dash
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: the header row, a ``|---|`` rule, one line per row; no final newline.

    Cells are written as given (escape any ``|`` in them first).

    Examples:
        >>> print(markdown_table(["arm", "MAE"], [["baseline", "4.20"]]))
        | arm | MAE |
        |---|---|
        | baseline | 4.20 |
    """
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
