"""The testbed world's LOWTRAN7 table: shipped as data, with provenance, and interpolated sensibly."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from sftl_dask.physics.profiles import ProfileClimate, generate_profiles
from sftl_dask.physics.rtm import ReducedBandModel
from sftl_dask.testbed.lowtran_world import TABLE_FILE, lowtran_world_table


@pytest.fixture(scope="module")
def table():
    return lowtran_world_table()


def test_table_ships_in_the_package_under_5_mb_with_its_provenance(table):
    path = resources.files("sftl_dask.data").joinpath(TABLE_FILE)
    size = len(path.read_bytes())
    assert size < 5e6
    assert "LOWTRAN7" in table.provenance["rt"] and table.provenance["tool"] == "tools/build_lowtran_table.py"
    assert "LOWTRAN7" in table.description
    assert set(table.provenance["grid"]) == {"elevation_km", "t_air_k", "wvc_request", "vza_deg"}


def test_table_spans_the_regions_and_is_physical(table):
    assert table.elevation_km[0] <= 0.38 and table.elevation_km[-1] >= 1.8  # Huailai 0.38 km - Heihe 1.74 km
    assert table.t_air_k[0] <= 250 and table.t_air_k[-1] >= 310
    assert np.all((table.transmittance > 0) & (table.transmittance <= 1))
    assert np.all(table.upwelling > 0) and np.all(table.downwelling > 0)
    # more slant path, less transmittance
    assert np.all(np.diff(table.transmittance, axis=3) < 1e-6)


def test_terms_at_a_node_are_the_node_and_fall_with_water_between_nodes(table):
    ie, it, iw = 2, 9, 4
    w = table.profile_wvc[ie, it, iw]
    tau, lup, ldn = table.terms(float(table.elevation_km[ie]), float(table.t_air_k[it]), [w], table.vza_deg)
    assert np.allclose(tau[:, 0, :], table.transmittance[ie, it, iw].T, atol=1e-6)
    assert np.allclose(ldn[:, 0], table.downwelling[ie, it, iw], atol=1e-6)
    tau, lup, ldn = table.terms(0.45, 287.3, [0.8, 1.6, 2.4], [0.0, 2.5])
    assert np.all(np.diff(tau[2:, :, 0], axis=1) < 0)  # window channels: wetter, more opaque
    assert np.all(np.diff(lup[2:, :, 0], axis=1) > 0) and np.all(np.diff(ldn[2:], axis=1) > 0)


def test_world_and_band_model_differ_like_two_rt_codes_not_like_two_atmospheres(table):
    """Same air temperature and water column: the two RT codes agree to a few hundredths in tau."""
    model = ReducedBandModel()
    for t_air, wvc, z in ((295.0, 2.5, 0.5), (285.0, 1.0, 1.6)):
        clim = ProfileClimate(t_surface_range=(t_air - 0.05, t_air + 0.05), wvc_range=(wvc * 0.99, wvc * 1.01),
                              elevation_range_km=(z, z + 1e-4), inversion_scale=0.3)
        p = generate_profiles(1, seed=3, climate=clim)[0]
        band = model.terms(p, [0.0])
        tau, lup, ldn = table.terms(z, p.surface_air_temperature_k, [p.total_column_water()], [0.0])
        assert np.max(np.abs(tau[:, 0, 0] - band.transmittance[0])) < 0.04
        assert np.max(np.abs(lup[:, 0, 0] / band.upwelling[0] - 1)) < 0.15
        assert np.max(np.abs(ldn[:, 0] / band.downwelling - 1)) < 0.15
