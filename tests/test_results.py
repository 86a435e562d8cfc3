"""The typed views of the audit's results: one place decides "at chance" and "decodable"."""

from __future__ import annotations

from neurounlearn.results import (
    CHANCE_MARGIN,
    LeakageResult,
    ProbeResult,
    TaskResult,
    leakage_results,
    within_chance,
)


def test_within_chance_takes_the_margin_it_is_given() -> None:
    assert within_chance(0.5 + CHANCE_MARGIN, 0.5) is True
    assert within_chance(0.56, 0.5) is False
    assert within_chance(0.56, 0.5, margin=0.10) is True  # benchmarks/paper.py's wider margin
    assert within_chance(None, 0.5) is None


def test_a_probe_without_an_interval_falls_back_on_the_margin_and_the_p_value() -> None:
    near = ProbeResult.from_dict({"balanced_accuracy": 0.37, "p_value": 0.01})
    far = ProbeResult.from_dict({"balanced_accuracy": 0.45, "p_value": 0.01})
    assert near.at_chance(1 / 3) and not far.at_chance(1 / 3)
    assert far.decodable(1 / 3)
    assert not ProbeResult.from_dict({"balanced_accuracy": 0.45, "p_value": 0.2}).decodable(1 / 3)


def test_an_interval_decides_when_there_is_one() -> None:
    probe = ProbeResult.from_dict({"balanced_accuracy": 0.6, "ci95": [0.3, 0.7]})
    assert probe.at_chance(1 / 3) and not probe.decodable(1 / 3)
    r2 = ProbeResult.from_dict({"r2": 0.2, "ci95": [0.06, 0.3]})
    assert r2.decodable(None) and r2.r2 == 0.2 and r2.balanced_accuracy is None


def test_a_probe_keeps_its_own_chance_and_else_takes_the_audits() -> None:
    audit = LeakageResult.from_dict(
        {
            "kind": "continuous",
            "chance": 0.0,
            "probe": {
                "linear": {"r2": 0.1},  # states no chance: the audit's
                "nonlinear": {"r2": None, "chance": None},  # an empty probe states null
            },
        }
    )
    assert audit.probe("linear").chance == 0.0
    assert audit.probe("nonlinear").chance is None
    assert audit.chance_of("nonlinear") == 0.0
    assert audit.metric == "r2"


def test_missing_blocks_read_as_empty() -> None:
    assert leakage_results(None) == {}
    empty = LeakageResult.from_dict(None)
    assert empty.figure("linear") is None and empty.conditional is None and empty.band == []
    assert TaskResult.from_dict({"kind": "regression", "mae": 4, "n": 12}).mae == 4.0
    assert TaskResult.from_dict(None).per_site == {}
