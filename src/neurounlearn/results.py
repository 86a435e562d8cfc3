"""Typed views of the audit's results, and the one place that judges them.

``metrics.json`` and ``comparison.json`` keep their nested keys (``leakage -> confound ->
probe -> linear -> balanced_accuracy``); these classes read them once, with
:meth:`from_dict`, instead of every reader walking the dicts with ``.get``. Whether a probe reads
a confound ("decodable") or reads nothing beyond chance ("at chance") is decided here only.

Examples:
    >>> block = {"kind": "categorical", "chance": 0.2, "probe": {"linear": {
    ...     "balanced_accuracy": 0.6, "ci95": [0.5, 0.7]}}}
    >>> result = LeakageResult.from_dict(block)
    >>> result.figure("linear"), result.probes["linear"].decodable(result.chance)
    (0.6, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from neurounlearn.formatting import as_number

#: A probe without a confidence interval counts as "at chance" when its balanced accuracy is
#: within this margin of chance.
CHANCE_MARGIN = 0.05
#: A continuous confound counts as decodable when its R² (CI lower bound) is above this.
R2_DECODABLE = 0.05
#: The permutation test's level, used when a probe has no confidence interval.
ALPHA = 0.05


def within_chance(value: float | None, chance: float, margin: float = CHANCE_MARGIN) -> bool | None:
    """Whether a figure without a confidence interval reads nothing beyond chance: at most
    ``margin`` above it; ``None`` when there is no figure.

    Examples:
        >>> within_chance(0.37, 1 / 3), within_chance(0.40, 1 / 3), within_chance(None, 0.5)
        (True, False, None)
    """
    return None if value is None else value <= chance + margin


@dataclass(frozen=True)
class ProbeResult:
    """One fresh probe's figure on held-out rows: balanced accuracy (a categorical confound)
    or R² (a continuous one), its 95% interval and permutation p-value when computed."""

    metric: str  # "balanced_accuracy" | "r2"
    value: float | None
    ci95: tuple[float | None, float | None] = (None, None)
    p_value: float | None = None
    chance: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, block: dict[str, Any] | None, *, chance: float | None = None) -> ProbeResult:
        """``chance``: the audit's chance level, for a probe whose block states none of its own
        (an empty probe states ``null``, and keeps it)."""
        block = block or {}
        metric = "balanced_accuracy" if "balanced_accuracy" in block else "r2"
        ci = block.get("ci95") or [None, None]
        return cls(
            metric=metric,
            value=as_number(block.get(metric)),
            ci95=(as_number(ci[0]), as_number(ci[1])) if len(ci) == 2 else (None, None),
            p_value=as_number(block.get("p_value")),
            chance=as_number(block.get("chance")) if "chance" in block else as_number(chance),
            raw=dict(block),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw) if self.raw else {self.metric: self.value, "ci95": list(self.ci95)}

    @property
    def balanced_accuracy(self) -> float | None:
        """The figure when the probe is a classifier's, else ``None``."""
        return self.value if self.metric == "balanced_accuracy" else None

    @property
    def r2(self) -> float | None:
        """The figure when the probe is a regressor's, else ``None``."""
        return self.value if self.metric == "r2" else None

    @property
    def ci_method(self) -> str | None:
        """How the interval was made, when the block says (``compare``: across folds)."""
        method = self.raw.get("ci_method")
        return str(method) if method else None

    def at_chance(self, chance: float) -> bool:
        """Reads nothing beyond chance: the interval reaches chance, or, without one, the figure
        is within :data:`CHANCE_MARGIN` of it (:func:`within_chance`)."""
        low = self.ci95[0]
        if low is not None:
            return low <= chance
        return within_chance(self.value, chance) is True

    def decodable(self, chance: float | None) -> bool:
        """Reads the confound: the interval's lower bound is above chance (above
        :data:`R2_DECODABLE` for R²); without an interval, the permutation test is significant
        and the figure above that floor."""
        floor = R2_DECODABLE if self.metric == "r2" else chance
        if floor is None or self.value is None:
            return False
        low = self.ci95[0]
        if low is not None:
            return low > floor
        return self.p_value is not None and self.p_value < ALPHA and self.value > floor


@dataclass(frozen=True)
class LeakageResult:
    """The audit of one confound: its probes, chance, and the within-band (conditional)
    audit when there is one."""

    kind: str | None
    chance: float | None
    probes: dict[str, ProbeResult]
    conditional: LeakageResult | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, block: dict[str, Any] | None) -> LeakageResult:
        block = block or {}
        cond = block.get("conditional")
        chance = as_number(block.get("chance"))
        return cls(
            kind=block.get("kind"),
            chance=chance,
            probes={
                name: ProbeResult.from_dict(p, chance=chance)
                for name, p in (block.get("probe") or {}).items()
            },
            conditional=cls.from_dict(cond) if cond else None,
            raw=dict(block),
        )

    @property
    def metric(self) -> str:
        """``"r2"`` for a continuous confound, else ``"balanced_accuracy"``."""
        return "r2" if self.kind == "continuous" else "balanced_accuracy"

    @property
    def band(self) -> list[Any]:
        """A within-band (conditional) block's ``[low, high]``; empty when it states none."""
        return list(self.raw.get("band") or [])

    @property
    def warnings(self) -> list[str]:
        """The audit's own warnings (too few subjects per class, ...)."""
        return list(self.raw.get("warnings") or [])

    def chance_of(self, name: str) -> float | None:
        """The named probe's chance level, else the audit's."""
        chance = self.probe(name).chance
        return self.chance if chance is None else chance

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)

    def probe(self, name: str) -> ProbeResult:
        """The named probe (``linear``, ``nonlinear``), empty when it did not run."""
        return self.probes.get(name) or ProbeResult.from_dict(None)

    def figure(self, name: str) -> float | None:
        """The named probe's balanced accuracy or R²."""
        return self.probe(name).value

    def cells(self, name: str) -> tuple[float | None, float | None, float | None]:
        """``(figure, ci low, ci high)`` of the named probe."""
        p = self.probe(name)
        return p.value, p.ci95[0], p.ci95[1]


@dataclass(frozen=True)
class TaskResult:
    """``metrics.json``'s ``task`` block, typed where it is read: the kind, the main figures
    and the held-out count; ``per_site`` stays the block's ``{site: {"n", "mae" | ...}}``."""

    kind: str | None
    n: int | None
    mae: float | None
    balanced_accuracy: float | None
    per_site: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, block: dict[str, Any] | None) -> TaskResult:
        block = block or {}
        n = as_number(block.get("n"))
        return cls(
            kind=block.get("kind"),
            n=None if n is None else int(n),
            mae=as_number(block.get("mae")),
            balanced_accuracy=as_number(block.get("balanced_accuracy")),
            per_site=dict(block.get("per_site") or {}),
            raw=dict(block),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def leakage_results(leakage: dict[str, Any] | None) -> dict[str, LeakageResult]:
    """``metrics.json``'s ``leakage`` block, typed: confound -> :class:`LeakageResult`."""
    return {name: LeakageResult.from_dict(block) for name, block in (leakage or {}).items()}


def probe_cells(block: dict[str, Any] | None, probe: str) -> tuple[Any, Any, Any]:
    """``(figure, ci low, ci high)`` of one probe of a confound's audit block."""
    return LeakageResult.from_dict(block).cells(probe)
