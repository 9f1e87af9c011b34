"""The cloud mask on its hard cases: a bright cold desert, snow, and a warm thin cloud (issue 25, item 4).

Each case is a 128 px scene of :func:`sftl_dask.testbed.build.write_hard_case` (the scenes' radiative path: surface
emissivity and reflectance, LOWTRAN7 terms, clouds, instrument, 12-bit DN), written as a VIMI product and read back
by :class:`sftl_dask.io.vimi.VimiProduct`; the mask gets what ingest gives it (``bt_10_80``, ``ndvi``, ``red``,
``ndsi``, the XML's ``CloudPercent``). Scored against the scene's true cloud (opaque cores and their fringe of 5-40 %
cover; the thin cloud wherever its optical depth is above 0):

* detection: flagged true-cloud pixels / true-cloud pixels;
* false alarms: flagged clear pixels / clear pixels, and ``far``: the same more than ``CLOUD_ADJACENT_PX`` from a
  true cloud (where no edge rule excuses them);
* leak: true-cloud pixels neither flagged nor within ``CLOUD_ADJACENT_PX`` (square) of a flagged pixel, i.e. what
  ``good()`` would keep as far as clouds go (``qc``'s ``cloud`` and ``cloud_adjacent`` bits).

"Before" is the mask without its new tests (``warm_k=None``, no ``ndsi``): the rules of the default testbed's
figures, which flag 89 % of the clear desert and 56 % of the clear snow scene. The whole module takes ~3-7 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from sftl_dask.ingest import ingest
from sftl_dask.io.cube import open_cube
from sftl_dask.io.lst import CLOUD_ADJACENT_PX
from sftl_dask.io.vimi import VimiProduct
from sftl_dask.physics.cloud import FRINGE_PX, NDSI_SNOW, SNOW_MAX_BT_K, cloud_mask
from sftl_dask.testbed.build import write_hard_case
from sftl_dask.testbed.scene import HARD_CASES, synthesize_hard_case

SIZE = 128
BANDS = ("bt_10_80", "bt_11_95", "ndvi", "red", "ndsi")
SQUARE = np.ones((2 * CLOUD_ADJACENT_PX + 1,) * 2, dtype=bool)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Per case: the bands as the reader gives them, the XML's CloudPercent and the truth."""
    out = tmp_path_factory.mktemp("hard_cases")
    res = {}
    for case in HARD_CASES:
        path, truth = write_hard_case(case, out, size=SIZE)
        prod = VimiProduct(path)
        with prod.open(chunks=None) as ds:
            bands = {k: ds[k].values.astype(np.float64) for k in BANDS}
        res[case] = {"bands": bands, "cloud_percent": float(prod.metadata["CloudPercent"]), "truth": truth}
    return res


def _score(scene: dict[str, Any], *, new_rules: bool = True) -> dict[str, float]:
    b = scene["bands"]
    kw: dict[str, Any] = {"ndsi": b["ndsi"]} if new_rules else {"warm_k": None}
    m = cloud_mask(b["bt_10_80"], b["ndvi"], b["red"], cloud_percent=scene["cloud_percent"], **kw)
    cloud = scene["truth"].cloud
    clear, far = ~cloud, ~binary_dilation(cloud, structure=SQUARE)
    dropped = binary_dilation(m, structure=SQUARE)
    return {"detection": (m & cloud).sum() / cloud.sum(), "false_alarms": (m & clear).sum() / clear.sum(),
            "far": (m & far).sum() / far.sum(), "leak": (~dropped & cloud).sum() / cloud.sum()}


def test_hard_cases_hold_what_makes_them_hard(scenes: dict[str, dict[str, Any]]) -> None:
    """The cases are what they claim, as the reader sees them: a desert brighter than the bright test's 0.25 and
    cold; snow at NDSI 0.8 below freezing; a thin cloud 1-3 K colder than the clear scene (by ``bt_10_80``)."""
    d, s, t = (scenes[k] for k in ("bright_cold_desert", "snow", "warm_thin_cloud"))
    clear = ~d["truth"].cloud
    assert np.median(d["bands"]["red"][clear]) > 0.3 and np.median(d["bands"]["ndvi"][clear]) < 0.15
    assert np.median(d["truth"].lst[clear]) < 273.15
    snow = s["bands"]["ndsi"] > 0.7
    assert 0.45 < snow.mean() < 0.6 and (s["truth"].lst[snow] < 273.15).all()
    bt, cloud = t["bands"]["bt_10_80"], t["truth"].cloud
    assert 0.3 < cloud.mean() < 0.4
    drop = np.median(bt[~cloud]) - np.median(bt[t["truth"].cloud_core])
    assert 1.0 < drop < 4.0, drop  # measured 2.7 K


def test_before_the_new_tests_desert_and_snow_were_taken_for_cloud(scenes: dict[str, dict[str, Any]]) -> None:
    """Without the snow and bright-but-warm tests, the bright test flags the clear ground: measured 89.4 % of the
    desert's clear pixels and 56.1 % of the snow scene's (its snow)."""
    assert _score(scenes["bright_cold_desert"], new_rules=False)["false_alarms"] > 0.85
    assert _score(scenes["snow"], new_rules=False)["false_alarms"] > 0.5


def test_bright_cold_desert_is_kept_and_its_clouds_found(scenes: dict[str, dict[str, Any]]) -> None:
    """Measured: detection 1.000, false alarms 5.2 % (all but 1.2 % of the clear pixels within
    ``CLOUD_ADJACENT_PX`` of a cloud: the fringe rule's price), leak 0. Pinned: >= 0.99, <= 8 %, far <= 2 %, 0."""
    r = _score(scenes["bright_cold_desert"])
    assert r["detection"] >= 0.99 and r["false_alarms"] <= 0.08 and r["far"] <= 0.02, r
    assert r["leak"] == 0.0, r


def test_snow_is_kept_and_the_clouds_over_it_found(scenes: dict[str, dict[str, Any]]) -> None:
    """Measured: detection 0.990, false alarms 1.3 %, none far from a cloud, leak 0. Pinned: >= 0.98, <= 3 %,
    far 0, 0. Without the 1.65 um band (no ``ndsi``) the bright-but-warm test alone keeps this snow (it is within
    8 K of the clear reference here): far false alarms 0.8 %."""
    r = _score(scenes["snow"])
    assert r["detection"] >= 0.98 and r["false_alarms"] <= 0.03 and r["far"] == 0.0 and r["leak"] == 0.0, r
    b = scenes["snow"]["bands"]
    m = cloud_mask(b["bt_10_80"], b["ndvi"], b["red"], cloud_percent=scenes["snow"]["cloud_percent"])
    far = ~binary_dilation(scenes["snow"]["truth"].cloud, structure=SQUARE)
    assert (m & far).sum() / far.sum() <= 0.015


def test_the_warm_thin_cloud_is_missed_as_documented(scenes: dict[str, dict[str, Any]]) -> None:
    """The known miss (physics/cloud.py, docs/products.md), pinned so that a change shows: detection 0 and leak
    100 % (measured; before the new tests 10 % was flagged where the cloud over bare soil crossed red 0.25, now
    taken for bright warm ground), no false alarm. The split-window difference does not separate it: its median
    BT10.8 - BT11.95 differs from the clear scene's by -0.3 K (the moist column above damps 12 um more), inside
    the clear 1-99 % range of ~2 K."""
    t = scenes["warm_thin_cloud"]
    r = _score(t)
    assert r["detection"] <= 0.01 and r["leak"] >= 0.99 and r["false_alarms"] == 0.0, r
    btd = t["bands"]["bt_10_80"] - t["bands"]["bt_11_95"]
    cloud = t["truth"].cloud
    lo, hi = np.percentile(btd[~cloud], [1, 99])
    assert hi - lo > 1.5 and lo < np.median(btd[cloud]) < hi
    assert abs(np.median(btd[cloud]) - np.median(btd[~cloud])) < 0.6


def test_hard_cases_are_seeded_and_unknown_ones_refused() -> None:
    a, _ = synthesize_hard_case("snow", size=64, seed=1)
    b, _ = synthesize_hard_case("snow", size=64, seed=1)
    np.testing.assert_array_equal(a.dn_b7_b12, b.dn_b7_b12)
    np.testing.assert_array_equal(a.dn_b1_b6, b.dn_b1_b6)
    with pytest.raises(ValueError, match=r"hard case must be one of .*'snow'.*got 'fog'"):
        synthesize_hard_case("fog")


# --------------------------------------------------------------------------------------------- the rules, crafted
def _bright_field() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 40 x 40 clear scene at 270-278 K (west-east), NDVI 0.5, red 0.06, NDSI -0.3; the reference is ~277.2 K."""
    bt = 270.0 + np.linspace(0.0, 8.0, 40)[None, :] * np.ones((40, 40))
    return bt, np.full((40, 40), 0.5), np.full((40, 40), 0.06), np.full((40, 40), -0.3)


def test_snow_test_needs_high_ndsi_and_a_cold_pixel() -> None:
    bt, ndvi, red, ndsi = _bright_field()
    ref = float(np.percentile(bt, 90))
    red[5:10, 5:10], ndvi[5:10, 5:10], ndsi[5:10, 5:10] = 0.85, -0.05, 0.8  # snow
    bt[5:10, 5:10] = ref - 12.0  # cold enough to pass as a bright, cold cloud without the snow test
    red[25:30, 5:10], ndvi[25:30, 5:10], ndsi[25:30, 5:10] = 0.6, 0.0, NDSI_SNOW - 0.01  # a cloud: flat
    bt[25:30, 5:10] = ref - 12.0
    mask = cloud_mask(bt, ndvi, red, ndsi=ndsi, dilate_px=0)
    assert not mask[5:10, 5:10].any() and mask[25:30, 5:10].all() and mask.sum() == 25
    assert cloud_mask(bt, ndvi, red, dilate_px=0)[5:10, 5:10].all()  # no NDSI: no snow test
    hot = bt.copy()
    hot[5:10, 5:10] = SNOW_MAX_BT_K + 1.0  # too warm for snow, and warmer than the clear reference
    assert cloud_mask(hot, ndvi, red, ndsi=ndsi, dilate_px=0, warm_k=None)[5:10, 5:10].all()


def test_bright_pixels_as_warm_as_the_clear_ground_are_not_cloud_off_a_cloud_fringe() -> None:
    bt, ndvi, red, _ = _bright_field()
    ref = float(np.percentile(bt, 90))
    red[5:10, 25:30], ndvi[5:10, 25:30] = 0.35, 0.08  # bright ground, 3 K below the reference
    bt[5:10, 25:30] = ref - 3.0
    assert not cloud_mask(bt, ndvi, red, dilate_px=0).any()
    assert cloud_mask(bt, ndvi, red, dilate_px=0, warm_k=None).sum() == 25  # the test off: the old bright test
    assert cloud_mask(bt, ndvi, red, dilate_px=0, warm_k=2.0).sum() == 25  # 3 K below is too cold for 2 K
    bt[20:24, 25:29] = ref - 40.0  # a cold cloud 10 rows below: its fringe is FRINGE_PX px
    red[10:20, 25:30], ndvi[10:20, 25:30], bt[10:20, 25:30] = 0.35, 0.08, ref - 3.0  # bright ground up to it
    mask = cloud_mask(bt, ndvi, red, dilate_px=0)
    rows = np.nonzero(mask[:, 25:29].any(axis=1))[0]
    assert rows.min() == 20 - FRINGE_PX and rows.max() == 23  # the cloud and its fringe, not the ground beyond


@pytest.mark.slow
def test_ingest_gives_the_mask_the_snow_test(tmp_path: Path) -> None:
    """The cube's ``cloud`` of the snow case, ingested with its ERA5 and GED (~10 s: the GED tile), is the mask
    with the reader's ``ndsi``: no clear pixel flagged far from a cloud (without ``ndsi``, 0.8 %; measured 0).
    The default-run tests above pin the same mask on the same scene, from the reader's bands."""
    path, truth = write_hard_case("snow", tmp_path / "tb", size=SIZE, ancillary=True)
    summary = ingest([path], tmp_path / "cube", era5=sorted(str(p) for p in (tmp_path / "tb" / "era5").glob("*.nc")),
                     ged=tmp_path / "tb" / "ged")
    assert summary["ingested"] == 1 and not summary["failed"]
    with VimiProduct(path).open(chunks=None) as ds:
        at = {"x": ds["x"].values, "y": ds["y"].values, "method": "nearest", "tolerance": 1.0}
    flagged = open_cube(tmp_path / "cube")["cloud"].isel(time=0).reindex(**at).values > 0.5
    far = ~binary_dilation(truth.cloud, structure=SQUARE)
    assert (flagged & far).sum() == 0 and (flagged & truth.cloud).sum() / truth.cloud.sum() >= 0.98
