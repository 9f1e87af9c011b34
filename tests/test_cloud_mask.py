"""The cloud mask against the testbed's true clouds, and its three rules and scene hint on crafted scenes.

A cloud left in the LST is the classic LST error (a cold value taken for a cold surface); a mask flagging clear
land throws good data away. The figures below are those of the session's small testbed (2 scenes per region,
640 px, seed 3: 3 cloudy scenes, 1 clear) as ingested into its cube, and of ``good()`` on its LST.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.ndimage import binary_dilation

from sftl_dask.api import open_lst
from sftl_dask.io.cube import open_cube
from sftl_dask.io.lst import CLOUD_ADJACENT_PX
from sftl_dask.physics.cloud import cloud_mask
from sftl_dask.retrieve import retrieve

ZONES = ("47N", "50N")


@pytest.fixture(scope="module")
def scored(small_testbed: Path, small_cube: tuple[Path, dict[str, Any]], retrieval_model: Callable[..., Path],
           tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Per scene of the small cube: pixel counts of the cube's ``cloud`` and of ``good()`` (split-window LST)
    against the truth, on the truth's grid (the cube's tiles taken at the truth's x/y)."""
    lst = tmp_path_factory.mktemp("cloud_lst") / "lst"
    retrieve(small_cube[0], retrieval_model("sw"), lst, threads=2, device="cpu")
    region = pd.read_csv(small_testbed / "truth" / "scenes.csv").set_index("scene_id")["region"].to_dict()
    rows = []
    for zone in ZONES:
        cube, good = open_cube(small_cube[0], zone=zone), open_lst(lst, zone=zone).sftl.good(check=False)
        for i in range(cube.sizes["time"]):
            slot = cube.isel(time=i)
            sid = str(slot["scene_id"].values)
            truth = xr.open_zarr(small_testbed / "truth" / f"{region[sid]}.zarr").sel(
                time=slot["time"].values, method="nearest", tolerance=np.timedelta64(1, "s")).load()
            at = {"x": truth["x"].values, "y": truth["y"].values, "method": "nearest", "tolerance": 1.0}
            flagged = slot["cloud"].reindex(**at).values > 0.5
            kept = np.isfinite(good["lst"].sel(time=slot["time"].values).reindex(**at).values)
            covered = np.isfinite(truth["bt_10_80"].values)
            cloud = truth["cloud"].values.astype(bool) & covered  # core and thin ring (5-40 % cover)
            near = binary_dilation(cloud, iterations=CLOUD_ADJACENT_PX) & covered  # cloud and its neighbours
            adjacent, far = near & ~cloud, covered & ~near
            rows.append({"scene_id": sid, "covered": int(covered.sum()), "cloud": int(cloud.sum()),
                         "detected": int((flagged & cloud).sum()), "clear": int((covered & ~cloud).sum()),
                         "false_alarms": int((flagged & ~cloud & covered).sum()), "far": int(far.sum()),
                         "far_flagged": int((flagged & far).sum()), "cloud_kept": int((kept & cloud).sum()),
                         "adjacent": int(adjacent.sum()), "adjacent_kept": int((kept & adjacent).sum()),
                         "far_kept": int((kept & far).sum())})
    return pd.DataFrame(rows).set_index("scene_id")


def test_the_testbed_has_cloudy_and_clear_scenes_to_score(scored: pd.DataFrame) -> None:
    assert len(scored) == 4 and (scored["cloud"] > 0).sum() == 3 and (scored["cloud"] == 0).sum() == 1
    assert (scored["covered"] == 640 * 640).all()


def test_the_cube_mask_detects_the_true_clouds(scored: pd.DataFrame) -> None:
    """Detection rate (flagged / true cloud, thin ring included), per cloudy scene: measured 0.984, 0.990,
    0.993 (the misses are thin-ring pixels). Pinned at >= 0.97: twice the worst miss rate; a mask that lost its
    edge dilation or its cold test misses far more."""
    cloudy = scored[scored["cloud"] > 0]
    rate = cloudy["detected"] / cloudy["cloud"]
    assert (rate >= 0.97).all(), rate.to_dict()
    assert cloudy["detected"].sum() / cloudy["cloud"].sum() >= 0.98


def test_the_cube_mask_flags_no_clear_land_away_from_clouds(scored: pd.DataFrame) -> None:
    """False alarms: none more than ``CLOUD_ADJACENT_PX`` px from a true cloud (measured 0 of ~1.27 M pixels,
    the clear scene included); next to a cloud, the edge dilation flags 0.8-1.7 % of the clear pixels (pinned
    below 3 %)."""
    assert scored["far_flagged"].sum() == 0, scored["far_flagged"].to_dict()
    rate = scored["false_alarms"] / scored["clear"]
    assert (rate <= 0.03).all(), rate.to_dict()
    clear_scene = scored[scored["cloud"] == 0]
    assert (clear_scene["false_alarms"] == 0).all()  # CloudPercent 0 and nothing cold: nothing flagged


def test_good_lst_keeps_no_cloud_and_almost_no_cloud_adjacent_pixel(scored: pd.DataFrame) -> None:
    """Leak into ``good()``: no true-cloud pixel (measured 0); of the clear pixels within ``CLOUD_ADJACENT_PX`` of
    a true cloud, 0.20-0.35 % kept (pinned <= 1 %); and the good LST is not bought by dropping clear land:
    >= 95 % of the far clear pixels kept (measured 95.4-99.99 %; the rest are outside the pre-training range)."""
    assert scored["cloud_kept"].sum() == 0, scored["cloud_kept"].to_dict()
    cloudy = scored[scored["adjacent"] > 0]
    leak = cloudy["adjacent_kept"] / cloudy["adjacent"]
    assert (leak <= 0.01).all(), leak.to_dict()
    kept = scored["far_kept"] / scored["far"]
    assert (kept >= 0.95).all(), kept.to_dict()


# --------------------------------------------------------------------------------------------- the rules, crafted
def _field(bt: float = 300.0, shape: tuple[int, int] = (40, 40)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clear vegetated scene: BT ``bt`` K with a 0-8 K west-east gradient, NDVI 0.5, red reflectance 0.06."""
    grad = np.linspace(0.0, 8.0, shape[1])[None, :] * np.ones(shape)
    return bt + grad, np.full(shape, 0.5), np.full(shape, 0.06)


def test_cold_rule_flags_pixels_more_than_cold_k_below_the_clear_reference_and_their_edge() -> None:
    bt, ndvi, red = _field()
    ref = float(np.percentile(bt, 90))
    bt[10:14, 10:14] = ref - 31.0  # just past the 30 K margin
    bt[25:28, 25:28] = ref - 29.0  # cool, not cloud
    mask = cloud_mask(bt, ndvi, red)
    core = np.zeros_like(mask)
    core[10:14, 10:14] = True
    np.testing.assert_array_equal(mask, binary_dilation(core, iterations=1))  # the core and a 1 px edge
    assert not cloud_mask(bt, ndvi, red, cold_k=32.0).any()
    np.testing.assert_array_equal(cloud_mask(bt, ndvi, red, dilate_px=0), core)


def test_bright_rule_needs_bright_and_not_vegetated_and_the_cold_reference_ignores_bright_pixels() -> None:
    bt, ndvi, red = _field()
    red[5:8, 5:8], ndvi[5:8, 5:8] = 0.40, 0.05  # bright, flat and 12 K below the clear reference: cloud
    bt[5:8, 5:8] = float(np.percentile(bt, 90)) - 12.0
    red[20:23, 20:23], ndvi[20:23, 20:23] = 0.40, 0.45  # bright but green: not cloud
    red[30:33, 30:33], ndvi[30:33, 30:33] = 0.24, 0.05  # bare soil below 0.25: not cloud
    mask = cloud_mask(bt, ndvi, red, dilate_px=0)
    assert mask.sum() == 9 and mask[5:8, 5:8].all()
    assert not cloud_mask(bt, ndvi, None).any()  # without the red band there is no brightness test


def test_cloud_percent_zero_asks_for_six_kelvin_more_cold() -> None:
    bt, ndvi, red = _field()
    ref = float(np.percentile(bt, 90))
    bt[10:14, 10:14] = ref - 33.0  # cold past 30 K, not past 36 K
    assert cloud_mask(bt, ndvi, red, cloud_percent=12.0, dilate_px=0).sum() == 16
    assert cloud_mask(bt, ndvi, red, cloud_percent=None, dilate_px=0).sum() == 16
    assert not cloud_mask(bt, ndvi, red, cloud_percent=0.0).any()  # the product says clear: cool fields stay
    bt[10:14, 10:14] = ref - 37.0
    assert cloud_mask(bt, ndvi, red, cloud_percent=0.0, dilate_px=0).sum() == 16


def test_outside_the_scene_is_never_cloud_and_shapes_must_agree() -> None:
    bt, ndvi, red = _field()
    bt[:, :5] = np.nan
    bt[10:14, 10:14] = 200.0
    mask = cloud_mask(bt, ndvi, red, dilate_px=8)
    assert not mask[:, :5].any() and mask[10:14, 10:14].all()
    assert not cloud_mask(np.full((4, 4), np.nan), np.zeros((4, 4))).any()
    with pytest.raises(ValueError, match=r"cloud_mask: shapes differ: bt_10_80 \(40, 40\), ndvi \(4, 4\)"):
        cloud_mask(bt, np.zeros((4, 4)))
