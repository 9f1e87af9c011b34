"""The LST cube (DESIGN.md, "LST cube"): its variables, QC bit flags and stores.

One LST store per scene-cube store, written by :func:`sftl_dask.retrieve.retrieve` through the one
cube writer (:mod:`sftl_dask.io.cube`): dims ``(time, y, x)``, the scene cube's chunks, CRS in
``spatial_ref``, CF ``time``, and per time step ``scene_id``, ``source`` (the scene-cube store),
``checksum`` (the source product's sha256) and ``retrieve_ok`` (true once every chunk of the step
is written). Plain ``xr.open_zarr(store)`` reads it, CRS included.

``qc`` holds bit flags described the CF way (``flag_masks``, ``flag_values``, ``flag_meanings``):

===== ====================================== =================================================
bits  meaning                                set where
===== ====================================== =================================================
0     ``cloud``                              not produced: cloud or cloud edge in the scene cube
1     ``not_covered``                        not produced: no valid thermal observation (outside
                                             the swath, or a brightness temperature / view angle
                                             outside its physical range)
2     ``missing_ancillary``                  not produced: ERA5 WVC or GED emissivity missing
3     ``wvc_outside_pretraining_range``      produced; WVC outside the simulation's range
4     ``bt_outside_pretraining_range``       produced; a BT outside the simulation's range
5     ``vza_outside_pretraining_range``      produced; view zenith outside the simulation's range
6     ``emissivity_outside_pretraining_range`` produced; an emissivity outside the simulation's range
7     ``cloud_adjacent``                     produced; a cloud within :data:`CLOUD_ADJACENT_PX` px
8-9   ``uncertainty_le_1k`` ... ``gt_3k``    the class of ``lst_uncertainty``: <= 1, <= 2, <= 3,
                                             > 3 K (as MODIS MOD11 QC bits 6-7); 3 (> 3 K) where
                                             not produced
===== ====================================== =================================================
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sftl_dask.io.location import Location
from sftl_dask.io.stores import CubeRoot

__all__ = [
    "CLOUD_ADJACENT_PX",
    "LST_OK_VAR",
    "LST_VARIABLES",
    "NOT_PRODUCED",
    "QC_FILL",
    "QC_FLAGS",
    "RANGE_BITS",
    "UNCERTAINTY_CLASS_SHIFT",
    "lst_stores",
]

#: A produced pixel is "cloud adjacent" when a cloud pixel lies within this many pixels (Chebyshev
#: distance; 80 m at 40 m), the distance over which cloud edges and shadows bias thermal pixels.
CLOUD_ADJACENT_PX = 2

#: Flag name -> (mask, value): the flag is set where ``qc & mask == value``.
QC_FLAGS: dict[str, tuple[int, int]] = {
    "cloud": (1, 1),
    "not_covered": (2, 2),
    "missing_ancillary": (4, 4),
    "wvc_outside_pretraining_range": (8, 8),
    "bt_outside_pretraining_range": (16, 16),
    "vza_outside_pretraining_range": (32, 32),
    "emissivity_outside_pretraining_range": (64, 64),
    "cloud_adjacent": (128, 128),
    "uncertainty_le_1k": (768, 0),
    "uncertainty_le_2k": (768, 256),
    "uncertainty_le_3k": (768, 512),
    "uncertainty_gt_3k": (768, 768),
}
#: Bits meaning "not produced" (any of them set: ``lst`` is NaN).
NOT_PRODUCED = 1 | 2 | 4
#: The uncertainty class sits in bits 8-9: ``(qc >> 8) & 3``.
UNCERTAINTY_CLASS_SHIFT = 8
#: The ``qc`` of a pixel no observation covers (``not_covered``, uncertainty class 3): what retrieval writes there,
#: and the Zarr fill value of ``qc``, so that a chunk never written (no data: the chunk-coverage index,
#: :data:`sftl_dask.io.cube.COVERAGE_VAR`) reads as not covered. CF readers that apply ``_FillValue`` (plain
#: ``xr.open_zarr``) mask those pixels instead; :func:`sftl_dask.open_lst` keeps ``qc`` as the integer flags.
QC_FILL = QC_FLAGS["not_covered"][1] | (3 << UNCERTAINTY_CLASS_SHIFT)
#: Range-flag bit of each input group of a model's pre-training range.
RANGE_BITS = {"wvc": 8, "bt": 16, "vza": 32, "emis": 64}

#: Completion flag of an LST store's time slots.
LST_OK_VAR = "retrieve_ok"

#: The LST cube's raster variables: CF attributes and storage dtype.
LST_VARIABLES: dict[str, dict[str, Any]] = {
    "lst": {"units": "K", "standard_name": "surface_temperature", "units_metadata": "temperature: on_scale",
            "long_name": "land surface temperature",
            "ancillary_variables": "lst_uncertainty qc", "cell_methods": "area: mean where land",
            "valid_min": 150.0, "valid_max": 400.0, "dtype": "float32"},
    "lst_uncertainty": {"units": "K", "standard_name": "surface_temperature standard_error",
                        "units_metadata": "temperature: difference",
                        "long_name": "standard uncertainty of lst (1 sigma)", "dtype": "float32"},
    "qc": {"long_name": "LST quality control bit flags",
           "flag_masks": np.array([m for m, _ in QC_FLAGS.values()], dtype=np.uint16),
           "flag_values": np.array([v for _, v in QC_FLAGS.values()], dtype=np.uint16),
           "flag_meanings": " ".join(QC_FLAGS), "dtype": "uint16", "fill": np.uint16(QC_FILL)},
    "vza": {"units": "degree", "standard_name": "sensor_zenith_angle", "long_name": "view zenith angle",
            "dtype": "float32"},
}


def lst_stores(root: str | os.PathLike[str]) -> dict[str, Location]:
    """The LST stores of an output: the store itself, or ``<root>/<tile>.zarr`` by tile name.

    ``root`` may be an object-store URL (:mod:`sftl_dask.io.location`). Time-series copies (``sftl rechunk``;
    :data:`~sftl_dask.io.stores.TIMESERIES_LAYOUT`) that sit in a root are not tiles of it and are left out.
    """
    return CubeRoot.of(root, skip_copies=True).stores()
