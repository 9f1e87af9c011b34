"""The simulation table: profiles x emissivity spectra x LST offsets x view angles.

Each clear-sky profile goes once through the radiative transfer model (per view angle);
every emissivity spectrum of the library and random LST offsets from the bottom air
temperature then give top-of-atmosphere channel radiances, which become brightness
temperatures with the sensor's NEdT noise. Work is split over Dask in batches of
profiles; each batch writes one Parquet file of the dataset, the dataset appears at
its final path only when every batch succeeded, and the generating configuration and
the column units ride in the Parquet schema metadata.

The table is also read back here, in pieces, by the distributed trainings (``LGBM.fit_dask`` and
:func:`sftl_dask.training.distributed.pretrain_distributed`): :func:`simulation_parts` lists its
files, :func:`plan_row_ranges` splits it into parts balanced by rows and :func:`read_training_rows`
reads a part on a worker as features and LST, with the held-out profiles split off.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from numpy.typing import NDArray

from sftl_dask.cluster import run_tasks
from sftl_dask.features import REQUIRED_INPUTS, feature_matrix, input_range
from sftl_dask.io.profiles import read_profile_table
from sftl_dask.io.rt_table import read_rt_table
from sftl_dask.io.spectral_library import read_spectral_library_dir
from sftl_dask.physics.atmosphere import AtmosphereProfile
from sftl_dask.physics.channels import THERMAL_NAMES, thermal_channels
from sftl_dask.physics.emissivity import Spectrum, band_emissivity, default_library
from sftl_dask.physics.planck import band_planck
from sftl_dask.physics.profiles import generate_profiles, saturation_vapour_pressure_hpa
from sftl_dask.physics.rtm import ReducedBandModel, RTBackend, TableBackend
from sftl_dask.physics.splitwindow import fit_split_window
from sftl_dask.staging import content_sha256, staged_dir
from sftl_dask.version import __version__

__all__ = [
    "COLUMN_UNITS", "TRAINING_COLUMNS", "RowRange", "SimulationConfig", "SimulationInputs", "plan_row_ranges",
    "read_simulation_metadata", "read_training_rows", "resolve_inputs", "simulate_batch", "simulation_parts",
    "simulation_profiles", "write_simulation",
]

EMIS_NAMES: tuple[str, ...] = tuple(n.replace("bt_", "emis_") for n in THERMAL_NAMES)
METADATA_KEY = b"sftl_dask.simulation"
#: The band model's name in the provenance.
BAND_MODEL = "ReducedBandModel (LOWTRAN7-calibrated band model)"
#: The relative-humidity screen looks at levels at or below this height in pressure (hPa): the troposphere.
SCREEN_RH_TOP_HPA = 100.0

#: Units of the table's columns.
COLUMN_UNITS: dict[str, str] = {
    "profile_id": "index", "spectrum_id": "index", "category": "emissivity class",
    "vza": "deg", "lst": "K", "t_air": "K", "wvc": "g cm-2", "surface_altitude_km": "km",
    **{n: "K" for n in THERMAL_NAMES},
    **{n: "1" for n in EMIS_NAMES},
    **{f"tau_{n[3:]}": "1" for n in THERMAL_NAMES},
    **{f"lup_{n[3:]}": "W m-2 sr-1 um-1" for n in THERMAL_NAMES},
    **{f"ldown_{n[3:]}": "W m-2 sr-1 um-1" for n in THERMAL_NAMES},
}


@dataclass(frozen=True)
class SimulationConfig:
    """How the simulation table is made.

    Parameters
    ----------
    n_profiles : int
        Clear-sky profiles from the TIGR-like generator (default 946, as TIGR2000); 0: none (then
        ``profile_tables`` must give them).
    n_spectra : int or None
        Emissivity spectra taken from the embedded library (None: all of them, >= 81; 0: none, then
        ``spectra_dirs`` must give them).
    vza_deg : tuple of float
        View zenith angles (deg) at which each profile is run.
    draws_per_combination : int
        Random LST offsets drawn per (profile, spectrum, angle).
    offset_warm_k, offset_cold_k : tuple of float
        LST - bottom air temperature range (K) for warm (>= ``cold_below_k``) and cold profiles.
    cold_below_k : float
        Bottom air temperature (K) under which the cold offset range applies.
    nedt_k : tuple of float or None
        Sensor noise per channel (K, Gaussian on BT); None: the channel table's NEdT.
    seed : int
        Seed of everything random (profiles, offsets, noise).
    batch_profiles : int
        Profiles per Dask task.
    profile_tables : tuple of str
        Users' profile tables (CSV or NetCDF, :func:`~sftl_dask.io.profiles.read_profile_table`); their
        profiles follow the generated ones.
    spectra_dirs : tuple of str
        Folders of ECOSTRESS/ASTER ``*.spectrum.txt`` files
        (:func:`~sftl_dask.io.spectral_library.read_spectral_library_dir`); their spectra follow the
        embedded ones.
    rt_table : str or None
        A filled RT table (``sftl rt-template``, :func:`~sftl_dask.io.rt_table.read_rt_table`): the
        atmospheric terms of every profile come from it instead of the band model.
    screen_max_rh_percent : float or None
        Drop profiles whose relative humidity (over ice below 273.16 K, liquid above) reaches this (%) at
        any level up to 100 hPa: cloudy or saturated columns. None: no screen.
    screen_lst_minus_tair_k : tuple of float or None
        Drop rows whose LST - bottom air temperature (K) lies outside ``(low, high)``. None: no screen.
    """

    n_profiles: int = 946
    n_spectra: int | None = None
    vza_deg: tuple[float, ...] = (0.0, 15.0, 30.0)
    draws_per_combination: int = 2
    offset_warm_k: tuple[float, float] = (-5.0, 20.0)
    offset_cold_k: tuple[float, float] = (-5.0, 10.0)
    cold_below_k: float = 270.0
    nedt_k: tuple[float, ...] | None = None
    seed: int = 0
    batch_profiles: int = 60
    extra: dict[str, Any] = field(default_factory=dict)
    profile_tables: tuple[str, ...] = ()
    spectra_dirs: tuple[str, ...] = ()
    rt_table: str | None = None
    screen_max_rh_percent: float | None = None
    screen_lst_minus_tair_k: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.n_profiles < 0 or (self.n_profiles == 0 and not self.profile_tables):
            raise ValueError(f"n_profiles must be >= 1 (or 0 with profile_tables), got {self.n_profiles}")
        if self.n_spectra is not None and (self.n_spectra < 0 or (self.n_spectra == 0 and not self.spectra_dirs)):
            raise ValueError(f"n_spectra must be >= 1 (or 0 with spectra_dirs), got {self.n_spectra}")
        if self.screen_max_rh_percent is not None and not 0 < self.screen_max_rh_percent <= 200:
            raise ValueError(f"screen_max_rh_percent must be in (0, 200] %, got {self.screen_max_rh_percent}")
        scr = self.screen_lst_minus_tair_k
        if scr is not None and (len(scr) != 2 or not scr[0] < scr[1]):
            raise ValueError(f"screen_lst_minus_tair_k must be (low, high) K with low < high, got {scr}")
        if self.draws_per_combination < 1:
            raise ValueError(f"draws_per_combination must be >= 1, got {self.draws_per_combination}")
        if not self.vza_deg or min(self.vza_deg) < 0 or max(self.vza_deg) > 70:
            raise ValueError(f"vza_deg must be non-empty within 0-70 deg, got {self.vza_deg}")
        for name in ("offset_warm_k", "offset_cold_k"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} must be (low, high), got {(lo, hi)}")
        if self.nedt_k is not None and (len(self.nedt_k) != 4 or min(self.nedt_k) < 0):
            raise ValueError(f"nedt_k must give 4 non-negative values (K), got {self.nedt_k}")
        if self.batch_profiles < 1:
            raise ValueError(f"batch_profiles must be >= 1, got {self.batch_profiles}")

    def nedt(self) -> NDArray[np.float64]:
        """Per-channel NEdT (K)."""
        if self.nedt_k is not None:
            return np.asarray(self.nedt_k, dtype=np.float64)
        return np.array([c.nedt_k for c in thermal_channels()])

    def expected_rows(self) -> int:
        """Rows the table will have (nothing is screened out after drawing)."""
        n_spec = len(default_library()) if self.n_spectra is None else min(self.n_spectra, len(default_library()))
        return self.n_profiles * n_spec * len(self.vza_deg) * self.draws_per_combination


def _embedded_spectra(config: SimulationConfig) -> tuple[Spectrum, ...]:
    """The embedded library's spectra the configuration takes (all, none, or a deterministic spread)."""
    lib = default_library()
    if config.n_spectra == 0:
        return ()
    if config.n_spectra is not None and config.n_spectra < len(lib):
        # A deterministic spread over the library (not just its first entries).
        idx = np.linspace(0, len(lib) - 1, config.n_spectra).round().astype(int)
        lib = tuple(lib[i] for i in idx)
    return lib


def _spectra(config: SimulationConfig) -> tuple[NDArray[np.float64], list[str], list[str]]:
    lib = _embedded_spectra(config)
    return band_emissivity(lib), [s.name for s in lib], [s.category for s in lib]


@dataclass(frozen=True, eq=False)
class SimulationInputs:
    """What a simulation is made of, read and checked: profiles, spectra, RT source and their provenance.

    Attributes
    ----------
    profiles : tuple of AtmosphereProfile
        The profiles kept (after the humidity screen), generated ones first, then each table's in file order.
    profile_ids : tuple of int
        Their ``profile_id`` (index in the unscreened list, so a screen does not renumber).
    emissivity : numpy.ndarray
        Channel emissivities (1) of the spectra, (n_spectra, 4): embedded ones first, then each folder's.
    spectra_names, categories : tuple of str
        Name and category of each spectrum.
    backend : RTBackend or None
        The RT table's terms, or None for the band model.
    rt_terms : pandas.DataFrame or None
        The RT table's rows of the kept profiles, one per (profile, angle), as
        :class:`~sftl_dask.physics.rtm.TableBackend` takes them (each batch gets its profiles' rows only).
    provenance : dict
        Every input file with its sha256, the RT source per block of profile ids, the screens and counts.
    """

    profiles: tuple[AtmosphereProfile, ...]
    profile_ids: tuple[int, ...]
    emissivity: NDArray[np.float64]
    spectra_names: tuple[str, ...]
    categories: tuple[str, ...]
    backend: RTBackend | None
    rt_terms: pd.DataFrame | None
    provenance: dict[str, Any]


def _max_rh_percent(profile: AtmosphereProfile) -> float:
    """Highest relative humidity (%) of a profile's levels up to :data:`SCREEN_RH_TOP_HPA` (ice/liquid)."""
    keep = profile.pressure_hpa >= SCREEN_RH_TOP_HPA
    p, t, x = profile.pressure_hpa[keep], profile.temperature_k[keep], profile.h2o_ppmv[keep] * 1e-6
    e = x * p
    return float(np.max(e / saturation_vapour_pressure_hpa(np.clip(t, 110.0, 332.0), phase="auto")) * 100.0)


def simulation_profiles(config: SimulationConfig) -> tuple[list[AtmosphereProfile], list[dict[str, Any]]]:
    """All profiles of a simulation before screening: generated ones, then each table's, and where they came from.

    Returns
    -------
    profiles : list of AtmosphereProfile
        Index = ``profile_id``.
    sources : list of dict
        One per source: ``source`` (``generated`` or ``file``), ``path`` and ``sha256`` (files), ``seed``
        (generated), ``profiles`` (count) and ``profile_ids`` (``[first, stop)``).

    Raises
    ------
    FileNotFoundError
        A profile table that does not exist.
    ValueError
        A profile table refused by its reader (the message names the file and profile), or a profile
        name found twice (naming both sources): the RT table and the provenance find profiles by name.
    """
    profiles: list[AtmosphereProfile] = []
    sources: list[dict[str, Any]] = []
    if config.n_profiles:
        profiles += generate_profiles(config.n_profiles, seed=config.seed)
        sources.append({"source": "generated", "generator": "sftl_dask.physics.profiles.generate_profiles "
                        "(TIGR-like)", "seed": config.seed, "profiles": config.n_profiles,
                        "profile_ids": [0, config.n_profiles]})
    seen = {p.name: "the generated profiles" for p in profiles}
    for table in config.profile_tables:
        path = Path(table)
        got = read_profile_table(path)
        for prof in got:
            if prof.name in seen:
                raise ValueError(f"{path}: profile {prof.name!r} is already in {seen[prof.name]}; profile names "
                                 "must be unique across the inputs (the RT table finds profiles by name)")
            seen[prof.name] = str(path)
        sources.append({"source": "file", "path": str(path.resolve()), "sha256": content_sha256(path),
                        "profiles": len(got), "profile_ids": [len(profiles), len(profiles) + len(got)]})
        profiles += got
    return profiles, sources


def _screen_profiles(config: SimulationConfig, profiles: list[AtmosphereProfile]
                     ) -> tuple[list[int], dict[str, Any]]:
    """Indices of the profiles kept by the humidity screen, and the screen's record."""
    limit = config.screen_max_rh_percent
    if limit is None:
        return list(range(len(profiles))), {"max_rh_percent": None, "profiles_dropped": []}
    dropped = [i for i, p in enumerate(profiles) if _max_rh_percent(p) >= limit]
    if len(dropped) == len(profiles):
        raise ValueError(f"screen_max_rh_percent {limit:g} %: every one of the {len(profiles)} profiles reaches it")
    drop = set(dropped)
    return [i for i in range(len(profiles)) if i not in drop], {
        "max_rh_percent": limit, "levels": f"pressure >= {SCREEN_RH_TOP_HPA:g} hPa, RH over ice below 273.16 K",
        "profiles_dropped": [profiles[i].name for i in dropped]}


def _user_spectra(config: SimulationConfig) -> tuple[list[Spectrum], list[dict[str, Any]], NDArray[np.float64]]:
    """The users' spectra, one provenance entry per file, and their channel emissivities (checked in (0, 1])."""
    spectra: list[Spectrum] = []
    files: list[dict[str, Any]] = []
    rows = []
    for folder in config.spectra_dirs:
        got = read_spectral_library_dir(folder)
        paths = sorted(p for p in Path(folder).glob("*.spectrum.txt") if p.is_file())
        for spec, path in zip(got, paths, strict=True):
            try:
                eps = band_emissivity(spec)[0]
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            if np.any(eps <= 0) or np.any(eps > 1):
                raise ValueError(f"{path}: channel emissivities {np.round(eps, 4).tolist()} outside (0, 1]")
            rows.append(eps)
            files.append({"path": str(path.resolve()), "sha256": content_sha256(path), "name": spec.name,
                          "category": spec.category})
        spectra += got
    emis = np.array(rows).reshape(len(rows), len(THERMAL_NAMES))
    return spectra, files, emis


def resolve_inputs(config: SimulationConfig) -> SimulationInputs:
    """Read and check every input of a simulation, and record where each came from.

    Everything a user gives is read here, before any row is simulated, so a bad file stops the run
    before anything is written.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing or bad input: the message starts with the file and names the profile, line or
        spectrum (see :func:`~sftl_dask.io.profiles.read_profile_table`,
        :func:`~sftl_dask.io.spectral_library.read_spectrum`, :func:`~sftl_dask.io.rt_table.read_rt_table`);
        a spectrum that does not cover a channel or whose channel emissivity is outside (0, 1]; duplicate
        profile names; a humidity screen that drops every profile.
    """
    all_profiles, prof_sources = simulation_profiles(config)
    kept, rh_screen = _screen_profiles(config, all_profiles)
    profiles = tuple(all_profiles[i] for i in kept)
    embedded = _embedded_spectra(config)
    user, spec_files, user_emis = _user_spectra(config)
    emis = np.concatenate([band_emissivity(embedded) if embedded else np.empty((0, len(THERMAL_NAMES))), user_emis])
    backend: RTBackend | None = None
    wide: pd.DataFrame | None = None
    ids = [0, len(all_profiles)]
    rt: list[dict[str, Any]] = [{"source": BAND_MODEL, "profile_ids": ids}]
    if config.rt_table is not None:
        path = Path(config.rt_table)
        wide = read_rt_table(path, [p.name for p in profiles], config.vza_deg)
        backend = TableBackend(wide, channels=THERMAL_NAMES, source=str(path))
        rt = [{"source": "RT table", "path": str(path.resolve()), "sha256": content_sha256(path), "profile_ids": ids}]
    provenance = {
        "profiles": prof_sources,
        "spectra": {"embedded": {"source": "sftl_dask/data/emissivity_library.csv", "spectra": len(embedded),
                                 "spectrum_ids": [0, len(embedded)]},
                    "files": [{**f, "spectrum_id": len(embedded) + i} for i, f in enumerate(spec_files)],
                    "folders": [str(Path(d).resolve()) for d in config.spectra_dirs]},
        "rt": rt,
        "screens": {**rh_screen, "lst_minus_tair_k": config.screen_lst_minus_tair_k},
        "mixing": "full factorial over the kept profiles x spectra x view angles x LST draws: every combination "
                  "weighs the same, so a source's share of rows is its share of profiles (spectra)",
        "counts": {"profiles": len(profiles), "profiles_screened": len(all_profiles) - len(profiles),
                   "spectra": len(embedded) + len(user), "view_angles": len(config.vza_deg),
                   "draws_per_combination": config.draws_per_combination},
    }
    return SimulationInputs(profiles, tuple(kept), emis, tuple([s.name for s in embedded] + [s.name for s in user]),
                            tuple([s.category for s in embedded] + [s.category for s in user]), backend, wide,
                            provenance)


def simulate_batch(
    profiles: Sequence[AtmosphereProfile],
    profile_ids: Sequence[int],
    config: SimulationConfig,
    backend: RTBackend | None = None,
    spectra: tuple[NDArray[np.float64], Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Simulate the table rows of a batch of profiles (pure, no I/O).

    Parameters
    ----------
    profiles : sequence of AtmosphereProfile
        Profiles of the batch.
    profile_ids : sequence of int
        Their global indices (seed the batch's random draws, so results do not depend on batching).
    config : SimulationConfig
        The configuration.
    backend : RTBackend, optional
        Radiative transfer (default: :class:`ReducedBandModel`).
    spectra : (emissivity, categories), optional
        Channel emissivities (n_spectra, 4) and the spectra's categories (default: the embedded library's
        spectra that ``config`` takes; :class:`SimulationInputs` holds the users').

    Returns
    -------
    pandas.DataFrame
        One row per (profile, spectrum, angle, draw) kept by ``config.screen_lst_minus_tair_k``; columns as
        :data:`COLUMN_UNITS`.
    """
    rt = backend or ReducedBandModel()
    if spectra is None:
        emis, _, categories = _spectra(config)
    else:
        emis, categories = np.asarray(spectra[0], dtype=np.float64), list(spectra[1])
    n_spec = emis.shape[0]
    vza = np.asarray(config.vza_deg, dtype=np.float64)
    n_ang, n_draw = vza.size, config.draws_per_combination
    planck = band_planck()
    nedt = config.nedt()
    cat_codes = np.asarray(categories)
    frames = []
    for prof, pid in zip(profiles, profile_ids, strict=True):
        rng = np.random.default_rng([config.seed, 7919, int(pid)])
        terms = rt.terms(prof, vza)
        t_air = prof.surface_air_temperature_k
        lo, hi = config.offset_cold_k if t_air < config.cold_below_k else config.offset_warm_k
        shape = (n_spec, n_ang, n_draw)
        lst = t_air + rng.uniform(lo, hi, size=shape)
        n = lst.size
        spec_idx = np.broadcast_to(np.arange(n_spec)[:, None, None], shape).ravel()
        ang_idx = np.broadcast_to(np.arange(n_ang)[None, :, None], shape).ravel()
        lst = lst.ravel()
        cols: dict[str, Any] = {
            "profile_id": np.full(n, pid, dtype=np.int32),
            "spectrum_id": spec_idx.astype(np.int16),
            "category": cat_codes[spec_idx],
            "vza": vza[ang_idx],
            "lst": lst,
            "t_air": np.full(n, t_air),
            "wvc": np.full(n, prof.total_column_water()),
            "surface_altitude_km": np.full(n, prof.surface_altitude_km),
        }
        for c, name in enumerate(THERMAL_NAMES):
            eps = emis[spec_idx, c]
            tau = terms.transmittance[ang_idx, c]
            lup = terms.upwelling[ang_idx, c]
            ldn = terms.downwelling[c]
            rad = tau * (eps * planck[c].radiance(lst) + (1.0 - eps) * ldn) + lup
            bt = planck[c].brightness_temperature(rad) + rng.normal(0.0, nedt[c], size=n)
            suffix = name[3:]
            cols[name] = bt
            cols[f"emis_{suffix}"] = eps
            cols[f"tau_{suffix}"] = tau
            cols[f"lup_{suffix}"] = lup
            cols[f"ldown_{suffix}"] = np.full(n, ldn)
        frames.append(pd.DataFrame(cols))
    return _screened_float32(pd.concat(frames, ignore_index=True), config)


def _screened_float32(df: pd.DataFrame, config: SimulationConfig) -> pd.DataFrame:
    """Rows kept by the LST - air temperature screen, floats as float32, ``category`` categorical."""
    if config.screen_lst_minus_tair_k is not None:
        lo, hi = config.screen_lst_minus_tair_k
        d = df["lst"].to_numpy() - df["t_air"].to_numpy()
        df = df[(d >= lo) & (d <= hi)].reset_index(drop=True)
    for k in df.columns:
        if df[k].dtype == np.float64:
            df[k] = df[k].astype(np.float32)
    df["category"] = df["category"].astype("category")
    return df


def _schema_metadata(config: SimulationConfig, spectra_names: Sequence[str], provenance: dict[str, Any],
                     rt_model: str = BAND_MODEL) -> dict[bytes, bytes]:
    meta = {
        "config": asdict(config),
        "units": COLUMN_UNITS,
        "spectra": list(spectra_names),
        "rt_model": rt_model,
        "inputs": provenance,
        "sftl_dask_version": __version__,
    }
    return {METADATA_KEY: json.dumps(meta).encode()}


def _write_batch(out_dir: str, part: int, profiles: Sequence[AtmosphereProfile], ids: Sequence[int],
                 config: SimulationConfig, spectra: tuple[NDArray[np.float64], Sequence[str], Sequence[str]],
                 rt_terms: pd.DataFrame | None, metadata: dict[bytes, bytes]) -> tuple[int, int]:
    """One batch's rows written as one part file; returns (rows written, rows screened out)."""
    emis, categories, _ = spectra
    backend = None if rt_terms is None else TableBackend(rt_terms, channels=THERMAL_NAMES, source="RT table")
    df = simulate_batch(profiles, ids, config, backend=backend, spectra=(emis, categories))
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    pq.write_table(table, os.path.join(out_dir, f"part-{part:05d}.parquet"), compression="zstd",
                   compression_level=1)
    full = len(profiles) * emis.shape[0] * len(config.vza_deg) * config.draws_per_combination
    return table.num_rows, full - table.num_rows


def _rt_model(inputs: SimulationInputs) -> str:
    rt = inputs.provenance["rt"][0]
    return rt["source"] if inputs.backend is None else f"RT table {rt['path']} (sha256 {rt['sha256']})"


def write_simulation(
    out: str | os.PathLike[str],
    config: SimulationConfig,
    *,
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    inputs: SimulationInputs | None = None,
) -> int:
    """Simulate and write the table as a Parquet dataset directory.

    The inputs are read and checked first (:func:`resolve_inputs`): a bad one stops the run before anything
    is written. The dataset's ``_common_metadata`` holds the provenance with the final counts (rows, rows
    screened); :func:`read_simulation_metadata` returns it under ``inputs``.

    Parameters
    ----------
    out : path
        Dataset directory to create (``part-*.parquet`` files and ``_common_metadata``).
    config : SimulationConfig
        The configuration.
    client : distributed.Client, optional
        Client to run batches on; without one they run in this process.
    progress : callable, optional
        Called as ``progress(done_batches, total_batches)``.
    overwrite : bool, optional
        Replace an existing dataset at ``out``.
    inputs : SimulationInputs, optional
        ``resolve_inputs(config)`` already made (default: made here).

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    FileExistsError
        If ``out`` exists and ``overwrite`` is false.
    FileNotFoundError, ValueError
        A bad input (see :func:`resolve_inputs`), or every row screened out.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (use overwrite)")
    inputs = inputs or resolve_inputs(config)
    with staged_dir(out) as tmp:
        profiles, ids = inputs.profiles, inputs.profile_ids
        bs = config.batch_profiles
        batches = [(i // bs, profiles[i : i + bs], ids[i : i + bs]) for i in range(0, len(profiles), bs)]
        spectra = (inputs.emissivity, inputs.categories, inputs.spectra_names)
        meta = _schema_metadata(config, inputs.spectra_names, inputs.provenance, _rt_model(inputs))
        rt = inputs.rt_terms
        calls = [(_write_batch, (str(tmp), part, profs, pids, config, spectra,
                                 None if rt is None else rt[rt["profile"].isin({p.name for p in profs})], meta))
                 for part, profs, pids in batches]
        done = run_tasks(calls, client, progress=progress)
        total, screened = sum(d[0] for d in done), sum(d[1] for d in done)
        if total == 0:
            raise ValueError(f"screen_lst_minus_tair_k {config.screen_lst_minus_tair_k}: every row screened out")
        inputs.provenance["counts"].update(rows=total, rows_screened=screened)
        schema = pq.read_schema(next(tmp.glob("part-*.parquet")))
        schema = schema.with_metadata({**(schema.metadata or {}), **_schema_metadata(
            config, inputs.spectra_names, inputs.provenance, _rt_model(inputs))})
        pq.write_metadata(schema, tmp / "_common_metadata")
    return total


def read_simulation_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The generating configuration, units and spectra names stored with a simulation table.

    Raises
    ------
    ValueError
        If ``path`` is not a simulation table written by :func:`write_simulation`.
    """
    path = Path(path)
    files = [path / "_common_metadata"] if (path / "_common_metadata").exists() else sorted(path.glob("*.parquet"))
    if path.is_file():
        files = [path]
    if not files:
        raise ValueError(f"{path}: no Parquet files")
    try:
        meta = pq.read_schema(files[0]).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{files[0]}: not a Parquet file ({exc})") from None
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: no sftl_dask simulation metadata (not made by 'sftl simulate'?)")
    return json.loads(meta[METADATA_KEY])


#: Columns the split-window fit reads from a simulation table.
SW_COLUMNS = ("bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95", "wvc", "vza", "lst", "profile_id")


def read_simulation_columns(path: str | os.PathLike[str], columns: Sequence[str]) -> dict[str, NDArray]:
    """Columns of a simulation table as numpy arrays.

    Raises
    ------
    ValueError
        If ``path`` is not a readable Parquet table, lacks a column, is empty or holds non-finite values.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    try:
        dset = pads.dataset(path, format="parquet")
        missing = [c for c in columns if c not in dset.schema.names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        table = dset.to_table(columns=list(columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet table ({str(exc).splitlines()[0]})") from None
    if table.num_rows == 0:
        raise ValueError(f"{path}: table has no rows")
    out = {c: table.column(c).to_numpy() for c in columns}
    for c, v in out.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ValueError(f"{path}: column {c} has {int((~np.isfinite(v)).sum())} non-finite value(s)")
    return out


#: Columns the models train on: the feature inputs (:data:`~sftl_dask.features.REQUIRED_INPUTS`), ``lst`` (K)
#: and ``profile_id`` (to hold profiles out).
TRAINING_COLUMNS: tuple[str, ...] = (*REQUIRED_INPUTS, "lst", "profile_id")


class RowRange(NamedTuple):
    """Rows ``start:stop`` (0-based, stop excluded) of one Parquet file of a simulation table."""

    file: str
    start: int
    stop: int


def simulation_parts(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of a simulation table, in name order.

    Parameters
    ----------
    path : path
        A Parquet dataset directory written by :func:`write_simulation` (its ``part-*.parquet``
        files; as for ``pyarrow.dataset``, names starting with ``_`` or ``.`` are skipped), or one
        Parquet file.

    Returns
    -------
    list of pathlib.Path
        ``[path]`` for a file, else the directory's Parquet files.

    Raises
    ------
    ValueError
        Naming ``path``: it does not exist, or the directory holds no Parquet files.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path}: simulation table directory not found (and no such simulation table file)")
    files = sorted(f for f in path.glob("*.parquet") if f.is_file() and not f.name.startswith(("_", ".")))
    if not files:
        raise ValueError(f"{path}: no Parquet part files (no Parquet files in the directory; expected "
                         "part-*.parquet)")
    return files


def _open_part(file: str | os.PathLike[str], columns: Sequence[str]) -> pq.ParquetFile:
    """A part file opened for reading, checked for ``columns`` (errors name the file)."""
    try:
        pf = pq.ParquetFile(file)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{file}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in columns if c not in names]
    if missing:
        pf.close()
        raise ValueError(f"{file}: missing column(s) {', '.join(missing)}")
    return pf


def _merged(ranges: Iterable[RowRange]) -> list[RowRange]:
    """Ranges in file and row order, those that touch in the same file joined into one."""
    out: list[RowRange] = []
    for r in sorted(ranges):
        if out and out[-1].file == r.file and out[-1].stop == r.start:
            out[-1] = RowRange(r.file, out[-1].start, r.stop)
        else:
            out.append(r)
    return out


def plan_row_ranges(path: str | os.PathLike[str], n_parts: int, *,
                    columns: Sequence[str] = TRAINING_COLUMNS) -> list[list[RowRange]]:
    """Split a simulation table into ``n_parts`` parts of about equal rows, for reading on workers.

    Only the files' metadata is read. The units are the files' row groups (whole files when each is
    one row group, as :func:`write_simulation` writes them): with at least ``n_parts`` of them they
    are dealt largest first to the part with the fewest rows (equal ones round-robin, in file
    order), so no unit is split; with fewer, the table (files in name order) is cut into
    ``n_parts`` consecutive row ranges whose sizes differ by at most one row.

    Parameters
    ----------
    path : path
        The table (see :func:`simulation_parts`).
    n_parts : int
        Parts to make (workers, ranks or partitions), >= 1.
    columns : sequence of str, optional
        Columns every file must have (default :data:`TRAINING_COLUMNS`).

    Returns
    -------
    list of list of RowRange
        For each part, the ``(file, start, stop)`` row ranges it reads, in file and row order (touching
        ranges of a file joined); every part has at least one row.

    Raises
    ------
    ValueError
        Naming the path or file: see :func:`simulation_parts`; a file is not readable Parquet or
        lacks a column; the table has no rows, or fewer rows than ``n_parts``; ``n_parts < 1``.
    """
    if n_parts < 1:
        raise ValueError(f"{path}: n_parts must be >= 1, got {n_parts}")
    units: list[RowRange] = []  # the row groups, as row ranges of their file
    for f in simulation_parts(path):
        with _open_part(f, columns) as pf:
            meta = pf.metadata
        start = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n:
                units.append(RowRange(str(f), start, start + n))
            start += n
    total = sum(u.stop - u.start for u in units)
    if total == 0:
        raise ValueError(f"{path}: table has no rows")
    if total < n_parts:
        raise ValueError(f"{path}: {total} row(s) cannot fill {n_parts} parts of at least one row; use fewer "
                         "parts (workers)")
    parts: list[list[RowRange]] = [[] for _ in range(n_parts)]
    if len(units) >= n_parts:
        load = [0] * n_parts
        for u in sorted(units, key=lambda u: u.start - u.stop):  # most rows first; stable for equal ones
            i = min(range(n_parts), key=lambda i: (load[i], i))
            parts[i].append(u)
            load[i] += u.stop - u.start
    else:
        bounds = [i * total // n_parts for i in range(n_parts + 1)]
        offset = 0  # of the unit in the concatenated table
        for u in units:
            n = u.stop - u.start
            for i in range(n_parts):
                a, b = max(bounds[i], offset), min(bounds[i + 1], offset + n)
                if a < b:
                    parts[i].append(RowRange(u.file, u.start + a - offset, u.start + b - offset))
            offset += n
    return [_merged(p) for p in parts]


def _read_range(file: str, start: int, stop: int, columns: Sequence[str]) -> dict[str, NDArray]:
    """Columns of rows ``start:stop`` of one part file, reading only the row groups that hold them."""
    with _open_part(file, columns) as pf:
        meta = pf.metadata
        if not 0 <= start < stop <= meta.num_rows:
            raise ValueError(f"{file}: rows {start}-{stop} are not a non-empty range of its {meta.num_rows} rows")
        groups, first, offset = [], 0, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if offset < stop and offset + n > start:
                first = offset if not groups else first
                groups.append(g)
            offset += n
        try:
            table = pf.read_row_groups(groups, columns=list(columns))
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise ValueError(f"{file}: cannot read columns {', '.join(columns)} "
                             f"({str(exc).splitlines()[0]})") from None
    table = table.slice(start - first, stop - start)
    return {c: table.column(c).to_numpy() for c in columns}


def read_training_rows(
    ranges: Iterable[tuple[str, int, int]], holdout_profiles: Iterable[int] = ()
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Rows of a simulation table as features and LST, the held-out profiles split off (runs on a worker).

    Reads only :data:`TRAINING_COLUMNS` of the row groups holding the rows, and computes
    :func:`~sftl_dask.features.feature_matrix` file by file.

    Parameters
    ----------
    ranges : iterable of (file, start, stop)
        Row ranges to read (a part of :func:`plan_row_ranges`); at least one.
    holdout_profiles : iterable of int
        ``profile_id`` values whose rows are returned apart (the validation rows).

    Returns
    -------
    x, y : numpy.ndarray
        The training rows: features (n, len(FEATURES)) float32 in feature units, C-contiguous, and
        LST (n,) float32 (K).
    x_held, y_held : numpy.ndarray
        The same for the rows of the held-out profiles (possibly none).

    Raises
    ------
    ValueError
        Naming the file (and column): not readable Parquet, a missing column, a range outside the
        file, an invalid feature input (non-finite or out of range) or a non-finite ``lst``; no ranges.
    """
    holdout = np.unique(np.asarray(list(holdout_profiles), dtype=np.int64))
    xs, ys, held = [], [], []
    for file, start, stop in ranges:
        cols = _read_range(str(file), int(start), int(stop), TRAINING_COLUMNS)
        try:
            xs.append(feature_matrix(cols))
        except ValueError as exc:
            raise ValueError(f"{file}: {exc}") from None
        y = np.asarray(cols["lst"], dtype=np.float32)
        bad = int((~np.isfinite(y)).sum())
        if bad:
            raise ValueError(f"{file}: column lst has {bad} non-finite value(s)")
        ys.append(y)
        held.append(np.isin(np.asarray(cols["profile_id"], dtype=np.int64), holdout))
    if not xs:
        raise ValueError("read_training_rows: no row ranges to read")
    x, yy, h = np.concatenate(xs), np.concatenate(ys), np.concatenate(held)
    return np.ascontiguousarray(x[~h]), yy[~h], np.ascontiguousarray(x[h]), yy[h]


def fit_split_window_on_simulation(table: Mapping[str, NDArray], *, seed: int = 0) -> Any:
    """Fit the split-window to a simulation table (columns :data:`SW_COLUMNS`).

    View-angle windows split halfway between the simulated angles; whole profiles are held out,
    so the reported RMSE is on atmospheres the fit never saw.

    Returns
    -------
    sftl_dask.physics.splitwindow.SplitWindowCoefficients
    """
    angles = np.unique(np.round(np.asarray(table["vza"], dtype=np.float64), 3))
    cuts = [0.0, *((angles[:-1] + angles[1:]) / 2).tolist(), float(max(angles[-1], 1.0))]
    return fit_split_window(table, seed=seed, holdout_group="profile_id", vza_windows=tuple(itertools.pairwise(cuts)))


def split_window_document(coeffs: Any, table: Mapping[str, NDArray]) -> dict[str, Any]:
    """The JSON document ``sftl fit-sw`` writes: the coefficients and the simulation's input range.

    ``pretraining_range`` (``[min, max]`` of the BT pair (K), WVC (g cm-2), VZA (deg) and the pair's
    emissivities) lets retrieval flag pixels outside what the coefficients were fitted on.
    """
    return {**coeffs.to_dict(), "pretraining_range": input_range(table)}
