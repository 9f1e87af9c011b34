"""The three SFTL stages for one configuration (``sftl train``).

1. **Pre-train** on the simulation table (held-out simulated profiles give the stage's RMSE,
   next to the split-window fitted on the same table).
2. **Strategic fine-tune** on the source region's matchups with one strategy (Full, Head,
   Gradual, Adapter, LoRA), split chronologically (or by site) so no test scene leaks in.
3. **Transfer** to the target region: zero-shot cross-site evaluation, and few-shot adaptation
   with k target samples for a learning curve in k.

The split-window and a model trained directly on the source matchups are evaluated on the same
rows. The stage-2 model is exported as the artifact (DESIGN.md, "Model artifact").
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from sftl_dask.features import FEATURES, feature_matrix
from sftl_dask.metrics import metrics
from sftl_dask.staging import staged_file
from sftl_dask.training.config import DIRECTIONS, PipelineConfig, load_pipeline

__all__ = ["DIRECTIONS", "TrainConfig", "cache_key", "cached", "load_config", "metrics", "model_features",
           "prepare_data", "pretrain", "run_stages", "stamp"]


@dataclass(frozen=True)
class TrainConfig:
    """A checked pipeline configuration (:class:`~sftl_dask.training.config.PipelineConfig`), sections as dicts
    with every default filled in (:mod:`sftl_dask.training.config` holds the defaults, once)."""

    name: str
    direction: str
    source_region: str
    target_region: str
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    transfer: dict[str, Any]
    source: str = field(default="config")
    direct: dict[str, Any] = field(default_factory=lambda: {"folds": 3, "search": {}})

    @classmethod
    def from_pipeline(cls, p: PipelineConfig, source: str) -> TrainConfig:
        """The configuration of a checked pipeline read from ``source`` (its path)."""
        d = p.model_dump()
        return cls(name=p.name, direction=p.direction, source_region=str(p.source_region),
                   target_region=str(p.target_region), seed=p.seed, data=d["data"], model=d["model"],
                   pretrain=d["pretrain"], finetune=d["finetune"], transfer=d["transfer"], source=source,
                   direct=d["direct"])


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read and check a pipeline YAML (:func:`~sftl_dask.training.config.load_pipeline`).

    Raises
    ------
    ConfigError
        A ``ValueError`` naming the file and the key path: unknown or missing keys, values of the wrong type,
        unknown model, strategy, direction or feature, no or several data sources.
    FileNotFoundError
        If the file does not exist.
    """
    return TrainConfig.from_pipeline(load_pipeline(path), str(path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def prepare_data(cfg: TrainConfig, work: Path, client: Any = None) -> dict[str, Any]:
    """Make (or reuse) the simulation table, the split-window fit and the matchups of ``cfg.data``.

    The matchups come from the configuration's one data source: a scene cube with station records and a
    site table (built here, as ``sftl matchups`` does), a matchup table, or the testbed (built under
    ``work`` only when ``data.testbed`` asks for it). The source and target regions' rows are told apart
    by the site table's ``region`` column. A pixel-truth table is joined only where one is named
    (``data.truth``) or the testbed brings its own.

    Returns
    -------
    dict
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
    from sftl_dask.simulate import fit_split_window_on_simulation, split_window_document

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
    from sftl_dask.version import __version__

    if d["matchups"] is not None:  # a user's table: checked before the simulation is made
        mu_path = Path(d["matchups"])
        mu_key = cache_key({"user_file": _file_identity(mu_path)})
        _check_matchup_regions(cfg, _read_matchups(mu_path), mu_path)
    work.mkdir(parents=True, exist_ok=True)
    sim, sim_key = _simulation(cfg, work, client)
    sw_path = work / "sw.json"
    table = _read_sim(sim)
    sw_key = cache_key({"simulation": sim_key, "seed": cfg.seed, "version": __version__})
    if not cached(sw_path, sw_key):
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
            "matchups_path": mu_path, "table": table, "key": cache_key({"sw": sw_key, "matchups": mu_key})}


def _need_path(cfg: TrainConfig, key: str, path: str | None) -> None:
    """Refuse a ``data.<key>`` path that does not exist (null: not used)."""
    if path is not None and not Path(path).exists():
        raise ValueError(f"{cfg.source}: data.{key}: {path} does not exist")


def _check_sites(cfg: TrainConfig, sites_csv: Path, insitu: Path) -> None:
    """The site table must hold every station of the records, and both regions of the direction."""
    from sftl_dask.io.insitu import read_sites

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
    from sftl_dask.matchups import validate_matchups

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


def _simulation(cfg: TrainConfig, work: Path, client: Any) -> tuple[Path, str]:
    """The simulation table (the user's, or made under ``work``) and its cache key."""
    from sftl_dask.simulate import SimulationConfig, write_simulation
    from sftl_dask.version import __version__

    sim_cfg = cfg.data["simulation"]
    if sim_cfg["path"]:
        sim = Path(sim_cfg["path"])
        return sim, cache_key({"user_file": _file_identity(sim)})
    sim = work / "sim.parquet"
    what = {"profiles": sim_cfg["profiles"], "seed": sim_cfg["seed"]}
    key = cache_key({"simulation": what, "version": __version__})
    if not cached(sim, key):
        write_simulation(sim, SimulationConfig(n_profiles=what["profiles"], seed=what["seed"]), client=client)
        stamp(sim, key)
    return sim, key


def _folder_identity(path: Path, pattern: str = "*") -> list[dict[str, Any]]:
    """A user's folder as a cache input: its entries' names, sizes and modification times (one level)."""
    return [{"name": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
            for p in sorted(path.glob(pattern))]


def _cube_matchups(cube: Path, insitu: Path, sites: Path, work: Path) -> tuple[Path, str]:
    """The matchups of a user's cube (made under ``work``, reused while cube, records and sites are unchanged)."""
    from sftl_dask.matchups import build_matchups
    from sftl_dask.version import __version__

    log = cube / "ingest_log.jsonl"  # a cube changes with its ingest log; else its entries' times say it
    key = cache_key({"cube": _file_identity(log) if log.is_file() else _folder_identity(cube),
                     "insitu": _folder_identity(insitu, "*.csv"), "sites": _file_identity(sites),
                     "version": __version__})
    mu_path = work / "matchups.parquet"
    if not cached(mu_path, key):
        frame = build_matchups(cube, insitu, sites)
        with staged_file(mu_path, replace=True) as tmp:
            frame.to_parquet(tmp)
        stamp(mu_path, key)
    return mu_path, key


def _testbed_matchups(cfg: TrainConfig, work: Path, client: Any) -> tuple[Path, Path, str]:
    """The testbed (built under ``work`` when ``data.testbed.path`` is null), its cube and its matchups."""
    from sftl_dask.ingest import ingest
    from sftl_dask.matchups import build_matchups
    from sftl_dask.testbed.build import build_testbed
    from sftl_dask.version import __version__

    tb_cfg = cfg.data["testbed"]
    if tb_cfg["path"]:
        tb = Path(tb_cfg["path"])
        tb_key = cache_key({"user_folder": _file_identity(tb / "testbed.json" if (tb / "testbed.json").exists()
                                                          else tb)})
    else:
        tb = work / "testbed"
        what = {k: tb_cfg[k] for k in ("scenes", "size", "seed")}
        tb_key = cache_key({"testbed": what, "version": __version__})
        if not cached(tb, tb_key):
            build_testbed(tb, **what, client=client)
            stamp(tb, tb_key)
    mu_path = work / "matchups.parquet"
    mu_key = cache_key({"testbed": tb_key, "version": __version__})
    if not cached(mu_path, mu_key):
        cube = work / "cube"
        if not cached(cube, mu_key):  # a cube of another testbed is made again; one of this testbed is resumed
            cube.mkdir()
            stamp(cube, mu_key)  # whose cube it is; ingest itself knows which scenes are complete
        done = ingest([tb / "archives"], cube, era5=sorted(str(p) for p in (tb / "era5").glob("*")),
                      ged=tb / "ged", client=client)
        if done["failed"]:  # matchups of a partial cube would pass for complete: stop here, a re-run resumes
            f = done["failed"][0]
            raise ValueError(f"{tb / 'archives'}: {len(done['failed'])} scene(s) did not ingest, e.g. "
                             f"{f['scene_id']}: {f.get('reason', '')}")
        frame = build_matchups(cube, tb / "insitu", tb / "sites.csv")
        with staged_file(mu_path, replace=True) as tmp:
            frame.to_parquet(tmp)
        stamp(mu_path, mu_key)
    return tb, mu_path, mu_key


def cache_key(what: Mapping[str, Any]) -> str:
    """The key of a cached product: sha256 of what made it (configuration, inputs' keys, package version)."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _key_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.key")


def cached(path: Path, key: str) -> bool:
    """Whether ``path`` was made from ``key`` (its key file says so); if not, whatever stands there is removed.

    The key file is written only once the product is complete (:func:`stamp`), so a product an interrupted
    run left half-made, or one made by another configuration or version, is made again, never reused.
    """
    kf = _key_file(path)
    if path.exists() and kf.is_file() and kf.read_text().strip() == key:
        return True
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    kf.unlink(missing_ok=True)
    return False


def stamp(path: Path, key: str) -> None:
    """Record that ``path`` is complete and was made from ``key`` (atomically)."""
    with staged_file(_key_file(path), replace=True) as tmp:
        tmp.write_text(key + "\n")


def _file_identity(path: Path) -> dict[str, Any]:
    """A user's input file as a cache input: its path, size and modification time (not read whole)."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


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


def _read_sim(path: Path) -> dict[str, np.ndarray]:
    from sftl_dask.features import REQUIRED_INPUTS
    from sftl_dask.simulate import read_simulation_columns

    return read_simulation_columns(path, [*REQUIRED_INPUTS, "lst", "profile_id"])


def _sw_predict(sw: Mapping[str, Any], frame: Mapping[str, Any]) -> np.ndarray:
    from sftl_dask.physics.splitwindow import SplitWindowCoefficients, apply_split_window

    coeffs = SplitWindowCoefficients.from_dict(dict(sw))
    return apply_split_window(coeffs, np.asarray(frame["bt_10_80"]), np.asarray(frame["bt_11_95"]),
                              np.asarray(frame["emis_10_80"]), np.asarray(frame["emis_11_95"]),
                              np.asarray(frame["wvc"]), np.asarray(frame["vza"]))


def _split(frame: pd.DataFrame, how: str, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chronological (last scenes held out) or site-held-out split; no scene or site is on both sides."""
    if how == "site":
        sites = np.array(sorted(frame["site"].unique()))
        rng = np.random.default_rng(seed)
        n_test = max(1, round(test_fraction * sites.size))
        test_sites = set(rng.choice(sites, size=n_test, replace=False))
        is_test = frame["site"].isin(test_sites)
    else:
        times = np.sort(frame["time_utc"].unique())
        cut = times[int(np.floor((1.0 - test_fraction) * times.size))]
        is_test = frame["time_utc"] >= cut
    return frame[~is_test], frame[is_test]


def model_features(cfg: TrainConfig) -> tuple[str, ...]:
    """The features the configuration's model takes, in :data:`~sftl_dask.features.FEATURES` order.

    ``model.features`` lists them (default: all); ``model.drop_features`` removes some (the ablation).
    """
    names = tuple(cfg.model["features"] or FEATURES)
    drop = set(cfg.model["drop_features"] or ())
    return tuple(f for f in FEATURES if f in names and f not in drop)


def _features(cfg: TrainConfig, frame: Mapping[str, Any]) -> np.ndarray:
    """The model's feature columns of ``frame`` (raw units, float32)."""
    names = model_features(cfg)
    x = feature_matrix(frame)
    return x if names == FEATURES else np.ascontiguousarray(x[:, [FEATURES.index(f) for f in names]])


def _is_tree(cfg: TrainConfig) -> bool:
    from sftl_dask.models import TREE_MODELS

    return str(cfg.model["name"]) in TREE_MODELS


def _new_model(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, params: Mapping[str, Any] | None = None) -> Any:
    """A fresh model of the configuration (torch models carry the normalisation of ``x`` and ``y``);
    ``params`` override the configuration's model settings."""
    from sftl_dask.models import build_model

    name = str(cfg.model["name"])
    kw = {**cfg.model["params"], **(params or {})}
    if _is_tree(cfg):
        return build_model(name, x.shape[1], **kw)
    return build_model(name, x.shape[1], x.mean(axis=0), x.std(axis=0) + 1e-6,
                       target_mean=float(y.mean()), target_std=float(y.std()), **kw)


class Regressor(Protocol):
    """What training needs of a non-torch model (trees, a few-shot offset): predictions in K."""

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def _predict(model: Regressor | Any, x: np.ndarray) -> np.ndarray:
    """LST (K) of any model: a torch module through :func:`~sftl_dask.models.trainer.predict_torch`, else
    its ``predict``."""
    from torch import nn

    from sftl_dask.models.trainer import predict_torch

    return predict_torch(model, x) if isinstance(model, nn.Module) else model.predict(x)


def _sim_holdout(cfg: TrainConfig, table: Mapping[str, np.ndarray]) -> tuple[set[int], np.ndarray]:
    """The held-out simulated profiles (whole profiles, drawn with the configuration's seed) and their rows."""
    rng = np.random.default_rng(cfg.seed)
    prof = np.unique(table["profile_id"])
    held = set(rng.choice(prof, size=max(1, int(cfg.pretrain["holdout_fraction"] * prof.size)),
                          replace=False).tolist())
    return held, np.isin(table["profile_id"], list(held))


def _error_model(cfg: TrainConfig, table: Mapping[str, np.ndarray], pretrained: Any, tuned: Any, test: pd.DataFrame,
                 x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """The exported model's per-pixel error model (:mod:`sftl_dask.models.error_model`).

    Simulated part: the pre-trained model's residuals on the held-out simulated profiles, by bin (how
    hard the inversion is for that atmosphere, surface and angle; the fine-tuned model departs from
    the simulation on purpose, so its residuals there are not errors). Scene part: the fine-tuned
    model's residuals on the source region's held-out matchups (never used to fine-tune).
    """
    from sftl_dask.features import compute_features
    from sftl_dask.models.error_model import fit_error_model

    names = ("wvc", "emis_mean", "sec_vza")
    _, is_held = _sim_holdout(cfg, table)
    held_rows = {k: v[is_held] for k, v in table.items()}
    r_sim = _predict(pretrained, _features(cfg, held_rows)) - np.asarray(held_rows["lst"], dtype=np.float64)
    r_obs = _predict(tuned, x_test) - y_test
    return fit_error_model(compute_features(held_rows, names=names), r_sim, compute_features(test, names=names),
                           r_obs, obs_source=f"{cfg.source_region} held-out matchups ({cfg.finetune['split']} split)")


def pretrain(cfg: TrainConfig, data: Mapping[str, Any], *, threads: int | None = None, log: Any = print,
             client: Any = None) -> tuple[Any, dict[str, Any]]:
    """Stage 1: the model pre-trained on the simulation, and its held-out metrics next to the split-window's.

    With a Dask ``client``, LGBM trains with ``lightgbm.dask`` across the workers (the table is read on
    the workers), and torch models with ``pretrain.distributed: true`` train data-parallel with
    ``torch.distributed`` (:func:`sftl_dask.training.distributed.pretrain_distributed`). Held-out
    profiles are the same either way.
    """
    import torch

    from sftl_dask.models.trainer import fit_torch

    torch.manual_seed(cfg.seed)
    if threads:
        torch.set_num_threads(threads)
    pt = cfg.pretrain
    table = data["table"]
    y_sim = np.asarray(table["lst"], dtype=np.float32)
    held, is_held = _sim_holdout(cfg, table)
    held_rows = {k: v[is_held] for k, v in table.items()}
    xte, yte = _features(cfg, held_rows), y_sim[is_held]
    n_train = int((~is_held).sum())
    name = str(cfg.model["name"])
    distributed = client is not None and (name == "lgbm" or bool(pt["distributed"]))
    if distributed and model_features(cfg) != FEATURES:
        raise ValueError(f"{cfg.source}: distributed pre-training takes all features; drop pretrain.distributed "
                         "for a feature ablation")
    t0 = time.perf_counter()
    log(f"stage 1: pre-training {name} on {n_train:,} simulated samples")
    if distributed and name == "lgbm":  # the workers read the training rows; trees take no statistics
        model = _new_model(cfg, xte, yte)
        from sftl_dask.training.distributed import read_simulation_on_workers

        model.fit_dask(read_simulation_on_workers(data["sim"], client=client, holdout_profiles=sorted(held)),
                       client=client)
    elif distributed:  # torch: the ranks reduce the normalisation statistics
        from sftl_dask.training.distributed import pretrain_distributed

        model, _ = pretrain_distributed(
            name, data["sim"], client=client, model_params=dict(cfg.model["params"]), epochs=pt["epochs"],
            batch_size=pt["batch_size"], lr=pt["lr"], holdout_profiles=sorted(held), seed=cfg.seed,
            schedule=pt["schedule"])
    else:
        train_rows = {k: v[~is_held] for k, v in table.items()}
        xtr, ytr = _features(cfg, train_rows), y_sim[~is_held]
        model = _new_model(cfg, xtr, ytr)
        if _is_tree(cfg):
            model.fit(xtr, ytr, val=(xte, yte))
        else:
            fit_torch(model, xtr, ytr, epochs=pt["epochs"], batch_size=pt["batch_size"], lr=pt["lr"],
                      val=(xte, yte), seed=cfg.seed, threads=threads, schedule=pt["schedule"])
    stage1 = {"model": metrics(_predict(model, xte), yte),
              "split_window": metrics(_sw_predict(data["sw"], held_rows), yte),
              "seconds": round(time.perf_counter() - t0, 1), "n_train": n_train}
    log(f"  held-out simulation RMSE {stage1['model']['rmse_k']:.3f} K (split-window "
        f"{stage1['split_window']['rmse_k']:.3f} K)")
    return model, stage1


def _regions(cfg: TrainConfig, data: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The source region's fine-tuning and held-out rows, and the target region's rows (usable matchups)."""
    mu = data["matchups"]
    ok = mu[mu["reason"] == "ok"]
    src = ok[ok["region"] == cfg.source_region]
    tgt = ok[ok["region"] == cfg.target_region]
    if len(src) < 10 or len(tgt) < 5:
        raise ValueError(f"{data['matchups_path']}: too few usable matchups (source {cfg.source_region} "
                         f"{len(src)}, target {cfg.target_region} {len(tgt)}; need 10 and 5)")
    train, test = _split(src, cfg.finetune["split"], cfg.finetune["test_fraction"], cfg.seed)
    return train, test, tgt


def direct_baseline(cfg: TrainConfig, data: Mapping[str, Any], *, threads: int | None = None
                    ) -> tuple[Any, dict[str, Any]]:
    """The direct-training baseline: the configuration's model trained on the source fine-tuning rows only,
    its settings tuned by cross-validation over whole scenes (:func:`~sftl_dask.training.direct.tune_direct`;
    search space ``direct.search.<model>``, else :func:`~sftl_dask.training.direct.default_search`).

    Returns the refitted model and the tuning record (``search``, ``candidates``, ``chosen``, ``cv_rmse_k``).
    """
    import torch

    from sftl_dask.models.trainer import fit_torch
    from sftl_dask.training.direct import FIT_SETTINGS, default_search, tune_direct

    train, _, _ = _regions(cfg, data)
    x, y = _features(cfg, train), train["lst_insitu"].to_numpy(np.float32)
    tree = _is_tree(cfg)

    def fit(settings: Mapping[str, Any], xf: np.ndarray, yf: np.ndarray) -> Any:
        fit_kw = {k: v for k, v in settings.items() if k in FIT_SETTINGS and not tree}
        params = {k: v for k, v in settings.items() if k not in fit_kw}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            m = _new_model(cfg, xf, yf, params)
        if tree:
            m.fit(xf, yf)
        else:
            fit_torch(m, xf, yf, seed=cfg.seed, threads=threads, patience=None, **fit_kw)
        return m

    search = cfg.direct["search"].get(str(cfg.model["name"])) or default_search(str(cfg.model["name"]))
    return tune_direct(fit, _predict, x, y, train["scene_id"].to_numpy(), search=search,
                       n_folds=cfg.direct["folds"])


def _few_shot(cfg: TrainConfig, tuned: Any, x_tg: np.ndarray, y_tg: np.ndarray, p_zero: np.ndarray
              ) -> list[dict[str, Any]]:
    """Few-shot adaptation (:func:`~sftl_dask.models.fewshot.adapt_few_shot`) on k target samples per draw,
    scored on the other target rows next to the zero-shot model on the same rows."""
    from sftl_dask.models.fewshot import adapt_few_shot

    out = []
    for k in cfg.transfer["k"]:
        if k >= len(y_tg) - 3:  # too few rows left to score on
            continue
        draws: list[dict[str, Any]] = []
        for r in range(cfg.transfer["repeats"]):
            idx = np.random.default_rng([cfg.seed, k, r]).permutation(len(y_tg))
            few, rest = idx[:k], idx[k:]
            adapted, info = adapt_few_shot(tuned, _predict, x_tg[few], y_tg[few], method=cfg.transfer["method"])
            draws.append({"rmse_k": metrics(_predict(adapted, x_tg[rest]), y_tg[rest])["rmse_k"],
                          "zero_shot_rmse_k": metrics(p_zero[rest], y_tg[rest])["rmse_k"],
                          "update": info["update"], "penalty": info["penalty"]})
        runs = [d["rmse_k"] for d in draws]
        out.append({"k": k, "rmse_k_mean": float(np.mean(runs)), "rmse_k_sd": float(np.std(runs)),
                    "zero_shot_rmse_k_mean": float(np.mean([d["zero_shot_rmse_k"] for d in draws])),
                    "repeats": len(runs), "method": cfg.transfer["method"], "draws": draws})
    return out


def run_stages(cfg: TrainConfig, data: Mapping[str, Any], out: Path | None, *, threads: int | None = None,
               log: Any = print, pretrained: tuple[Any, dict[str, Any]] | None = None,
               direct: tuple[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the three stages and the baselines; export the stage-2 artifact to ``out/model`` unless ``out`` is None.

    The steps, in order: split the source region's matchups (fine-tuning rows, held-out rows) and take the
    target region's; stage 1 (``pretrained``, else :func:`pretrain`); the baselines (split-window from the
    simulation, the tuned direct model :func:`direct_baseline`, unless ``direct`` gives it); stage 2 (the
    strategy on the fine-tuning rows, scored on the held-out rows); stage 3 (zero-shot on the target, and
    few-shot :func:`_few_shot`); the error model; the artifact. ``pretrained`` and ``direct`` let one
    pre-training or baseline serve many strategies (the experiment grid).
    """
    import torch

    from sftl_dask.models.artifact import export_artifact
    from sftl_dask.models.finetune import make_strategy, trainable_parameters
    from sftl_dask.models.trainer import fit_torch

    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    train, test, tgt = _regions(cfg, data)
    model, stage1 = pretrained if pretrained is not None else pretrain(cfg, data, threads=threads, log=log)
    # new weights below (adapters, LoRA factors, the direct baseline) come from this seed, not from whatever the
    # process drew before: a cell gives the same figures on any worker, first or after others, or rerun
    torch.manual_seed(cfg.seed)
    name, ft, tree = str(cfg.model["name"]), cfg.finetune, _is_tree(cfg)

    def xy(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return _features(cfg, frame), frame["lst_insitu"].to_numpy(np.float32)

    x_ft, y_ft = xy(train)
    x_in, y_in = xy(test)
    x_tg, y_tg = xy(tgt)
    # trees are "fine-tuned" by continued boosting (LGBM) or added trees (RF) whatever the strategy name
    strat_name = ("continued_boosting" if name == "lgbm" else "added_trees") if tree else str(ft["strategy"])

    t0 = time.perf_counter()
    log(f"stage 2: fine-tuning on {len(y_ft)} {cfg.source_region} matchups with {strat_name}")
    tuned, strategy = copy.deepcopy(model), None
    if tree:
        tuned.finetune(x_ft, y_ft, n_more=ft["n_more"])
    else:
        strategy = make_strategy(strat_name, **ft["params"])
        tuned = strategy.apply(tuned)
        fit_torch(tuned, x_ft, y_ft, strategy=strategy, epochs=ft["epochs"], batch_size=ft["batch_size"],
                  lr=ft["lr"], seed=cfg.seed, threads=threads)
    stage2 = {"model": metrics(_predict(tuned, x_in), y_in),
              "pretrained_only": metrics(_predict(model, x_in), y_in),
              "split_window": metrics(_sw_predict(data["sw"], test), y_in),
              "n_train": len(y_ft), "n_test": len(y_in),
              "trainable_parameters": tuned.n_trees if tree else trainable_parameters(tuned),
              "seconds": round(time.perf_counter() - t0, 1)}
    log(f"  in-domain RMSE {stage2['model']['rmse_k']:.2f} K (pre-trained only "
        f"{stage2['pretrained_only']['rmse_k']:.2f}, split-window {stage2['split_window']['rmse_k']:.2f})")

    if direct is None:
        t0 = time.perf_counter()
        log(f"direct baseline: {name} on the {cfg.source_region} matchups only, settings by cross-validation")
        direct = direct_baseline(cfg, data, threads=threads)
        direct[1]["seconds"] = round(time.perf_counter() - t0, 1)
    direct_model, direct_info = direct
    log(f"  chosen {direct_info['chosen']} (cross-validated RMSE {direct_info['cv_rmse_k']:.2f} K)")

    log(f"stage 3: transfer to {cfg.target_region} ({len(y_tg)} matchups)")
    # each method's target predictions once: scored against the radiometers, the pixel truth, and written out
    p_sftl, p_sw, p_direct = _predict(tuned, x_tg), _sw_predict(data["sw"], tgt), _predict(direct_model, x_tg)
    stage3: dict[str, Any] = {
        "zero_shot": metrics(p_sftl, y_tg),
        "pretrained_only": metrics(_predict(model, x_tg), y_tg),
        "split_window": metrics(p_sw, y_tg),
        "direct_training": metrics(p_direct, y_tg),
        "direct_tuning": direct_info,
        "few_shot": _few_shot(cfg, tuned, x_tg, y_tg, p_sftl),
    }
    has_truth = "lst_pixel_truth" in tgt and tgt["lst_pixel_truth"].notna().all()
    if has_truth:
        # a named truth (the testbed's): the same retrievals scored against the true pixel LST, and the
        # radiometers' own error
        truth = tgt["lst_pixel_truth"].to_numpy(np.float64)
        stage3["against_pixel_truth"] = {
            "zero_shot": metrics(p_sftl, truth),
            "split_window": metrics(p_sw, truth),
            "direct_training": metrics(p_direct, truth),
            "radiometer": metrics(y_tg, truth),
        }
    log(f"  cross-site RMSE {stage3['zero_shot']['rmse_k']:.2f} K (split-window "
        f"{stage3['split_window']['rmse_k']:.2f}, tuned direct training {stage3['direct_training']['rmse_k']:.2f})")
    for f in stage3["few_shot"]:
        log(f"  few-shot k={f['k']}: {f['rmse_k_mean']:.2f} K over {f['repeats']} draws (zero-shot on the same rows "
            f"{f['zero_shot_rmse_k_mean']:.2f} K)")

    # the per-pixel uncertainty the LST cube will carry, and its calibration on the target region
    from sftl_dask.features import compute_features, input_range
    from sftl_dask.models.error_model import apply_error_model, coverage

    error_model = _error_model(cfg, data["table"], model, tuned, test, x_in, y_in)
    sigma_tg = apply_error_model(error_model, compute_features(tgt, names=("wvc", "emis_mean", "sec_vza")))
    calibration = {"target_insitu": coverage(p_sftl - y_tg, sigma_tg),
                   "sigma_scene_k": error_model["sigma_scene_k"], "n_scene": error_model["n_scene"]}
    if has_truth:
        calibration["target_pixel_truth"] = coverage(p_sftl - tgt["lst_pixel_truth"].to_numpy(np.float64), sigma_tg)
    stage3["uncertainty_calibration"] = calibration
    c = calibration["target_insitu"]
    log(f"  uncertainty on {cfg.target_region}: {c['within_1sigma']:.0%} of in situ residuals within 1 sigma, "
        f"{c['within_2sigma']:.0%} within 2 sigma (rms sigma {c['rms_sigma_k']:.2f} K)")

    predictions = pd.DataFrame({
        "site": tgt["site"].to_numpy(), "time_utc": tgt["time_utc"].to_numpy(), "lst_insitu": y_tg,
        "lst_sftl": p_sftl, "lst_split_window": p_sw.astype(np.float32), "lst_direct": p_direct,
        "wvc": tgt["wvc"].to_numpy(np.float32),
        "lst_pixel_truth": tgt["lst_pixel_truth"].to_numpy(np.float32) if "lst_pixel_truth" in tgt
        else np.full(len(tgt), np.nan, np.float32)})
    results = {"config": cfg.name, "direction": cfg.direction, "model": name, "strategy": strat_name,
               "features": list(model_features(cfg)),
               "stage1_pretrain": stage1, "stage2_finetune": stage2, "stage3_transfer": stage3,
               "cross_site_predictions": predictions,
               "seconds": round(time.perf_counter() - t_start, 1)}
    card = {
        "name": f"{cfg.name}-{name}-{strat_name}",
        "model": name, "strategy": strat_name, "direction": cfg.direction, "features": list(model_features(cfg)),
        "source_region": cfg.source_region, "target_region": cfg.target_region,
        "stages": ["pretrain: simulation", f"finetune: {cfg.source_region} matchups ({strat_name})"],
        "training_tables": {"simulation": {"path": str(data["sim"]), "sha256": _sha256(Path(data["sim"]))},
                            "matchups": {"path": str(data["matchups_path"]),
                                         "sha256": _sha256(Path(data["matchups_path"]))}},
        "metrics": {"stage1_holdout_sim": stage1["model"], "stage2_in_domain": stage2["model"],
                    "stage3_cross_site": stage3["zero_shot"], "uncertainty_calibration": calibration},
        "config": cfg.source,
        "uncertainty": error_model,
        "pretraining_range": input_range(data["table"]),
    }
    if out is not None:
        export_artifact(getattr(strategy, "export_model", lambda m: m)(tuned), out / "model", card)
    return results
