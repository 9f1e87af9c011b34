"""A simple per-pixel cloud test for VIMI scenes (thermal + visible), documented and conservative.

A pixel is cloud when any of these holds:

1. **Cold**: ``bt_10_80`` is more than ``cold_k`` (default 30 K) below the scene's clear-sky
   reference, the 90th percentile of ``bt_10_80`` over pixels that are not bright (clouds are
   cold; the warm tail of a scene is almost surely clear). The margin is wide because clear
   scenes themselves span ~25 K between sunlit desert and open water at midday.
2. **Bright and not vegetated**: red TOA reflectance above 0.25 with NDVI below 0.2 (clouds are
   bright and spectrally flat; bare soils in the 0.6 um band rarely exceed 0.25), unless the pixel is
   snow or a bright warm surface (below).
3. **Edge**: within ``dilate_px`` pixels of a pixel flagged by 1 or 2 (cloud edges and thin
   fringes are partly cloudy and colder than the surface).

Two tests keep bright surfaces out of rule 2 (the hard cases of :func:`sftl_dask.testbed.scene.synthesize_hard_case`):

* **Snow** (where ``ndsi`` is given): NDSI = (B2 - B5) / (B2 + B5) of the 0.56 and 1.65 um reflectances above 0.4
  and ``bt_10_80`` below 283 K is snow, not cloud: ice absorbs at 1.6 um, water and ice clouds scatter there (the
  SNOMAP test of the MODIS snow products, NDSI > 0.4, Hall et al. 2002, Remote Sens. Environ. 83:181; the thermal
  screen 283 K of their Collection 5, Hall and Riggs 2007, Hydrol. Process. 21:1534). A bright pixel must also be
  bright here (red > 0.25, which does the job of SNOMAP's NIR > 0.11: water has a high NDSI but is dark).
* **Bright but warm** (``warm_k``, default 8 K): a bright pixel no more than ``warm_k`` below the clear-sky
  reference is a bright surface (a Gobi, a salt flat, snow seen without the 1.6 um band), not cloud: a water cloud
  bright enough to pass 0.25 at 0.65 um has an optical depth of several units, so it is nearly opaque in the thermal
  and shows its top temperature, which is colder than the sunlit ground below it. The reference is the one of rule
  1 (over all pixels where every pixel is bright). Measured on the testbed's bright cold desert and snow, clear
  bright pixels lie 1-6 K below the reference, cloud cores 17-27 K.

Neither applies within :data:`FRINGE_PX` pixels of a cold or bright-and-colder pixel: there a bright warm pixel is
a cloud's fringe (part cloud, the ground showing through), as bright as the cloud and nearly as warm as the ground.
This also leaves the default testbed's masks as they were (its scenes have no snow and no bright ground away from
clouds; checked pixel for pixel on the small testbed's four scenes).

**Known misses** (measured on the hard cases, ``tests/test_cloud_hard_cases.py``; docs/products.md):

* A **warm thin cloud** (low, semi-transparent, a few K colder than the surface, slightly brighter) is not
  detected: it lowers ``bt_10_80`` by ~3 K and raises the red reflectance to 0.1-0.3, both within a clear scene's
  spread; where it crosses red 0.25 over bare soil the bright-but-warm test takes it for ground. The split-window
  difference BT10.8 - BT12.0, MOD35's thin-cirrus test (Saunders and Kriebel 1988, Int. J. Remote Sens. 9:123),
  does not separate it either: under a moist column a low water cloud moves the difference by -0.3 K (median),
  against a clear-sky 1-99 % range of ~2 K (water vapour, emissivity, 0.3 K of noise); the positive difference of
  thin cirrus needs a cold ice cloud. VIMI has no 1.38 um cirrus band. So no split-window test is applied: it
  would flag clear moist land long before this cloud. A daytime BT3.7 - BT11 test (MOD35's low-cloud test: water
  droplets reflect sunlight at 3.7 um) is the route VIMI's B7 would allow; the reader does not calibrate B7 and
  the testbed's mid-infrared is rough, so it is left for later.
* A cloud whose top is within ``warm_k`` of the clear reference *and* bright (a low stratus over cold ground in a
  winter inversion) is taken for a bright surface.

The product's ``CloudPercent`` acts as a scene-level hint: when it says 0, only colder pixels
(``cold_k + 6`` K) count as cloud, to avoid flagging cool wet fields on clear days.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import binary_dilation

__all__ = ["FRINGE_PX", "NDSI_SNOW", "SNOW_MAX_BT_K", "cloud_mask"]

#: NDSI above which a bright pixel is snow (SNOMAP, Hall et al. 2002).
NDSI_SNOW = 0.4
#: Warmest ``bt_10_80`` (K) of snow (the MODIS snow products' Collection 5 thermal screen).
SNOW_MAX_BT_K = 283.0
#: A bright warm pixel within this many pixels of a cold or bright-and-cold one is a cloud's fringe (partly
#: cloud, the ground showing through), not bright ground: the testbed's fringes are 2 px wide.
FRINGE_PX = 2


def cloud_mask(bt_10_80: NDArray, ndvi: NDArray, red: NDArray | None = None, *, ndsi: NDArray | None = None,
               cloud_percent: float | None = None, cold_k: float = 30.0, warm_k: float | None = 8.0,
               dilate_px: int = 1) -> NDArray[np.bool_]:
    """Cloud mask of one scene.

    Parameters
    ----------
    bt_10_80 : numpy.ndarray
        Brightness temperature at 10.8 um (K), NaN outside the scene.
    ndvi : numpy.ndarray
        NDVI (unitless), same shape.
    red : numpy.ndarray, optional
        Red TOA reflectance (unitless); without it the brightness test is skipped.
    ndsi : numpy.ndarray, optional
        NDSI of the TOA reflectances at 0.56 and 1.65 um (unitless); without it there is no snow test.
    cloud_percent : float, optional
        The product's cloud percentage (0-100), a scene-level hint.
    cold_k : float
        Coldness threshold below the clear reference (K).
    warm_k : float or None
        A bright pixel no more than this below the clear reference is a bright surface, not cloud (K); None
        turns the test off.
    dilate_px : int
        Edge dilation (pixels).

    Returns
    -------
    numpy.ndarray of bool
        True where cloud (or cloud edge); False elsewhere, including outside the scene.

    Raises
    ------
    ValueError
        If shapes differ.
    """
    bt = np.asarray(bt_10_80, dtype=np.float64)
    nd = np.asarray(ndvi, dtype=np.float64)
    if bt.shape != nd.shape or any(a is not None and np.shape(a) != bt.shape for a in (red, ndsi)):
        raise ValueError(f"cloud_mask: shapes differ: bt_10_80 {bt.shape}, ndvi {nd.shape}, "
                         f"red {None if red is None else np.shape(red)}, "
                         f"ndsi {None if ndsi is None else np.shape(ndsi)}")
    valid = np.isfinite(bt)
    if not valid.any():
        return np.zeros(bt.shape, dtype=bool)
    bright = np.zeros(bt.shape, dtype=bool)
    if red is not None:
        r = np.asarray(red, dtype=np.float64)
        bright = valid & np.isfinite(r) & (r > 0.25) & (np.nan_to_num(nd, nan=0.0) < 0.2)
    surface = np.zeros(bt.shape, dtype=bool)  # bright ground: snow, or as warm as the clear ground
    if ndsi is not None:
        snow_like = np.nan_to_num(np.asarray(ndsi, dtype=np.float64), nan=-1.0) > NDSI_SNOW
        surface = bright & snow_like & (bt < SNOW_MAX_BT_K)
    ref_pool = bt[valid & ~(bright & ~surface)]
    ref = float(np.percentile(ref_pool if ref_pool.size else bt[valid], 90))
    thresh = cold_k + (6.0 if cloud_percent is not None and cloud_percent <= 0 else 0.0)
    cold = valid & (bt < ref - thresh)
    if warm_k is not None:
        surface |= bright & (bt >= ref - warm_k)
    if surface.any():  # ...unless in a cloud's fringe, where the ground shows through part of a cloud
        cloudy = cold | (bright & ~surface)
        fringe = binary_dilation(cloudy, iterations=FRINGE_PX) if cloudy.any() else cloudy
        bright &= ~surface | fringe
    mask = cold | bright
    if dilate_px > 0 and mask.any():
        mask = binary_dilation(mask, iterations=dilate_px) & valid
    return mask
