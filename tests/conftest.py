"""Shared fixtures: tiny synthetic manifests written into a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

#: Feature columns of the synthetic manifests (select them with ``--features '^f\d$'``).
FEATURES = [f"f{i}" for i in range(6)]


def make_manifest(sites: int = 3, per_site: int = 6, seed: int = 0) -> pd.DataFrame:
    """``per_site`` subjects at each of ``sites`` sites: subject, site, age, sex, f0..f5.

    Features are standard normal plus a per-site shift (site signal to find and unlearn) and,
    in ``f0``, some age signal (a task to learn). Ids are unique; every row is distinct.
    """
    rng = np.random.default_rng(seed)
    n = sites * per_site
    site_index = np.repeat(np.arange(sites), per_site)
    age = np.round(rng.uniform(20, 80, n), 1)
    features = rng.normal(size=(n, len(FEATURES))) + site_index[:, None] * 0.8
    features[:, 0] += (age - 50) / 15
    frame = pd.DataFrame(
        {
            "subject": [f"sub{i:03d}" for i in range(n)],
            "site": [f"site{k}" for k in site_index],
            "age": age,
            "sex": np.tile(["F", "M"], n // 2 + 1)[:n],
        }
    )
    for j, name in enumerate(FEATURES):
        frame[name] = np.round(features[:, j], 4)
    return frame


@pytest.fixture(scope="session")
def manifest_factory() -> Callable[..., pd.DataFrame]:
    """``manifest_factory(sites=3, per_site=6, seed=0)`` -> a valid synthetic manifest."""
    return make_manifest


@pytest.fixture
def manifest_frame() -> pd.DataFrame:
    """A fresh, valid 3 sites x 6 subjects manifest to modify."""
    return make_manifest()


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[..., Path]:
    """``write_manifest(frame=None, name="manifest.csv")`` -> path of the CSV in ``tmp_path``.

    Without a frame it writes the valid default manifest (3 sites x 6 subjects).
    """

    def write(frame: pd.DataFrame | None = None, name: str = "manifest.csv") -> Path:
        path = tmp_path / name
        (make_manifest() if frame is None else frame).to_csv(path, index=False)
        return path

    return write


@pytest.fixture(scope="session")
def estimator_check_failure() -> Callable[[str, object], str | None]:
    """``estimator_check_failure(check, estimator)`` -> what scikit-learn's ``check`` (a name
    in ``sklearn.utils.estimator_checks``) found wrong, or ``None`` when it passes."""
    from sklearn.utils import estimator_checks

    def failure(check: str, estimator: object) -> str | None:
        try:
            getattr(estimator_checks, check)(type(estimator).__name__, estimator)
        except Exception as err:  # each check reports what it found by raising
            return f"{type(err).__name__}: {err}"
        return None

    return failure


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Image caches go to the test's own folder, never to the user's ~/.cache."""
    monkeypatch.setenv("NEUROUNLEARN_CACHE_DIR", str(tmp_path / "volume-cache"))
