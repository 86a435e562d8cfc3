"""Where the sites' targets overlap: entangled sites, the shared band, and the warning that
unlearning site over every age would take age along."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import make_manifest

from neurounlearn.checks import check_manifest
from neurounlearn.config import validate_config
from neurounlearn.data.overlap import entanglement, entanglement_problem


def _entangled_manifest() -> pd.DataFrame:
    """Three adult sites (20-40) and one site of children (5-8)."""
    frame = make_manifest(sites=4, per_site=20, seed=1)
    rng = np.random.default_rng(0)
    adults = frame["site"] != "site3"
    frame.loc[adults, "age"] = np.round(rng.uniform(20, 40, adults.sum()), 1)
    frame.loc[~adults, "age"] = np.round(rng.uniform(5, 8, (~adults).sum()), 1)
    return frame


def test_a_site_no_other_site_covers_is_entangled() -> None:
    frame = _entangled_manifest()
    found = entanglement(frame["age"], frame["site"])
    assert found.entangled == {"site3": 1.0}
    assert found.outside["site0"] < found.outside["site3"]
    low, high = found.band or (0.0, 0.0)
    assert 20 <= low < high <= 40  # the adults' shared ages, not the children's


def test_overlapping_sites_are_not_entangled() -> None:
    frame = make_manifest(sites=3, per_site=30, seed=2)  # every site 20-80
    assert entanglement(frame["age"], frame["site"]).entangled == {}
    assert entanglement_problem(frame, "age", "site") is None


def test_the_warning_names_the_site_and_the_band() -> None:
    problem = entanglement_problem(_entangled_manifest(), "age", "site")
    assert problem is not None and problem.severity == "warning"
    assert "'site3' 100%" in problem.message
    assert "confounds.0.subset" in (problem.hint or "")


def test_a_class_label_is_never_called_entangled() -> None:
    frame = _entangled_manifest()
    frame["label"] = (frame["site"] == "site3").astype(int)  # site3 all ones
    assert entanglement_problem(frame, "label", "site") is None


@pytest.mark.parametrize(("subset", "warned"), [(None, True), ("20 <= age <= 40", False)])
def test_check_warns_only_when_site_is_unlearned_over_every_age(
    tmp_path: Path, subset: str | None, warned: bool
) -> None:
    path = tmp_path / "m.csv"
    _entangled_manifest().to_csv(path, index=False)
    cfg = validate_config(
        {
            "data": {"path": str(path), "features": r"^f\d$", "target": "age"},
            "confounds": [{"name": "site", "subset": subset}],
        }
    )
    found = check_manifest(cfg)
    assert any("entangled" in p.message for p in found.problems) is warned
    assert not found.errors
