"""A simple per-pixel cloud test for VIMI scenes (thermal + visible), documented and conservative.

A pixel is cloud when any of these holds:

1. **Cold**: ``bt_10_80`` is more than ``cold_k`` (default 30 K) below the scene's clear-sky
   reference, the 90th percentile of ``bt_10_80`` over pixels that are not bright (clouds are
   cold; the warm tail of a scene is almost surely clear). The margin is wide because clear
   scenes themselves span ~25 K between sunlit desert and open water at midday.
2. **Bright and not vegetated**: red TOA reflectance above 0.25 with NDVI below 0.2 (clouds are
   bright and spectrally flat; bare soils in the 0.6 um band rarely exceed 0.25).
3. **Edge**: within ``dilate_px`` pixels of a pixel flagged by 1 or 2 (cloud edges and thin
   fringes are partly cloudy and colder than the surface).

The product's ``CloudPercent`` acts as a scene-level hint: when it says 0, only colder pixels
(``cold_k + 6`` K) count as cloud, to avoid flagging cool wet fields on clear days.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import binary_dilation

__all__ = ["cloud_mask"]


def cloud_mask(bt_10_80: NDArray, ndvi: NDArray, red: NDArray | None = None, *, cloud_percent: float | None = None,
               cold_k: float = 30.0, dilate_px: int = 1) -> NDArray[np.bool_]:
    """Cloud mask of one scene.

    Parameters
    ----------
    bt_10_80 : numpy.ndarray
        Brightness temperature at 10.8 um (K), NaN outside the scene.
    ndvi : numpy.ndarray
        NDVI (unitless), same shape.
    red : numpy.ndarray, optional
        Red TOA reflectance (unitless); without it the brightness test is skipped.
    cloud_percent : float, optional
        The product's cloud percentage (0-100), a scene-level hint.
    cold_k : float
        Coldness threshold below the clear reference (K).
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
    if bt.shape != nd.shape or (red is not None and np.shape(red) != bt.shape):
        raise ValueError(f"cloud_mask: shapes differ: bt_10_80 {bt.shape}, ndvi {nd.shape}, "
                         f"red {None if red is None else np.shape(red)}")
    valid = np.isfinite(bt)
    if not valid.any():
        return np.zeros(bt.shape, dtype=bool)
    bright = np.zeros(bt.shape, dtype=bool)
    if red is not None:
        r = np.asarray(red, dtype=np.float64)
        bright = valid & np.isfinite(r) & (r > 0.25) & (np.nan_to_num(nd, nan=0.0) < 0.2)
    ref_pool = bt[valid & ~bright]
    ref = float(np.percentile(ref_pool if ref_pool.size else bt[valid], 90))
    thresh = cold_k + (6.0 if cloud_percent is not None and cloud_percent <= 0 else 0.0)
    cold = valid & (bt < ref - thresh)
    mask = cold | bright
    if dilate_px > 0 and mask.any():
        mask = binary_dilation(mask, iterations=dilate_px) & valid
    return mask
