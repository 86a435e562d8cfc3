"""The bundled OpenNeuroTransfer dataset."""

from __future__ import annotations

import hashlib
import re

import pandas as pd

from neurounlearn.data.bundled import (
    OPENNEURO_FEATURES,
    OPENNEURO_FILES,
    attribution,
    bundled_bytes,
    bundled_sha256,
    openneuro_transfer,
    write_openneuro_transfer,
)
from neurounlearn.data.manifest import select_features

META = ["sub_id", "age", "sex", "site", "sitenum"]


def test_shipped_files_match_attribution_checksums():
    sums = bundled_sha256()
    assert sorted(sums) == sorted(OPENNEURO_FILES)
    for name, expected in sums.items():
        assert hashlib.sha256(bundled_bytes(name)).hexdigest() == expected


def test_combined_table_shape_and_sites():
    df = openneuro_transfer()
    assert df.shape == (546, 250)
    assert isinstance(df.index, pd.RangeIndex)
    assert df["site"].nunique() == 6
    assert df["sub_id"].iloc[0] == "sub-ds003416cIVs093"  # the training file comes first


def test_feature_regex_selects_exactly_the_freesurfer_columns():
    df = openneuro_transfer()
    features = select_features(df, OPENNEURO_FEATURES, "openneuro")
    assert len(features) == 245
    assert features == list(df.columns[5:])
    assert not any(re.search(OPENNEURO_FEATURES, c) for c in META)


def test_written_csv_reads_back_identical(tmp_path):
    path = write_openneuro_transfer(tmp_path / "sub" / "cohort.csv")
    assert path == tmp_path / "sub" / "cohort.csv"
    back = pd.read_csv(path, dtype={"sub_id": str})
    pd.testing.assert_frame_equal(back, openneuro_transfer())
    assert [p.name for p in path.parent.iterdir()] == ["cohort.csv"]  # no temp file left


def test_writing_into_a_folder_uses_the_default_name(tmp_path):
    assert write_openneuro_transfer(tmp_path).name == "openneuro_transfer.csv"


def test_attribution_names_licence_and_source():
    text = attribution()
    assert "CC0" in text
    assert "PCNtoolkit" in text
