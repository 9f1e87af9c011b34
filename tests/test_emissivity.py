"""Emissivity: the embedded library, SRF band averaging, ASTER->VIMI, VCM, broadband, the library-file reader."""

from __future__ import annotations

import ast
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sftl_dask.io import spectral_library
from sftl_dask.io.spectral_library import read_spectral_library_dir, read_spectrum
from sftl_dask.physics.channels import Channel, thermal_channels
from sftl_dask.physics.emissivity import (
    CATEGORIES,
    Spectrum,
    aster_tir_channels,
    aster_to_vimi,
    band_emissivity,
    broadband_emissivity,
    default_library,
    fit_aster_to_vimi,
    vegetation_cover_method,
)

ROOT = Path(__file__).resolve().parents[1]
LAND = {"soil", "rock", "sand", "vegetation", "man_made"}


def _by_name() -> dict[str, Spectrum]:
    return {s.name: s for s in default_library()}


# ---------------------------------------------------------------- library contents


def test_library_has_at_least_81_uniquely_named_spectra_in_all_seven_categories():
    lib = default_library()
    assert len(lib) >= 81
    assert len({s.name for s in lib}) == len(lib)
    counts = Counter(s.category for s in lib)
    assert set(counts) == set(CATEGORIES)
    assert all(counts[c] >= 2 for c in CATEGORIES)
    assert default_library() is lib  # cached


def test_every_spectrum_covers_7p5_to_13p5_um_and_names_its_source():
    for s in default_library():
        assert s.wavelength_um[0] <= 7.5 and s.wavelength_um[-1] >= 13.5, s.name
        assert len(s.source) > 40, s.name
        # Either a citation (a year) or the exact parametric rule with its parameters.
        if s.name.startswith("param_"):
            assert s.source.startswith("parametric") and "eps" in s.source and "=" in s.source, s.name
        else:
            assert any(str(y) in s.source for y in range(1975, 2026)), s.name


def test_library_values_are_physically_plausible():
    lib = default_library()
    bands = band_emissivity(lib)
    for s, b in zip(lib, bands, strict=True):
        sel = (s.wavelength_um >= 8.0) & (s.wavelength_um <= 12.5)
        eps = s.emissivity[sel]
        if s.category in LAND:
            # Land: no metals; the lowest is a measured slate (0.688 at 9.0 um), the highest Du's forest 0.996.
            assert 0.68 <= eps.min() and eps.max() <= 0.996, s.name
            assert np.all((b >= 0.70) & (b <= 0.996)), s.name
        else:
            assert 0.95 <= eps.min() and eps.max() <= 1.0, s.name
    water = [b for s, b in zip(lib, bands, strict=True) if s.category == "water"]
    assert np.all((np.array(water) >= 0.975) & (np.array(water) <= 0.999))


def test_vegetation_band_emissivities_exceed_0p95():
    lib = default_library()
    veg = [s for s in lib if s.category == "vegetation"]
    assert len(veg) >= 10
    assert band_emissivity(veg).min() > 0.95


def test_quartz_sand_is_darker_at_8p2_than_at_10p8_um():
    lib = _by_name()
    for name in ("param_sand_quartz_coarse", "param_sand_quartz_fine", "crtm_sand"):
        e82, _, e108, _ = band_emissivity(lib[name])[0]
        assert e82 < e108 - 0.03, name
    # And the reststrahlen doublet is deep: pure coarse quartz sand below 0.8 near 8.6 and 9.2 um.
    s = lib["param_sand_quartz_coarse"]
    assert s.at(8.6) < 0.8 and s.at(9.2) < 0.8 and s.at(11.0) > 0.95


def test_quartz_graded_soils_darken_with_quartz_and_brighten_when_wet():
    lib = _by_name()
    e863 = [band_emissivity(lib[f"param_soil_quartz{q}_dry"])[0, 1] for q in ("10", "30", "50", "70", "90")]
    assert np.all(np.diff(e863) < 0)
    for q in ("10", "30", "50", "70", "90"):
        dry = band_emissivity(lib[f"param_soil_quartz{q}_dry"])[0]
        wet = band_emissivity(lib[f"param_soil_quartz{q}_wet"])[0]
        assert np.all(wet > dry)


def test_silicate_rock_minimum_moves_to_longer_wavelength_from_felsic_to_ultramafic():
    lib = _by_name()
    minima = [
        lib[f"param_rock_{r}"].wavelength_um[np.argmin(lib[f"param_rock_{r}"].emissivity)]
        for r in ("felsic_granite", "andesite", "basalt", "ultramafic_peridotite")
    ]
    assert np.all(np.diff(minima) > 0)


def test_packaged_table_is_what_the_generator_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("_build_emis", ROOT / "tools" / "build_emissivity_library.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "lib.csv"
    mod.write(out)
    packaged = ROOT / "sftl_dask" / "data" / "emissivity_library.csv"
    assert out.read_text(encoding="utf-8") == packaged.read_text(encoding="utf-8")


# ---------------------------------------------------------------- Spectrum validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"category": "metal"}, "category"),
        ({"wavelength_um": [8.0, 8.0, 9.0]}, "strictly increasing"),
        ({"emissivity": [0.9, 1.2, 0.9]}, "outside"),
        ({"emissivity": [0.9, np.nan, 0.9]}, "non-finite"),
        ({"emissivity": [0.9, 0.9]}, "equal length"),
        ({"source": " "}, "source"),
    ],
)
def test_spectrum_rejects_bad_input_naming_the_spectrum(kwargs, match):
    args = {"name": "bad_one", "category": "soil", "wavelength_um": [8.0, 9.0, 10.0],
            "emissivity": [0.9, 0.9, 0.9], "source": "test"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as info:
        Spectrum(**args)
    assert "bad_one" in str(info.value)


def test_spectrum_arrays_are_read_only_and_at_refuses_extrapolation():
    s = Spectrum("flat", "water", [8.0, 12.0], [0.99, 0.99], "test")
    with pytest.raises(ValueError):
        s.emissivity[0] = 0.5
    assert s.at([8.0, 10.0]) == pytest.approx([0.99, 0.99])
    with pytest.raises(ValueError, match="flat"):
        s.at(13.0)


# ---------------------------------------------------------------- band averaging


def test_band_average_of_a_constant_spectrum_is_the_constant():
    s = Spectrum("const", "soil", [7.0, 14.0], [0.937, 0.937], "test")
    out = band_emissivity([s, s], thermal_channels() + aster_tir_channels())
    assert out.shape == (2, 9)
    np.testing.assert_allclose(out, 0.937, atol=1e-12)


def test_band_average_of_a_step_spectrum_is_the_response_weighted_mean():
    # Step 0.90 -> 1.00 at 10.8 um, the middle of bt_10_80 (10.3-11.3 um): half of each.
    s = Spectrum("step", "soil", [7.0, 10.8, 10.8001, 14.0], [0.90, 0.90, 1.00, 1.00], "test")
    e = band_emissivity(s)[0]
    assert e[2] == pytest.approx(0.95, abs=1e-3)
    assert e[0] == pytest.approx(0.90) and e[1] == pytest.approx(0.90) and e[3] == pytest.approx(1.0)
    # A channel 10.0-11.0 um: 0.8 um at 0.90 and 0.2 um at 1.00 -> 0.92.
    ch = Channel.boxcar("test", "T", 10.5, 10.0, 11.0)
    assert band_emissivity(s, [ch])[0, 0] == pytest.approx(0.92, abs=1e-3)


def test_band_emissivity_refuses_a_spectrum_that_misses_a_channel():
    s = Spectrum("short", "soil", [10.0, 12.0], [0.95, 0.95], "test")
    with pytest.raises(ValueError, match=r"short.*bt_08_20"):
        band_emissivity(s)


def test_aster_channels_are_the_five_tir_bands_with_nominal_edges():
    chans = aster_tir_channels()
    assert [c.band for c in chans] == ["B10", "B11", "B12", "B13", "B14"]
    edges = [(c.lower_um, c.upper_um) for c in chans]
    assert edges == [(8.125, 8.475), (8.475, 8.825), (8.925, 9.275), (10.25, 10.95), (10.95, 11.65)]


# ---------------------------------------------------------------- ASTER -> VIMI


def test_aster_to_vimi_regression_fits_the_library_within_0p01_rmse():
    coeffs = fit_aster_to_vimi()
    coeffs = json.loads(json.dumps(coeffs))  # JSON-serialisable, and usable after a round trip
    assert list(coeffs["channels"]) == ["emis_08_20", "emis_08_63", "emis_10_80", "emis_11_95"]
    assert coeffs["n_spectra"] == len(default_library())
    for c in coeffs["channels"].values():
        assert c["rmse"] < 0.01
        assert len(c["coefficients"]) == 5
    lib = default_library()
    aster = band_emissivity(lib, aster_tir_channels())
    pred = aster_to_vimi(aster, coeffs)
    truth = band_emissivity(lib)
    rmse = np.sqrt(np.mean((pred - truth) ** 2, axis=0))
    assert np.all(rmse < 0.01)
    # Vectorised over any leading shape.
    assert aster_to_vimi(aster.reshape(7, -1, 5), coeffs).shape == (7, len(lib) // 7, 4)


def test_aster_to_vimi_rejects_bad_input_naming_it():
    coeffs = fit_aster_to_vimi()
    with pytest.raises(ValueError, match="aster_emis"):
        aster_to_vimi(np.full((3, 4), 0.95), coeffs)
    with pytest.raises(ValueError, match="aster_emis"):
        aster_to_vimi([0.95, np.nan, 0.95, 0.95, 0.95], coeffs)
    with pytest.raises(ValueError, match="aster_emis"):
        aster_to_vimi([0.95, 1.5, 0.95, 0.95, 0.95], coeffs)
    with pytest.raises(ValueError, match="coeffs"):
        aster_to_vimi([0.95] * 5, {"channels": {"x": {"intercept": 0.0}}})
    out = aster_to_vimi([[0.95] * 5, [np.nan] * 5], coeffs, allow_nan=True)
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))


# ---------------------------------------------------------------- Vegetation Cover Method


def test_vcm_vegetation_fraction_end_points_and_clipping():
    # GED pixel bare (NDVI_GED = 0.15 -> fv_GED = 0): eps_bare = eps_GED.
    eps = vegetation_cover_method(0.93, 0.15, [0.15, 1.0, -0.5, 0.575])
    # NDVI 0.15 -> fv 0 -> 0.93; NDVI 1 -> fv 1 -> 0.985; NDVI < 0.15 clipped to fv 0;
    # NDVI 0.575 -> fv = 1 - 0.425/0.85 = 0.5 -> 0.5*0.985 + 0.5*0.93 = 0.9575.
    np.testing.assert_allclose(eps, [0.93, 0.985, 0.93, 0.9575], atol=1e-12)


def test_vcm_matches_a_hand_computed_pixel():
    # fv_GED = 1 - (1 - 0.49)/0.85 = 0.4; eps_bare = (0.95 - 0.985*0.4)/0.6 = 0.926667
    # fv = 1 - (1 - 0.66)/0.85 = 0.6; eps = 0.985*0.6 + 0.926667*0.4 = 0.961667
    eps = vegetation_cover_method(0.95, 0.49, 0.66)
    assert float(eps) == pytest.approx(0.985 * 0.6 + (0.95 - 0.985 * 0.4) / 0.6 * 0.4, abs=1e-12)
    assert float(eps) == pytest.approx(0.961667, abs=1e-6)


def test_vcm_water_and_snow_masks_and_trailing_channel_axis():
    emis = np.array([[0.95, 0.94, 0.96, 0.97], [0.93, 0.92, 0.95, 0.96], [0.90, 0.91, 0.92, 0.93]])
    ndvi_ged = np.array([0.15, 0.15, 0.15])
    ndvi = np.array([1.0, 0.15, 0.15])
    water = np.array([False, True, True])
    snow = np.array([False, False, True])
    out = vegetation_cover_method(emis, ndvi_ged, ndvi, water=water, snow=snow)
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out[0], 0.985)
    np.testing.assert_allclose(out[1], 0.99)  # water
    np.testing.assert_allclose(out[2], 0.985)  # snow wins over water (frozen water)
    # No masks: the bare GED pixel at NDVI_bare keeps its channel emissivities.
    np.testing.assert_allclose(vegetation_cover_method(emis, ndvi_ged, [0.15] * 3), emis)


def test_vcm_falls_back_to_ged_where_ged_is_fully_vegetated():
    out = vegetation_cover_method([0.97, 0.97], [1.0, 0.999], [0.2, 0.2])
    np.testing.assert_allclose(out, [0.97, 0.97])


def test_vcm_rejects_nan_and_out_of_range_naming_the_variable():
    with pytest.raises(ValueError, match="ndvi"):
        vegetation_cover_method(0.95, 0.3, np.nan)
    with pytest.raises(ValueError, match="ndvi_ged"):
        vegetation_cover_method(0.95, 1.5, 0.3)
    with pytest.raises(ValueError, match="emis_ged"):
        vegetation_cover_method(1.2, 0.3, 0.3)
    with pytest.raises(ValueError, match="water"):
        vegetation_cover_method(0.95, 0.3, 0.3, water=[0.5])
    out = vegetation_cover_method([0.95, 0.95], [0.3, 0.3], [np.nan, 0.3], allow_nan=True)
    assert np.isnan(out[0]) and np.isfinite(out[1])


# ---------------------------------------------------------------- broadband


def test_broadband_emissivity_cheng_2013_on_a_hand_computed_case():
    e = [0.95, 0.94, 0.93, 0.97, 0.98]
    expected = 0.197 + 0.025 * 0.95 + 0.057 * 0.94 + 0.237 * 0.93 + 0.333 * 0.97 + 0.146 * 0.98
    assert float(broadband_emissivity(e)) == pytest.approx(expected, abs=1e-12)
    assert float(broadband_emissivity(e)) == pytest.approx(0.96083, abs=1e-9)
    assert broadband_emissivity(np.ones((2, 3, 5))) == pytest.approx(np.full((2, 3), 0.995))
    with pytest.raises(ValueError, match="aster_emis"):
        broadband_emissivity([0.9, 0.9, 0.9, 0.9])
    with pytest.raises(ValueError, match="aster_emis"):
        broadband_emissivity([0.9, 0.9, np.nan, 0.9, 0.9])


# ---------------------------------------------------------------- spectral-library reader

_HEADER = """Name: {name}
Type: {type}
Class: Silicate
Subclass: none
Particle Size: 125-500 um
Sample No.: TEST-001
Owner: test
Wavelength Range: TIR
Origin: written by the test
Description: A tiny file in the ECOSTRESS / ASTER spectral-library format,
continued on a second line.
Measurement: Directional (10 Degree) Hemispherical Reflectance
First Column: X
Second Column: Y
X Units: {x_units}
Y Units: {y_units}
First X Value: 14.0
Last X Value: 7.0
Number of X Values: 4
Additional Information: none
"""


def _write(path: Path, rows: str, *, name="Test quartz sand", type_="Soil",
           x_units="Wavelength (micrometers)", y_units="Reflectance (percentage)", drop: str | None = None) -> Path:
    header = _HEADER.format(name=name, type=type_, x_units=x_units, y_units=y_units)
    if drop is not None:
        header = "\n".join(line for line in header.splitlines() if not line.startswith(drop)) + "\n"
    path.write_text(header + "\n" + rows, encoding="utf-8")
    return path


_ROWS = "14.0\t3.0\n11.0\t2.0\n9.0\t20.0\n7.0\t1.0\n"


def test_reader_round_trip_converts_percentage_reflectance_and_sorts(tmp_path):
    s = read_spectrum(_write(tmp_path / "sand.spectrum.txt", _ROWS))
    assert s.name == "Test quartz sand" and s.category == "soil"
    np.testing.assert_allclose(s.wavelength_um, [7.0, 9.0, 11.0, 14.0])
    np.testing.assert_allclose(s.emissivity, [0.99, 0.80, 0.98, 0.97])
    assert "sand.spectrum.txt" in s.source and "TEST-001" in s.source
    # A read spectrum goes straight into band averaging.
    assert band_emissivity(s).shape == (1, 4)


def test_reader_accepts_wavenumber_fraction_and_emissivity_units(tmp_path):
    rows = "1000.0 0.05\n800.0 0.04\n1250.0 0.10\n"
    s = read_spectrum(_write(tmp_path / "a.spectrum.txt", rows, x_units="Wavenumber (cm-1)",
                             y_units="Reflectance (fraction)", type_="Rock"))
    np.testing.assert_allclose(s.wavelength_um, [8.0, 10.0, 12.5])
    np.testing.assert_allclose(s.emissivity, [0.90, 0.95, 0.96])
    assert s.category == "rock"
    s2 = read_spectrum(_write(tmp_path / "b.spectrum.txt", "8.0 0.97\n12.0 0.98\n", y_units="Emissivity",
                              type_="Vegetation"))
    np.testing.assert_allclose(s2.emissivity, [0.97, 0.98])
    assert s2.category == "vegetation"


@pytest.mark.parametrize(
    ("kwargs", "rows", "key"),
    [
        ({"drop": "Name:"}, _ROWS, "Name"),
        ({"drop": "X Units:"}, _ROWS, "X Units"),
        ({"drop": "Y Units:"}, _ROWS, "Y Units"),
        ({"x_units": "Channel number"}, _ROWS, "X Units"),
        ({"y_units": "Radiance (W m-2 sr-1 um-1)"}, _ROWS, "Y Units"),
        ({}, "", "no numeric data"),
        ({}, "14.0\t3.0\n11.0\tabc\n", "line"),
        ({"type_": "Meteorite"}, _ROWS, "Type"),
    ],
)
def test_reader_broken_files_raise_naming_file_and_key(tmp_path, kwargs, rows, key):
    path = _write(tmp_path / "broken.spectrum.txt", rows, **kwargs)
    if kwargs.get("type_") == "Meteorite":
        path.write_text(path.read_text().replace("Test quartz sand", "Test chondrite").replace("Silicate", "Stony"))
    with pytest.raises(ValueError) as info:
        read_spectrum(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert key in msg, msg


def test_reader_category_override_and_directory_listing(tmp_path):
    _write(tmp_path / "b.spectrum.txt", _ROWS, name="B")
    _write(tmp_path / "a.spectrum.txt", _ROWS, name="A", type_="Manmade")
    (tmp_path / "notes.txt").write_text("not a spectrum")
    spectra = read_spectral_library_dir(tmp_path)
    assert [s.name for s in spectra] == ["A", "B"]
    assert [s.category for s in spectra] == ["man_made", "soil"]
    assert {s.category for s in read_spectral_library_dir(tmp_path, category="sand")} == {"sand"}
    with pytest.raises(ValueError, match="no files match"):
        read_spectral_library_dir(tmp_path, pattern="*.nothing")
    with pytest.raises(ValueError, match="not a directory"):
        read_spectral_library_dir(tmp_path / "missing")


def test_reader_module_never_imports_the_testbed():
    tree = ast.parse(Path(spectral_library.__file__).read_text())
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not any("testbed" in (m or "") for m in modules)
