"""Data preparation for training: the simulation table, the split-window fit and the matchups.

:func:`prepare_data` makes (or reuses, keyed by what made them: :mod:`sftl_dask.staging`) what
:mod:`sftl_dask.training` takes: the simulation table, the split-window fitted on it, and the matchups of the
configuration's one data source (a scene cube with station records and a site table, a matchup table, or the
testbed, built and ingested here). The pipelines and the CLI prepare the data and hand it to training; training
never builds a testbed or ingests (DESIGN.md, "Who may import whom").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sftl_dask.features import REQUIRED_INPUTS
from sftl_dask.ingest import ingest
from sftl_dask.io.insitu import read_sites
from sftl_dask.matchups import build_matchups, validate_matchups
from sftl_dask.simulate import (
    SimulationConfig,
    fit_split_window_on_simulation,
    read_simulation_columns,
    read_simulation_metadata,
    split_window_document,
    write_simulation,
)
from sftl_dask.staging import cache_key, file_identity, reuse_or_remove, staged_file, stamp
from sftl_dask.testbed.build import build_testbed
from sftl_dask.training.stages import PreparedData, TrainConfig
from sftl_dask.version import __version__

__all__ = ["prepare_data", "read_simulation_table", "testbed_dem"]


def prepare_data(cfg: TrainConfig, work: Path, client: Any = None) -> PreparedData:
    """Make (or reuse) the simulation table, the split-window fit and the matchups of ``cfg.data``.

    The matchups come from the configuration's one data source: a scene cube with station records and a
    site table (built here, as ``sftl matchups`` does), a matchup table, or the testbed (built under
    ``work`` only when ``data.testbed`` asks for it). The source and target regions' rows are told apart
    by the site table's ``region`` column. A pixel-truth table is joined only where one is named
    (``data.truth``) or the testbed brings its own.

    Returns
    -------
    PreparedData
        ``sim`` (path), ``sw`` (coefficients dict), ``matchups`` (DataFrame), ``matchups_path``, ``testbed``
        (path, or None without one), ``table`` (the simulation's columns), ``key`` (the cache key of all of
        them, for products made from them).

    Raises
    ------
    ValueError
        Before anything is written: a data path of the configuration that does not exist (its key named), a
        site table without the sites of the station records, a matchup table with missing columns or
        without rows of the source or target region, or a file standing where ``work`` or one of its parent
        folders should be (named).
    """
    d = cfg.data
    for key in ("cube", "insitu", "sites", "matchups", "truth"):
        _need_path(cfg, key, d[key])
    _need_path(cfg, "simulation.path", d["simulation"]["path"])
    if d["testbed"] is not None:
        _need_path(cfg, "testbed.path", d["testbed"]["path"])
    if d["cube"] is not None:
        _check_sites(cfg, Path(d["sites"]), Path(d["insitu"]))
    for folder in (*reversed(work.parents), work):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder}: exists and is not a folder (the work folder {work} goes there)")
    if d["matchups"] is not None:  # a user's table: checked before the simulation is made
        mu_path = Path(d["matchups"])
        mu_key = cache_key({"user_file": file_identity(mu_path)})
        _check_matchup_regions(cfg, _read_matchups(mu_path), mu_path)
    work.mkdir(parents=True, exist_ok=True)
    sim, sim_key = _simulation(cfg, work, client)
    sw_path = work / "sw.json"
    table = read_simulation_table(sim)
    sw_key = cache_key({"simulation": sim_key, "seed": cfg.seed, "version": __version__})
    if not reuse_or_remove(sw_path, sw_key):
        doc = split_window_document(fit_split_window_on_simulation(table, seed=cfg.seed), table)
        with staged_file(sw_path, replace=True) as tmp:
            tmp.write_text(json.dumps(doc))
        stamp(sw_path, sw_key)
    tb: Path | None = None
    truth_csv = Path(d["truth"]) if d["truth"] else None
    if d["cube"] is not None:
        mu_path, mu_key = _cube_matchups(Path(d["cube"]), Path(d["insitu"]), Path(d["sites"]), work)
    elif d["testbed"] is not None:
        tb, mu_path, mu_key = _testbed_matchups(cfg, work, client)
        own = tb / "truth" / "site_overpass_truth.csv"
        truth_csv = truth_csv or (own if own.is_file() else None)
    matchups = _read_matchups(mu_path)
    _check_matchup_regions(cfg, matchups, mu_path)
    if truth_csv is not None:
        matchups = _with_pixel_truth(matchups, truth_csv)
    return {"sim": sim, "sw": json.loads(sw_path.read_text()), "matchups": matchups, "testbed": tb,
            "matchups_path": mu_path, "table": table, "key": cache_key({"sw": sw_key, "matchups": mu_key}),
            "sim_inputs": _simulation_inputs(sim)}


def _need_path(cfg: TrainConfig, key: str, path: str | None) -> None:
    """Refuse a ``data.<key>`` path that does not exist (null: not used)."""
    if path is not None and not Path(path).exists():
        raise ValueError(f"{cfg.source}: data.{key}: {path} does not exist")


def _check_sites(cfg: TrainConfig, sites_csv: Path, insitu: Path) -> None:
    """The site table must hold every station of the records, and both regions of the direction."""
    if not insitu.is_dir():
        raise ValueError(f"{cfg.source}: data.insitu: {insitu} is not a folder of station records")
    stations = sorted(p.stem for p in insitu.glob("*.csv"))
    if not stations:
        raise ValueError(f"{insitu}: no station records (<site id>.csv) here (data.insitu)")
    sites = read_sites(sites_csv)
    missing = sorted(set(stations) - set(sites["id"]))
    if missing:
        raise ValueError(f"{sites_csv}: the site table lacks site(s) {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} of the station records in {insitu} (data.sites)")
    for role, region in (("source", cfg.source_region), ("target", cfg.target_region)):
        if region not in set(sites["region"]):
            raise ValueError(f"{sites_csv}: no site of the {role} region {region} (column region holds "
                             f"{', '.join(sorted(set(sites['region'])))})")


def _read_matchups(path: Path) -> pd.DataFrame:
    """A matchup table (Parquet) checked against the schema (:func:`~sftl_dask.matchups.validate_matchups`)."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable Parquet matchup table ({str(exc).splitlines()[0]})") from None
    return validate_matchups(frame, source=str(path))


def _check_matchup_regions(cfg: TrainConfig, matchups: pd.DataFrame, path: Path) -> None:
    regions = set(matchups["region"])
    for role, region in (("source", cfg.source_region), ("target", cfg.target_region)):
        if region not in regions:
            raise ValueError(f"{path}: no matchup of the {role} region {region} (column region holds "
                             f"{', '.join(sorted(regions)) or 'nothing'})")


def _simulation_config(sim_cfg: dict[str, Any]) -> SimulationConfig:
    """The SimulationConfig of ``data.simulation`` (users' inputs alone unless profiles / spectra add to them)."""
    tables, dirs = tuple(sim_cfg["profile_tables"]), tuple(sim_cfg["spectra_dirs"])
    n_prof = sim_cfg["profiles"] if sim_cfg["profiles"] is not None else (0 if tables else 946)
    n_spec = sim_cfg["spectra"] if sim_cfg["spectra"] is not None else (0 if dirs else None)
    lst = sim_cfg["screen_lst_minus_tair_k"]
    return SimulationConfig(n_profiles=n_prof, n_spectra=n_spec, seed=sim_cfg["seed"], profile_tables=tables,
                            spectra_dirs=dirs, rt_table=sim_cfg["rt_table"],
                            screen_max_rh_percent=sim_cfg["screen_max_rh_percent"],
                            screen_lst_minus_tair_k=tuple(lst) if lst is not None else None)


def _simulation(cfg: TrainConfig, work: Path, client: Any) -> tuple[Path, str]:
    """The simulation table (the user's, or made under ``work`` from ``data.simulation``) and its cache key."""
    sim_cfg = cfg.data["simulation"]
    if sim_cfg["path"]:
        sim = Path(sim_cfg["path"])
        return sim, cache_key({"user_file": file_identity(sim)})
    for key in ("profile_tables", "spectra_dirs"):
        for i, path in enumerate(sim_cfg[key]):
            _need_path(cfg, f"simulation.{key}[{i}]", path)
    _need_path(cfg, "simulation.rt_table", sim_cfg["rt_table"])
    sim_config = _simulation_config(sim_cfg)
    sim = work / "sim.parquet"
    what = {k: v for k, v in sim_cfg.items() if k != "path"}
    files = {"profile_tables": [file_identity(Path(p)) for p in sim_cfg["profile_tables"]],
             "spectra_dirs": [_folder_identity(Path(d), "*.spectrum.txt") for d in sim_cfg["spectra_dirs"]],
             "rt_table": file_identity(Path(sim_cfg["rt_table"])) if sim_cfg["rt_table"] else None}
    generated_only = not any(files.values()) and what["spectra"] is None and not what["screen_max_rh_percent"] \
        and what["screen_lst_minus_tair_k"] is None
    # the key of a table of generated inputs only is the one it always had, so such tables made before are reused
    key = cache_key({"simulation": {"profiles": sim_config.n_profiles, "seed": what["seed"]}, "version": __version__}
                    if generated_only else {"simulation": what, "inputs": files, "version": __version__})
    if not reuse_or_remove(sim, key):
        write_simulation(sim, sim_config, client=client)
        stamp(sim, key)
    return sim, key


def _simulation_inputs(sim: Path) -> dict[str, Any] | None:
    """The provenance a simulation table carries (its metadata's ``inputs``); None for a table without it."""
    try:
        return read_simulation_metadata(sim).get("inputs")
    except ValueError:
        return None


def _folder_identity(path: Path, pattern: str = "*") -> list[dict[str, Any]]:
    """A user's folder as a cache input: its entries' names, sizes and modification times (one level)."""
    return [{"name": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
            for p in sorted(path.glob(pattern))]


def _cube_matchups(cube: Path, insitu: Path, sites: Path, work: Path) -> tuple[Path, str]:
    """The matchups of a user's cube (made under ``work``, reused while cube, records and sites are unchanged)."""
    log = cube / "ingest_log.jsonl"  # a cube changes with its ingest log; else its entries' times say it
    key = cache_key({"cube": file_identity(log) if log.is_file() else _folder_identity(cube),
                     "insitu": _folder_identity(insitu, "*.csv"), "sites": file_identity(sites),
                     "version": __version__})
    mu_path = work / "matchups.parquet"
    if not reuse_or_remove(mu_path, key):
        frame = build_matchups(cube, insitu, sites)
        with staged_file(mu_path, replace=True) as tmp:
            frame.to_parquet(tmp)
        stamp(mu_path, key)
    return mu_path, key


def _testbed_matchups(cfg: TrainConfig, work: Path, client: Any) -> tuple[Path, Path, str]:
    """The testbed (built under ``work`` when ``data.testbed.path`` is null), its cube and its matchups."""
    tb_cfg = cfg.data["testbed"]
    if tb_cfg["path"]:
        tb = Path(tb_cfg["path"])
        tb_key = cache_key({"user_folder": file_identity(tb / "testbed.json" if (tb / "testbed.json").exists()
                                                          else tb)})
    else:
        tb = work / "testbed"
        what = {k: tb_cfg[k] for k in ("scenes", "size", "seed", "layout")}
        tb_key = cache_key({"testbed": what, "version": __version__})
        if not reuse_or_remove(tb, tb_key):
            build_testbed(tb, **what, client=client)
            stamp(tb, tb_key)
    mu_path = work / "matchups.parquet"
    mu_key = cache_key({"testbed": tb_key, "version": __version__})
    if not reuse_or_remove(mu_path, mu_key):
        cube = work / "cube"
        if not reuse_or_remove(cube, mu_key):  # a cube of another testbed is made again; one of this testbed is resumed
            cube.mkdir()
            stamp(cube, mu_key)  # whose cube it is; ingest itself knows which scenes are complete
        done = ingest([tb / "archives"], cube, era5=sorted(str(p) for p in (tb / "era5").glob("*")),
                      ged=tb / "ged", dem=testbed_dem(tb), client=client)
        if done["failed"]:  # matchups of a partial cube would pass for complete: stop here, a re-run resumes
            f = done["failed"][0]
            raise ValueError(f"{tb / 'archives'}: {len(done['failed'])} scene(s) did not ingest, e.g. "
                             f"{f['scene_id']}: {f.get('reason', '')}")
        frame = build_matchups(cube, tb / "insitu", tb / "sites.csv")
        with staged_file(mu_path, replace=True) as tmp:
            frame.to_parquet(tmp)
        stamp(mu_path, mu_key)
    return tb, mu_path, mu_key


def testbed_dem(tb: Path) -> Path | None:
    """The DEM a testbed delivers (``dem/``, Copernicus GLO-30 tiles, the delivered layout), else None."""
    return tb / "dem" if (tb / "dem").is_dir() else None


def _with_pixel_truth(matchups: pd.DataFrame, truth_csv: Path) -> pd.DataFrame:
    """Add ``lst_pixel_truth`` (K): the testbed's true pixel LST at each (scene, site), NaN where unknown.

    Only a synthetic testbed knows it; it scores retrievals without the radiometer's own
    representativeness error (the floor every retrieval meets against the radiometers).
    """
    truth = pd.read_csv(truth_csv, usecols=["scene_id", "site", "lst_pixel_k"])
    truth = truth.drop_duplicates(["scene_id", "site"]).rename(columns={"lst_pixel_k": "lst_pixel_truth"})
    out = matchups.merge(truth, on=["scene_id", "site"], how="left", validate="many_to_one")
    out.index = matchups.index
    return out


def read_simulation_table(path: Path) -> dict[str, np.ndarray]:
    """The simulation table's columns training takes: the model inputs, ``lst`` (K) and ``profile_id``."""
    return read_simulation_columns(path, [*REQUIRED_INPUTS, "lst", "profile_id"])
