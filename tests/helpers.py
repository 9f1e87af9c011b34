"""Shared test data for the model tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def synthetic_lst(n: int, seed: int = 0, bias_k: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix in FEATURES order with realistic ranges, and a split-window-like LST (K)."""
    rng = np.random.default_rng(seed)
    bt_11 = rng.uniform(270.0, 320.0, n)
    wvc = rng.uniform(0.2, 5.0, n)
    dbt = 0.3 + 0.5 * wvc + rng.normal(0.0, 0.4, n)
    bt_10 = bt_11 + dbt
    emis_mean, emis_diff = rng.uniform(0.94, 0.99, n), rng.uniform(-0.02, 0.02, n)
    x = np.column_stack([
        bt_10 - 2.0, bt_10 - 1.0, bt_10, bt_11, dbt, wvc, wvc * dbt, rng.uniform(0.85, 0.97, n),
        rng.uniform(0.86, 0.98, n), emis_mean, emis_diff, 1.0 / np.cos(rng.uniform(0, 1, n)),
    ]).astype(np.float32)
    lst = bt_10 + 1.6 * dbt + 0.25 * wvc * dbt + 45.0 * (1.0 - emis_mean) - 60.0 * emis_diff + bias_k
    return x, lst.astype(np.float32)


def small_simulation(path: Path, n_profiles: int, seed: int) -> Path:
    """Write a simulation table at ``path``: 20 spectra x 3 angles x 2 draws a profile, a part file per 20 profiles."""
    from sftl_dask.simulate import SimulationConfig, write_simulation

    write_simulation(path, SimulationConfig(n_profiles=n_profiles, n_spectra=20, batch_profiles=20, seed=seed))
    return path


def simulation_xy(path: Path, held_profiles: Iterable[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole table read in this process: features, LST (K, float32) and the mask of held-out profiles' rows."""
    from sftl_dask.features import feature_matrix
    from sftl_dask.simulate import TRAINING_COLUMNS, read_simulation_columns

    tab = read_simulation_columns(path, TRAINING_COLUMNS)
    return feature_matrix(tab), tab["lst"].astype(np.float32), np.isin(tab["profile_id"], list(held_profiles))


def synthetic_scene(height: int, width: int, seed: int, *, covered_from: int = 0, cloud_fraction: float = 0.15
                    ) -> dict[str, np.ndarray]:
    """One scene's cube variables with realistic, spatially smooth values.

    Columns left of ``covered_from`` are outside the swath (NaN); cloud is a set of square blobs covering
    about ``cloud_fraction``; a 4 x 4 patch at rows 2-5, columns 8-11 misses its ancillary data.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    smooth = np.sin(yy / 17.0 + seed) * np.cos(xx / 23.0 - seed)
    wvc = 0.3 + 1.2 * (1.0 + smooth) + rng.uniform(0, 0.05, (height, width))
    emis_11 = 0.975 + 0.01 * smooth
    emis_10 = emis_11 - 0.004 + 0.002 * rng.standard_normal((height, width))
    lst = 300.0 + 8.0 * np.cos(yy / 31.0) + rng.normal(0.0, 0.5, (height, width))
    dbt = 0.3 + 0.5 * wvc
    bt_11 = lst - 2.0 - 1.2 * wvc
    bt_10 = bt_11 + dbt
    out = {
        "bt_08_20": bt_10 - 2.0, "bt_08_63": bt_10 - 1.0, "bt_10_80": bt_10, "bt_11_95": bt_11,
        "vza": 2.0 + 10.0 * xx / width, "wvc": wvc, "emis_08_20": emis_11 - 0.04, "emis_08_63": emis_11 - 0.03,
        "emis_10_80": emis_10, "emis_11_95": emis_11, "ndvi": 0.4 + 0.2 * smooth,
    }
    cloud = np.zeros((height, width), dtype=np.uint8)
    n_blobs = max(1, int(cloud_fraction * height * width / 64))
    for _ in range(n_blobs if cloud_fraction > 0 else 0):
        r, c = rng.integers(0, height - 8), rng.integers(0, width - 8)
        cloud[r:r + 8, c:c + 8] = 1
    missing = np.zeros((height, width), dtype=np.uint8)
    missing[2:6, 8:12] = 1
    for k, v in out.items():
        v = v.astype(np.float32)
        v[:, :covered_from] = np.nan
        out[k] = v
    out["cloud"] = np.where(np.isfinite(out["bt_10_80"]), cloud, 0).astype(np.uint8)
    out["ancillary_missing"] = missing
    return out


def synthetic_cube(store: Path, n_times: int = 2, height: int = 150, width: int = 140, *, seed: int = 0,
                   first: int = 0, chunk: int = 64, **scene_kw: object) -> Path:
    """A scene-cube store of ``n_times`` synthetic scenes (chunks of ``chunk`` px), or more appended to it."""
    import sftl_dask.io.cube as cube

    grid = cube.GeoBox("EPSG:32650", (40.0, 0.0, 400_000.0, 0.0, -40.0, 4_500_000.0), width, height)
    scenes = [{"scene_id": f"GF5B_VIMI_SYN_{i:03d}", "source": f"/archive/syn_{i:03d}.tar",
               "time": np.datetime64("2022-05-01T03:30") + np.timedelta64(16 * i, "D")}
              for i in range(first, first + n_times)]
    slots = cube.append_slots(store, grid, scenes, chunk=(chunk, chunk))
    for i, slot in zip(range(first, first + n_times), slots, strict=True):
        cube.write_scene(store, slot, synthetic_scene(height, width, seed + i, **scene_kw), f"{i:064x}")
    return store


def retrieval_artifact(out: Path, name: str, seed: int = 0) -> Path:
    """A small trained model of kind ``name`` (dnn, trf, cnn, rf, lgbm) exported with an error model and range,
    or split-window coefficients (``sw``) fitted on a small simulation."""
    from sftl_dask.features import input_range
    from sftl_dask.models import build_model
    from sftl_dask.models.artifact import export_artifact
    from sftl_dask.models.error_model import fit_error_model

    if name == "sw":
        import json

        from sftl_dask.simulate import (
            SW_COLUMNS,
            fit_split_window_on_simulation,
            read_simulation_columns,
            split_window_document,
        )

        sim = small_simulation(out.parent / f"sim_{seed}.parquet", 24, seed)
        table = read_simulation_columns(sim, SW_COLUMNS)
        out.write_text(json.dumps(split_window_document(fit_split_window_on_simulation(table, seed=seed), table)))
        return out
    x, y = synthetic_lst(3000, seed=seed)
    if name in ("rf", "lgbm"):
        model = build_model(name, x.shape[1], n_estimators=20)
        model.fit(x, y)
    else:
        import torch

        from sftl_dask.models.trainer import fit_torch

        torch.manual_seed(seed)
        model = build_model(name, x.shape[1], x.mean(axis=0), x.std(axis=0) + 1e-6,
                            target_mean=float(y.mean()), target_std=float(y.std()))
        fit_torch(model, x, y, epochs=2, batch_size=256, lr=3e-3, seed=seed)
    from sftl_dask.features import FEATURES

    f = {k: x[:, FEATURES.index(k)] for k in ("wvc", "emis_mean", "sec_vza")}
    resid = np.asarray(model.predict(x) if hasattr(model, "n_trees") else _torch_predict(model, x)) - y
    card = {"model": name, "strategy": "full", "direction": "SiHuHe",
            "uncertainty": fit_error_model(f, resid, f, resid + 1.0, obs_source="synthetic"),
            "pretraining_range": input_range({"bt_08_20": x[:, 0], "bt_08_63": x[:, 1], "bt_10_80": x[:, 2],
                                              "bt_11_95": x[:, 3], "wvc": x[:, 5], "vza": [0.0, 30.0],
                                              "emis_08_20": [0.6, 1.0], "emis_08_63": [0.6, 1.0],
                                              "emis_10_80": [0.6, 1.0], "emis_11_95": [0.6, 1.0]})}
    return export_artifact(model, out, card)


def _torch_predict(model: object, x: np.ndarray) -> np.ndarray:
    from sftl_dask.models.trainer import predict_torch

    return predict_torch(model, x)


def synthetic_lst_cube(store: Path, n_times: int = 24, height: int = 40, width: int = 36, *, chunk: int = 16,
                       seed: int = 0, start: str = "2021-01-05T03:30", step_days: int = 16,
                       incomplete_last: bool = False, systematic_k: float | None = 1.0) -> Path:
    """An LST store with the retrieval's schema and known values, written with the project's cube writer.

    ``lst = 290 + 12 sin(2 pi doy / 365) + 0.1 row - 0.05 col + noise`` (K); ``lst_uncertainty`` 1.5-2.5 K;
    a cloud blob per step (``qc`` bit 0, ``lst`` NaN, class 3) ringed by ``cloud_adjacent`` pixels; WVC
    range flags on a 3-column stripe at every third step. ``incomplete_last`` leaves the last slot
    unflagged (an interrupted retrieval).
    """
    import zarr

    import sftl_dask.io.cube as cube
    from sftl_dask.io.lst import LST_OK_VAR, LST_VARIABLES, QC_FLAGS

    rng = np.random.default_rng(seed)
    grid = cube.GeoBox("EPSG:32650", (40.0, 0.0, 400_000.0, 0.0, -40.0, 4_500_000.0), width, height)
    times = np.datetime64(start) + np.arange(n_times) * np.timedelta64(step_days, "D")
    scenes = [{"scene_id": f"GF5B_VIMI_LST_{i:03d}", "source": "/cubes/syn.zarr", "time": t}
              for i, t in enumerate(times)]
    attrs = {"sftl_product": "lst", "Conventions": "CF-1.11"}
    if systematic_k is not None:
        attrs["uncertainty_systematic_k"] = f"{systematic_k:.4f}"
    slots = cube.append_slots(store, grid, scenes, attrs, variables=LST_VARIABLES, ok_var=LST_OK_VAR,
                              chunk=(chunk, chunk))
    group = zarr.open_group(str(store), mode="r+")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    doy = (times - times.astype("datetime64[Y]")).astype("timedelta64[D]").astype(np.float64) + 1
    adj_bit, cloud_bit = QC_FLAGS["cloud_adjacent"][0], QC_FLAGS["cloud"][0]
    for i, slot in enumerate(slots):
        lst = 290.0 + 12.0 * np.sin(2 * np.pi * doy[i] / 365.0) + 0.1 * yy - 0.05 * xx
        lst += rng.normal(0.0, 0.3, lst.shape)
        unc = 1.5 + (xx / width) + 0.0 * yy
        qc = np.zeros((height, width), np.uint16)
        cy, cx = rng.integers(4, height - 10), rng.integers(4, width - 10)
        cloud = np.zeros((height, width), bool)
        cloud[cy:cy + 6, cx:cx + 6] = True
        ring = np.zeros_like(cloud)
        ring[max(cy - 2, 0):cy + 8, max(cx - 2, 0):cx + 8] = True
        ring &= ~cloud
        qc[cloud] |= cloud_bit
        qc[ring] |= adj_bit
        if i % 3 == 0:
            qc[:, 30:33] |= QC_FLAGS["wvc_outside_pretraining_range"][0]
        cls = np.select([unc <= 1, unc <= 2, unc <= 3], [0, 1, 2], 3).astype(np.uint16)
        cls[cloud] = 3
        qc |= cls << 8
        lst[cloud] = np.nan
        unc[cloud] = np.nan
        group["lst"][slot] = lst.astype(np.float32)
        group["lst_uncertainty"][slot] = unc.astype(np.float32)
        group["qc"][slot] = qc
        group["vza"][slot] = np.full((height, width), 12.0, np.float32)
        if not (incomplete_last and i == n_times - 1):
            cube.mark_slot(store, slot, LST_OK_VAR, checksum=f"{i:064x}", group=group)
    return store


def lst_store_from_arrays(store: Path, times: np.ndarray, lst: np.ndarray, lst_uncertainty: np.ndarray,
                          qc: np.ndarray, *, complete: np.ndarray | None = None, chunk: int = 8,
                          origin: tuple[float, float] = (400_000.0, 4_500_000.0)) -> Path:
    """An LST store (the retrieval's schema, the project's cube writer) holding exactly the given ``(time, y, x)``
    arrays (K, K, bit flags) on a 40 m grid of EPSG:32650 whose upper-left corner is ``origin`` (m); slots where
    ``complete`` is false stay unflagged (``retrieve_ok`` false, an interrupted retrieval)."""
    import zarr

    import sftl_dask.io.cube as cube
    from sftl_dask.io.lst import LST_OK_VAR, LST_VARIABLES

    _, height, width = lst.shape
    grid = cube.GeoBox("EPSG:32650", (40.0, 0.0, origin[0], 0.0, -40.0, origin[1]), width, height)
    scenes = [{"scene_id": f"GF5B_VIMI_VAL_{i:03d}", "source": "/cubes/val.zarr", "time": t}
              for i, t in enumerate(np.asarray(times, dtype="datetime64[ns]"))]
    slots = cube.append_slots(store, grid, scenes, {"sftl_product": "lst", "model_kind": "crafted"},
                              variables=LST_VARIABLES, ok_var=LST_OK_VAR, chunk=(chunk, chunk))
    group = zarr.open_group(str(store), mode="r+")
    for i, slot in enumerate(slots):
        group["lst"][slot] = lst[i].astype(np.float32)
        group["lst_uncertainty"][slot] = lst_uncertainty[i].astype(np.float32)
        group["qc"][slot] = qc[i].astype(np.uint16)
        group["vza"][slot] = np.full((height, width), 10.0, np.float32)
        if complete is None or complete[i]:
            cube.mark_slot(store, slot, LST_OK_VAR, checksum=f"{i:064x}", group=group)
    return store


def pixel_lonlat(row: int, col: int, origin: tuple[float, float] = (400_000.0, 4_500_000.0)) -> tuple[float, float]:
    """Longitude and latitude (deg) of the centre of pixel (row, col) of :func:`lst_store_from_arrays`' grid."""
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(origin[0] + (col + 0.5) * 40.0, origin[1] - (row + 0.5) * 40.0)
    return float(lon), float(lat)


def write_station_csv(path: Path, site_id: str, lon: float, lat: float, overpasses: list[tuple[str, float, float]],
                      *, every_min: int = 5, half_width_min: int = 20) -> Path:
    """A station radiometer file (UTC clock, black body: ``ULR = sigma T^4``) with records every ``every_min``
    min within ``half_width_min`` of each overpass: ``(time, mean LST K, swing K)`` gives records alternating
    ``mean +- swing`` (0: steady; > 1.5 K about: unstable by the matchup rules)."""
    from sftl_dask.physics.constants import STEFAN_BOLTZMANN

    lines = [f"# id: {site_id}", f"# lon: {lon!r}", f"# lat: {lat!r}", "# broadband_emissivity: 1.0",
             "# timezone: UTC", "TIMESTAMP,ULR_Cor,DLR_Cor,QC_flag"]
    for when, lst_k, swing in overpasses:
        t0 = np.datetime64(when, "s")
        for j, k in enumerate(range(-half_width_min, half_width_min + 1, every_min)):
            t = lst_k + (swing if j % 2 else -swing)
            stamp = str(t0 + np.timedelta64(k * 60, "s")).replace("T", " ")
            lines.append(f"{stamp},{STEFAN_BOLTZMANN * t**4!r},300.0,0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


#: Calibration of the synthetic VIMI products the reader tests write (12 bands: 8 VNIR/SWIR, 4 TIR).
VIMI_GAINS = [0.05, 0.05, 0.04, 0.03, 0.01, 0.004, 0.002, 0.001, 0.0078, 0.0069, 0.0061, 0.0052]
VIMI_OFFSETS = [0.0] * 8 + [-0.1, -0.1, -0.12, -0.08]
VIMI_ESUN = [1970.0, 1843.0, 1555.0, 1047.0, 227.0, 80.7] + [0.0] * 6


def vimi_meta(**over: object) -> dict[str, object]:
    """The XML metadata of a synthetic VIMI product near Huailai (2022-06-12 03:00 UTC), with ``over`` applied."""
    meta: dict[str, object] = {
        "StartTime": "2022-06-12 03:00:00.000", "EndTime": "2022-06-12 03:00:08.000",
        "CenterTime": "2022-06-12 03:00:04.250", "SolarAzimuth": 140.0, "SolarZenith": 30.0,
        "SatelliteAzimuth": 278.5, "SatelliteZenith": 1.2, "CloudPercent": 3.5,
        "TopLeftLatitude": 40.4, "TopLeftLongitude": 115.7, "TopRightLatitude": 40.4, "TopRightLongitude": 115.9,
        "BottomRightLatitude": 40.2, "BottomRightLongitude": 115.9, "BottomLeftLatitude": 40.2,
        "BottomLeftLongitude": 115.7, "GAINS": VIMI_GAINS, "OFFSETS": VIMI_OFFSETS, "ESUN": VIMI_ESUN,
        "EarthSunDistance": 1.015,
    }
    meta.update(over)
    return meta


def put_pickle_in_program(artifact: Path) -> None:
    """Replace the example inputs inside an artifact's ``model.pt2`` by a pickle (what a malicious program
    would carry); the caller rewrites the hashes if it wants only the pickle check to stand in the way."""
    import io
    import pickle
    import zipfile

    src = zipfile.ZipFile(io.BytesIO((artifact / "model.pt2").read_bytes()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for m in src.infolist():
            data = src.read(m)
            if m.filename.endswith("sample_inputs/model.pt"):
                data = pickle.dumps(("not", "weights"))
            dst.writestr(m, data)
    (artifact / "model.pt2").write_bytes(buf.getvalue())


def hot_target_peak(img: np.ndarray, row: float, col: float) -> tuple[float, float]:
    """Sub-pixel peak of a hot target near (row, col) of ``img`` (px): a plane fitted to the 7 x 7 window's outer
    ring is the background; the centroid of the excess over the inner 5 x 5 is the peak (row, col)."""
    ri, ci = round(row), round(col)
    win = img[ri - 3:ri + 4, ci - 3:ci + 4].astype(float)
    rr, cc = np.mgrid[-3:4, -3:4]
    ring = (np.abs(rr) == 3) | (np.abs(cc) == 3)
    coef = np.linalg.lstsq(np.c_[np.ones(ring.sum()), rr[ring], cc[ring]], win[ring], rcond=None)[0]
    excess = np.where(ring, 0.0, win - (coef[0] + coef[1] * rr + coef[2] * cc))
    return ri + float((excess * rr).sum() / excess.sum()), ci + float((excess * cc).sum() / excess.sum())


def no_cluster(*args: object, **kwargs: object) -> None:
    """Stand-in for ``LocalCluster`` in tests of input refused before any work: starting a cluster fails the test
    (what a wall-clock bound on the refusal used to pin, without depending on the machine's load)."""
    raise AssertionError("a Dask cluster was started for input that should have been refused first")
