"""Matchup tables: one schema, validated; bad rows named, never silently dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sftl_dask.matchups import MATCHUP_COLUMNS, validate_matchups


def _table(n: int = 3) -> pd.DataFrame:
    rows = []
    for i in range(n):
        r = {c: 0.5 for c in MATCHUP_COLUMNS}
        r |= {"site": "HL01", "region": "huailai", "land_cover": "cropland", "scene_id": f"S{i}",
              "time_utc": pd.Timestamp("2022-06-01T03:00") + pd.Timedelta(days=i), "row": 10, "col": 12,
              "bt_08_20": 300.0, "bt_08_63": 301.0, "bt_10_80": 302.0, "bt_11_95": 301.0, "vza": 1.0, "wvc": 2.0,
              "emis_08_20": 0.95, "emis_08_63": 0.95, "emis_10_80": 0.97, "emis_11_95": 0.98, "ndvi": 0.6,
              "cloud": 0, "ancillary_missing": 0, "lst_insitu": 305.0, "lst_insitu_std": 0.3, "n_insitu": 3,
              "reason": "ok"}
        rows.append(r)
    return pd.DataFrame(rows)


def test_valid_table_keeps_schema_and_dtypes():
    out = validate_matchups(_table())
    assert list(out.columns) == list(MATCHUP_COLUMNS)
    assert str(out["time_utc"].dtype).startswith("datetime64") and out["n_insitu"].dtype == np.int64


def test_missing_column_named():
    with pytest.raises(ValueError, match=r"mu\.parquet: missing column\(s\) lst_insitu"):
        validate_matchups(_table().drop(columns=["lst_insitu"]), source="mu.parquet")


def test_duplicate_timestamps_refused():
    t = _table()
    t.loc[1, "time_utc"] = t.loc[0, "time_utc"]
    with pytest.raises(ValueError, match="duplicate"):
        validate_matchups(t)


def test_unknown_site_refused():
    with pytest.raises(ValueError, match="unknown site"):
        validate_matchups(_table(), known_sites={"HH01": None})


def test_nan_in_usable_row_refused_but_allowed_with_a_reason():
    t = _table()
    t.loc[2, "wvc"] = np.nan
    with pytest.raises(ValueError, match="NaN in wvc"):
        validate_matchups(t)
    t.loc[2, "reason"] = "ancillary missing"
    assert len(validate_matchups(t)) == 3  # kept, with its reason
