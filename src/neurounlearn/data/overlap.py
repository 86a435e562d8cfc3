"""Where the sites' target values overlap, and when site and target are entangled.

When one site holds only children and another most of the over-45s, whatever separates those
sites also tells age: unlearning site over every age removes age with it. Leave-one-site-out on
the bundled table shows the cost (docs: *Unseen scanners*): the network's age information on
the training sites falls, and every held-out adult site is predicted worse than by the
baseline. :func:`entanglement` finds such sites and the band of target values most sites share,
where site can be unlearned without taking the target along.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neurounlearn.config import RunConfig
from neurounlearn.errors import Problem

#: the shared band is taken between these quantiles of each site's target, so that one outlier
#: does not stretch it
TAIL = 0.05
#: a site with at least this share of its rows outside every other site's range (its minimum to
#: its maximum, widened by MARGIN of the whole cohort's range) is entangled
OUTSIDE = 0.2
#: how far beyond the other sites' ranges a row must lie to count as outside, as a share of the
#: whole cohort's range: the extremes of small random samples fall just outside each other
MARGIN = 0.05
#: sites with fewer labelled rows are not judged (their range is too uncertain), though they
#: still cover the others
MIN_ROWS = 20


@dataclass(frozen=True)
class Entanglement:
    """How a numeric target and the sites overlap.

    Args:
        outside: per site with at least ``min_rows`` labelled rows, the share of them
            outside the ranges (minimum to maximum, widened by :data:`MARGIN` of the cohort's
            range) of all the other sites.
        ranges: per judged site, its own range between its ``TAIL`` and ``1 - TAIL``
            quantiles.
        band: the widest interval of target values inside the ranges of at least half the
            sites (and at least two); None when no two sites overlap.
    """

    outside: dict[str, float]
    ranges: dict[str, tuple[float, float]]
    band: tuple[float, float] | None

    @property
    def entangled(self) -> dict[str, float]:
        """The sites with at least :data:`OUTSIDE` of their rows outside the others' ranges."""
        return {s: share for s, share in self.outside.items() if share >= OUTSIDE}


def entanglement(target: pd.Series, sites: pd.Series, *, min_rows: int = MIN_ROWS) -> Entanglement:
    """Per site, how much of its target range no other site covers; and the shared band.

    Args:
        target: the numeric target per row (non-numbers and missing values are ignored).
        sites: the site per row.
        min_rows: sites with fewer labelled rows are not judged and have no range; they
            still cover the others (from 2 rows).

    Examples:
        >>> ages = pd.Series([6, 7, 8, 6, 7, 20, 25, 30, 22, 28, 21, 26, 31, 24, 29.0])
        >>> sites = pd.Series(["kids"] * 5 + ["a"] * 5 + ["b"] * 5)
        >>> e = entanglement(ages, sites, min_rows=5)
        >>> e.entangled, e.band
        ({'kids': 1.0}, (21.6, 29.6))
    """
    y = pd.to_numeric(target, errors="coerce")
    known = y.notna().to_numpy()
    values = y.to_numpy(dtype=float)[known]
    labels = sites.astype(str).to_numpy()[known]
    groups = {s: values[labels == s] for s in sorted(set(labels.tolist()))}
    groups = {s: v for s, v in groups.items() if v.size >= 2}
    judged = {s: v for s, v in groups.items() if v.size >= min_rows}
    ranges = {
        s: (float(np.quantile(v, TAIL)), float(np.quantile(v, 1 - TAIL))) for s, v in judged.items()
    }
    margin = MARGIN * float(np.ptp(values)) if values.size else 0.0
    outside = {}
    for s, v in judged.items():
        covered = np.zeros(v.size, dtype=bool)
        for other, w in groups.items():
            if other != s:
                covered |= (v >= w.min() - margin) & (v <= w.max() + margin)
        outside[s] = float(1.0 - covered.mean())
    return Entanglement(outside, ranges, _shared_band(list(ranges.values())))


def _shared_band(ranges: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The widest interval inside at least half of ``ranges`` (and at least two)."""
    need = max(2, math.ceil(len(ranges) / 2))
    points = sorted({p for r in ranges for p in r})
    best: tuple[float, float] | None = None
    start: float | None = None
    for low, high in itertools.pairwise(points):
        mid = (low + high) / 2
        inside = sum(a <= mid <= b for a, b in ranges) >= need
        if inside and start is None:
            start = low
        if start is not None and (not inside or high == points[-1]):
            end = high if inside else low
            if best is None or end - start > best[1] - best[0]:
                best = (start, end)
            start = None
    return None if best is None else (round(best[0], 1), round(best[1], 1))


def unlearns_site_everywhere(cfg: RunConfig) -> bool:
    """Whether ``cfg``'s confounds unlearn its site column over every row, not conditional on
    the target (no ``subset``, not ``conditional``); whether a strategy unlearns them at all is
    the caller's to say (``compare`` sets one per arm)."""
    return any(
        c.name == cfg.data.site_column
        and c.kind == "categorical"
        and c.subset is None
        and not c.conditional
        for c in cfg.confounds
    )


def entanglement_problem(
    frame: pd.DataFrame, target: str, site: str, *, path: str | Path | None = None
) -> Problem | None:
    """A warning that ``site`` and a continuous ``target`` are entangled (:func:`entanglement`),
    with the band to unlearn in instead; None when they are not, or the target takes 10 values
    or fewer. ``check``, ``fit`` and ``compare`` ask for it when a run unlearns site over
    every value (:func:`unlearns_site_everywhere`)."""
    if target not in frame or site not in frame:
        return None
    if pd.to_numeric(frame[target], errors="coerce").nunique() <= 10:
        return None  # a class label, not a continuous target
    found = entanglement(frame[target], frame[site])
    worst = sorted(found.entangled.items(), key=lambda item: -item[1])
    if not worst:
        return None
    named = ", ".join(
        f"'{s}' {share:.0%} ({found.ranges[s][0]:g}-{found.ranges[s][1]:g})" for s, share in worst
    )
    hint = f"erase {site} conditional on {target} (erase.0.name={site})"
    if found.band is not None:
        low, high = found.band
        hint = (
            f"unlearn {site} only where most sites' {target} values overlap "
            f'(confounds.0.subset: "{low:g} <= {target} <= {high:g}"), audit in that band '
            f"(audit.band) and {hint}"
        )
    return Problem(
        f"{site} and {target} are entangled: rows outside the {target} range of every other "
        f"{site}: {named}; unlearning {site} over every {target} removes {target} with it, "
        "and sites never seen in training are then predicted worse than without unlearning",
        file=path,
        column=site,
        hint=hint,
        severity="warning",
    )
