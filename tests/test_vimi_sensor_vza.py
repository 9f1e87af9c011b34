"""The reader's view zenith of a delivered product in sensor geometry (issue 28, item 4): per pixel from the RPC line
of sight (``VimiProduct.open()["vza"]``), checked against the testbed's own pushbroom model; and the product's RPCs
read once from its members (``VimiProduct.rpc``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sftl_dask.io.rpc import parse_rpb
from sftl_dask.io.vimi import VimiFormatError, VimiProduct, find_products
from sftl_dask.testbed.build import delivered_view, scene_schedule
from sftl_dask.testbed.delivery import SceneView, terrain_height
from sftl_dask.testbed.world import REGIONS, build_landscape

SIZE, SEED = 640, 0  # the session fixture delivered_testbed is built with these


def _view(region: str) -> tuple[SceneView, object]:
    """The testbed's sensor model of the region's first scene, placed as ``build_testbed`` places it, and the
    terrain height function (lon, lat -> m above WGS 84) it was rendered over."""
    lsc = build_landscape(REGIONS[region], SIZE, SEED)
    return delivered_view(scene_schedule(region, 1, SEED)[0], lsc), terrain_height(lsc)


def _products(tb: Path) -> list[tuple[Path, str]]:
    """(archive, region) of each delivered product, the region as ``truth/targets.csv`` names it."""
    targets = pd.read_csv(tb / "truth" / "targets.csv")
    regions = targets.groupby("scene_id")["region"].first().to_dict()
    return [(path, str(regions[VimiProduct(path).stem])) for path in find_products(tb / "archives")]


def test_reader_vza_is_the_line_of_sight(delivered_testbed: Path) -> None:
    """Every 16th line and sample of each image: the reader's vza against the pushbroom's own angle at the pixel's
    ground point on the terrain (heights iterated: localize, look up the terrain, localize again)."""
    worst = []
    for path, region in _products(delivered_testbed):
        view, height = _view(region)
        prod = VimiProduct(path)
        with prod.open(chunks=None) as ds:
            assert ds.attrs["geometry"] == "sensor"
            vza = ds["vza"].values
            assert vza.shape == (SIZE, SIZE) and np.isfinite(vza).all()
            assert "line of sight" in ds["vza"].attrs["convention"]
        line, sample = np.meshgrid(np.arange(0, SIZE, 16, dtype=float), np.arange(0, SIZE, 16, dtype=float),
                                   indexing="ij")
        h = np.zeros_like(line)
        for _ in range(4):
            lon, lat = view.localize(line, sample, h)
            h = height(lon, lat)
        truth = view.sensor.view_zenith(line + view.line0, sample + view.sample0, h)
        diff = np.abs(vza[::16, ::16] - truth)
        worst.append(float(diff.max()))
        # the angle varies across the swath (not one scene-centre value): a real per-pixel field
        assert float(np.ptp(vza)) > 0.5
    # measured (seed 0): max 0.00029 deg (heihe), 0.00013 (huailai); mean 0.00014 / 0.00006; the limit is 0.01 deg
    assert len(worst) == 2 and max(worst) <= 0.01, worst


def test_rpc_read_once_from_the_members(delivered_testbed: Path) -> None:
    """``VimiProduct.rpc`` parses the sidecar the archive scan already holds, once, and returns the same model
    whichever name of the raster it is given."""
    path = find_products(delivered_testbed / "archives")[0]
    prod = VimiProduct(path)
    stem = prod.stem
    rpc = prod.rpc()
    assert prod.rpc("B7_B12") is rpc  # kept per raster
    assert prod.rpc(f"{stem}_B7_B12.rpb") is rpc
    assert prod.rpc(prod.rpc_members["B7_B12"]) is rpc
    text = prod._read_member("rpc:B7_B12").decode()  # the independent parse of the same bytes
    assert parse_rpb(text).line_num == pytest.approx(rpc.line_num)
    fine = prod.rpc("B1_B6")
    # the 20 m raster's model: twice the lines and samples of the 40 m one at the same ground point
    lon, lat = rpc.localize(np.array([100.0]), np.array([200.0]), rpc.height_off)
    fl, fs = fine.project(lon, lat, np.array([rpc.height_off]))
    assert float(fl[0]) == pytest.approx(2 * 100.0 + 0.5, abs=0.05)
    assert float(fs[0]) == pytest.approx(2 * 200.0 + 0.5, abs=0.05)
    with pytest.raises(VimiFormatError, match=r"not a raster or RPC member of the product"):
        prod.rpc("nothing.rpb")
