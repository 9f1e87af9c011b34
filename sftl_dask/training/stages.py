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
from typing import Any

import numpy as np
import pandas as pd

from sftl_dask._staging import staged_file
from sftl_dask.features import FEATURES, feature_matrix

__all__ = ["DIRECTIONS", "TrainConfig", "cache_key", "cached", "load_config", "metrics", "model_features",
           "prepare_data", "pretrain", "run_stages", "stamp"]

_MODELS = ("dnn", "trf", "cnn", "rf", "lgbm")
_STRATEGIES = ("full", "head", "gradual", "adapter", "lora")
_DIRECTIONS = {"SiHuHe": ("huailai", "heihe"), "SiHeHu": ("heihe", "huailai")}
#: Direction name -> (source region, target region).
DIRECTIONS = _DIRECTIONS


@dataclass(frozen=True)
class TrainConfig:
    """A parsed pipeline configuration (see ``pipelines/*.yaml``)."""

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


#: The keys of a pipeline YAML, per section, and what each holds (checked by :func:`load_config`). ``grid`` is
#: the experiment's (:func:`sftl_dask.training.experiment.load_grid` checks it); model and strategy ``params``
#: are free mappings, checked by the model that takes them.
_TOP_KEYS = ("name", "direction", "source_region", "target_region", "seed", "data", "model", "pretrain",
             "finetune", "transfer", "grid")
_SECTION_KEYS: dict[str, dict[str, str]] = {
    "data": {"simulation": "mapping", "testbed": "mapping"},
    "data.simulation": {"path": "path", "profiles": "count", "seed": "int"},
    "data.testbed": {"path": "path", "scenes": "count", "size": "count", "seed": "int"},
    "model": {"name": "str", "params": "mapping", "features": "list", "drop_features": "list"},
    "pretrain": {"epochs": "positive", "batch_size": "count", "lr": "positive", "holdout_fraction": "fraction",
                 "distributed": "bool", "schedule": "str"},
    "finetune": {"strategy": "str", "params": "mapping", "epochs": "positive", "lr": "positive", "split": "str",
                 "test_fraction": "fraction", "n_more": "count", "batch_size": "count"},
    "transfer": {"k": "counts", "repeats": "count", "strategy": "str", "epochs": "positive", "lr": "positive",
                 "n_more": "count"},
}
_KIND_TEXT = {"mapping": "a mapping", "path": "a path or null", "count": "a positive integer", "int": "an integer",
              "str": "a string", "list": "a list", "positive": "a positive number", "bool": "true or false",
              "fraction": "a number between 0 and 1 (exclusive)", "counts": "a list of positive integers"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def _fits(value: Any, kind: str) -> bool:
    """Whether a config value is of ``kind`` (see :data:`_KIND_TEXT`); null is allowed where it means "default"."""
    checks = {
        "mapping": lambda v: v is None or isinstance(v, dict),
        "path": lambda v: v is None or isinstance(v, str),
        "count": lambda v: _is_int(v) and v > 0,
        "int": _is_int,
        "str": lambda v: isinstance(v, str),
        "list": lambda v: v is None or isinstance(v, list),
        "positive": lambda v: _is_number(v) and v > 0,
        "bool": lambda v: isinstance(v, bool),
        "fraction": lambda v: _is_number(v) and 0 < v < 1,
        "counts": lambda v: isinstance(v, list) and all(_is_int(k) and k > 0 for k in v),
    }
    return bool(checks[kind](value))


def _check_keys(path: Path, where: str, section: dict[str, Any], known: tuple[str, ...] | dict[str, str]) -> None:
    """Refuse keys of a section that no stage reads (a typo would otherwise be silently ignored)."""
    unknown = [str(k) for k in section if k not in known]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"{path}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                         f"{where or 'the top level'} takes {', '.join(known)}")


def _section(path: Path, where: str, value: Any) -> dict[str, Any]:
    """A config section as a dict (null: empty), its keys and the types of its values checked."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {where} must be a mapping, got {type(value).__name__} {value!r}")
    spec = _SECTION_KEYS[where]
    _check_keys(path, where, value, spec)
    for key, kind in spec.items():
        if key in value and not _fits(value[key], kind):
            raise ValueError(f"{path}: {where}.{key} must be {_KIND_TEXT[kind]}, got {value[key]!r}")
    return dict(value)


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read and validate a pipeline YAML.

    Raises
    ------
    ValueError
        Naming the file and the key: missing or unknown keys, a value of the wrong type (a section that is
        not a mapping, a seed that is not an integer, ...), unknown model, strategy or direction, bad values.
    FileNotFoundError
        If the file does not exist.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    need = ("name", "direction", "model", "pretrain", "finetune")
    missing = [k for k in need if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    _check_keys(path, "", raw, _TOP_KEYS)
    for key in ("name", "direction", "source_region", "target_region"):
        if key in raw and not isinstance(raw[key], str):
            raise ValueError(f"{path}: {key} must be a string, got {raw[key]!r}")
    if "seed" in raw and not _is_int(raw["seed"]):
        raise ValueError(f"{path}: seed must be an integer, got {raw['seed']!r}")
    data = _section(path, "data", raw.get("data"))
    for key in ("simulation", "testbed"):
        data[key] = _section(path, f"data.{key}", data.get(key))
    direction = str(raw["direction"])
    if direction not in _DIRECTIONS:
        raise ValueError(f"{path}: direction {direction!r} unknown; choose from {', '.join(_DIRECTIONS)}")
    model = _section(path, "model", raw["model"])
    if str(model.get("name", "")).lower() not in _MODELS:
        raise ValueError(f"{path}: model.name {model.get('name')!r} unknown; choose from {', '.join(_MODELS)}")
    for key in ("features", "drop_features"):
        names = model.get(key)
        if names is not None and (not isinstance(names, list) or [f for f in names if f not in FEATURES]):
            raise ValueError(f"{path}: model.{key} must be a list of features from {', '.join(FEATURES)} "
                             f"(got {names!r})")
    ft = _section(path, "finetune", raw["finetune"])
    if str(ft.get("strategy", "")).lower() not in _STRATEGIES:
        raise ValueError(f"{path}: finetune.strategy {ft.get('strategy')!r} unknown; choose from "
                         f"{', '.join(_STRATEGIES)}")
    if ft.get("split", "chronological") not in ("chronological", "site"):
        raise ValueError(f"{path}: finetune.split must be 'chronological' or 'site'")
    tr = _section(path, "transfer", raw.get("transfer"))
    if "strategy" in tr and str(tr["strategy"]).lower() not in _STRATEGIES:
        raise ValueError(f"{path}: transfer.strategy {tr['strategy']!r} unknown; choose from {', '.join(_STRATEGIES)}")
    for key in ("epochs", "lr"):
        if key in tr and not (isinstance(tr[key], int | float) and tr[key] > 0):
            raise ValueError(f"{path}: transfer.{key} must be a positive number")
    src, tgt = _DIRECTIONS[direction]
    if raw.get("source_region", src) != src or raw.get("target_region", tgt) != tgt:
        raise ValueError(f"{path}: direction {direction} means source {src} and target {tgt}")
    from sftl_dask.models.trainer import SCHEDULES

    pt = _section(path, "pretrain", raw["pretrain"])
    if not isinstance(pt.get("distributed", False), bool):
        raise ValueError(f"{path}: pretrain.distributed must be true or false")
    if str(pt.get("schedule", "cosine")) not in SCHEDULES:
        raise ValueError(f"{path}: pretrain.schedule must be one of {', '.join(SCHEDULES)}")
    for sect, values in (("pretrain", pt), ("finetune", ft)):
        for key in ("epochs", "lr"):
            if key in values and not (isinstance(values[key], int | float) and values[key] > 0):
                raise ValueError(f"{path}: {sect}.{key} must be a positive number")
    return TrainConfig(
        name=str(raw["name"]), direction=direction, source_region=src, target_region=tgt,
        seed=int(raw.get("seed", 0)), data=data, model=model, pretrain=pt, finetune=ft,
        transfer=tr or {"k": [], "repeats": 1}, source=str(path),
    )


def metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """RMSE, bias, MAE (K), R^2 and n of predictions against the truth."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    e = pred - truth
    n = int(e.size)
    if n == 0:
        return {"n": 0, "rmse_k": float("nan"), "bias_k": float("nan"), "mae_k": float("nan"), "r2": float("nan")}
    ss = float(np.sum((truth - truth.mean()) ** 2))
    return {"n": n, "rmse_k": float(np.sqrt(np.mean(e**2))), "bias_k": float(e.mean()),
            "mae_k": float(np.mean(np.abs(e))), "r2": float(1.0 - np.sum(e**2) / ss) if ss > 0 else float("nan")}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def prepare_data(cfg: TrainConfig, work: Path, client: Any = None) -> dict[str, Any]:
    """Make (or reuse) the simulation table, the split-window fit and the matchups.

    Returns
    -------
    dict
        ``sim`` (path), ``sw`` (coefficients dict), ``matchups`` (DataFrame), ``testbed`` (path), ``key`` (the
        cache key of all of them, for products made from them).

    Raises
    ------
    ValueError
        If a data path of the configuration does not exist, or a file stands where ``work`` or one of its
        parent folders should be (named); nothing is written then.
    """
    from sftl_dask.ingest import ingest
    from sftl_dask.simulate import (
        SimulationConfig,
        fit_split_window_on_simulation,
        split_window_document,
        write_simulation,
    )
    from sftl_dask.testbed.build import build_testbed
    from sftl_dask.training.matchups import build_matchups, validate_matchups

    for folder in (*reversed(work.parents), work):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder}: exists and is not a folder (the work folder {work} goes there)")
    work.mkdir(parents=True, exist_ok=True)
    from sftl_dask import __version__

    sim_cfg = dict(cfg.data.get("simulation") or {})
    sim = Path(sim_cfg["path"]) if sim_cfg.get("path") else work / "sim.parquet"
    if sim_cfg.get("path"):
        if not sim.exists():
            raise ValueError(f"{cfg.source}: data.simulation.path {sim} does not exist")
        sim_key = cache_key({"user_file": _file_identity(sim)})
    else:
        sim_cfg = {"profiles": int(sim_cfg.get("profiles", 946)), "seed": int(sim_cfg.get("seed", 0))}
        sim_key = cache_key({"simulation": sim_cfg, "version": __version__})
        if not cached(sim, sim_key):
            write_simulation(sim, SimulationConfig(n_profiles=sim_cfg["profiles"], seed=sim_cfg["seed"]),
                             client=client)
            stamp(sim, sim_key)
    sw_path = work / "sw.json"
    table = _read_sim(sim)
    sw_key = cache_key({"simulation": sim_key, "seed": cfg.seed, "version": __version__})
    if not cached(sw_path, sw_key):
        doc = split_window_document(fit_split_window_on_simulation(table, seed=cfg.seed), table)
        with staged_file(sw_path, replace=True) as tmp:
            tmp.write_text(json.dumps(doc))
        stamp(sw_path, sw_key)
    tb_cfg = dict(cfg.data.get("testbed") or {})
    mu_path = work / "matchups.parquet"
    tb = Path(tb_cfg["path"]) if tb_cfg.get("path") else work / "testbed"
    if tb_cfg.get("path"):
        if not tb.exists():
            raise ValueError(f"{cfg.source}: data.testbed.path {tb} does not exist")
        tb_key = cache_key({"user_folder": _file_identity(tb / "testbed.json" if (tb / "testbed.json").exists()
                                                          else tb)})
    else:
        tb_cfg = {"scenes": int(tb_cfg.get("scenes", 20)), "size": int(tb_cfg.get("size", 640)),
                  "seed": int(tb_cfg.get("seed", 11))}
        tb_key = cache_key({"testbed": tb_cfg, "version": __version__})
        if not cached(tb, tb_key):
            build_testbed(tb, **tb_cfg, client=client)
            stamp(tb, tb_key)
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
    matchups = validate_matchups(pd.read_parquet(mu_path), source=str(mu_path))
    truth_csv = tb / "truth" / "site_overpass_truth.csv"
    if truth_csv.is_file():
        matchups = _with_pixel_truth(matchups, truth_csv)
    return {"sim": sim, "sw": json.loads(sw_path.read_text()), "matchups": matchups, "testbed": tb,
            "matchups_path": mu_path, "table": table, "key": cache_key({"sw": sw_key, "matchups": mu_key})}


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
    names = tuple(cfg.model.get("features") or FEATURES)
    drop = set(cfg.model.get("drop_features") or ())
    return tuple(f for f in FEATURES if f in names and f not in drop)


def _features(cfg: TrainConfig, frame: Mapping[str, Any]) -> np.ndarray:
    """The model's feature columns of ``frame`` (raw units, float32)."""
    names = model_features(cfg)
    x = feature_matrix(frame)
    return x if names == FEATURES else np.ascontiguousarray(x[:, [FEATURES.index(f) for f in names]])


def _new_model(cfg: TrainConfig, x: np.ndarray, y: np.ndarray) -> Any:
    """A fresh model of the configuration (torch models carry the normalisation of ``x`` and ``y``)."""
    from sftl_dask.models import build_model

    name = str(cfg.model["name"]).lower()
    params = dict(cfg.model.get("params") or {})
    if name in ("rf", "lgbm"):
        return build_model(name, x.shape[1], **params)
    return build_model(name, x.shape[1], x.mean(axis=0), x.std(axis=0) + 1e-6,
                       target_mean=float(y.mean()), target_std=float(y.std()), **params)


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    from sftl_dask.models.trainer import predict_torch

    return model.predict(x) if hasattr(model, "n_trees") else predict_torch(model, x)


def _sim_holdout(cfg: TrainConfig, table: Mapping[str, np.ndarray]) -> tuple[set[int], np.ndarray]:
    """The held-out simulated profiles (whole profiles, drawn with the configuration's seed) and their rows."""
    rng = np.random.default_rng(cfg.seed)
    prof = np.unique(table["profile_id"])
    held = set(rng.choice(prof, size=max(1, int(cfg.pretrain.get("holdout_fraction", 0.1) * prof.size)),
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
    split = cfg.finetune.get("split", "chronological")
    return fit_error_model(compute_features(held_rows, names=names), r_sim, compute_features(test, names=names),
                           r_obs, obs_source=f"{cfg.source_region} held-out matchups ({split} split)")


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
    table = data["table"]
    y_sim = np.asarray(table["lst"], dtype=np.float32)
    held, is_held = _sim_holdout(cfg, table)
    held_rows = {k: v[is_held] for k, v in table.items()}
    xte, yte = _features(cfg, held_rows), y_sim[is_held]
    n_train = int((~is_held).sum())
    name = str(cfg.model["name"]).lower()
    distributed = client is not None and (name == "lgbm" or bool(cfg.pretrain.get("distributed", False)))
    if distributed and model_features(cfg) != FEATURES:
        raise ValueError(f"{cfg.source}: distributed pre-training takes all features; drop pretrain.distributed "
                         "for a feature ablation")
    t0 = time.perf_counter()
    log(f"stage 1: pre-training {name} on {n_train:,} simulated samples")
    if distributed and name == "lgbm":  # the workers read the training rows; trees take no statistics
        model = _new_model(cfg, xte, yte)
        model.fit_dask(data["sim"], client=client, holdout_profiles=sorted(held))
    elif distributed and name in ("dnn", "trf", "cnn"):  # the ranks reduce the normalisation statistics
        from sftl_dask.training.distributed import pretrain_distributed

        model, _ = pretrain_distributed(
            name, data["sim"], client=client, model_params=dict(cfg.model.get("params") or {}),
            epochs=int(cfg.pretrain.get("epochs", 10)), batch_size=int(cfg.pretrain.get("batch_size", 8192)),
            lr=float(cfg.pretrain.get("lr", 2e-3)), holdout_profiles=sorted(held), seed=cfg.seed,
            schedule=str(cfg.pretrain.get("schedule", "cosine")))
    else:
        train_rows = {k: v[~is_held] for k, v in table.items()}
        xtr, ytr = _features(cfg, train_rows), y_sim[~is_held]
        model = _new_model(cfg, xtr, ytr)
        if hasattr(model, "n_trees"):
            model.fit(xtr, ytr, val=(xte, yte))
        else:
            fit_torch(model, xtr, ytr, epochs=int(cfg.pretrain.get("epochs", 10)),
                      batch_size=int(cfg.pretrain.get("batch_size", 8192)), lr=float(cfg.pretrain.get("lr", 2e-3)),
                      val=(xte, yte), seed=cfg.seed, threads=threads,
                      schedule=str(cfg.pretrain.get("schedule", "cosine")))
    stage1 = {"model": metrics(_predict(model, xte), yte),
              "split_window": metrics(_sw_predict(data["sw"], held_rows), yte),
              "seconds": round(time.perf_counter() - t0, 1), "n_train": n_train}
    log(f"  held-out simulation RMSE {stage1['model']['rmse_k']:.3f} K (split-window "
        f"{stage1['split_window']['rmse_k']:.3f} K)")
    return model, stage1


def run_stages(cfg: TrainConfig, data: Mapping[str, Any], out: Path | None, *, threads: int | None = None,
               log: Any = print, pretrained: tuple[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the three stages and the baselines; export the stage-2 artifact to ``out/model`` unless ``out`` is None.

    ``pretrained`` (a :func:`pretrain` result) skips stage 1, so one pre-training serves many strategies.
    """
    import torch

    from sftl_dask.models.artifact import export_artifact
    from sftl_dask.models.finetune import make_strategy
    from sftl_dask.models.trainer import fit_torch

    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    model, stage1 = pretrained if pretrained is not None else pretrain(cfg, data, threads=threads, log=log)
    # new weights below (adapters, LoRA factors, the direct baseline) come from this seed, not from whatever the
    # process drew before: a cell gives the same figures on any worker, first or after others, or rerun
    torch.manual_seed(cfg.seed)
    name = str(cfg.model["name"]).lower()
    tree = name in ("rf", "lgbm")
    predict = _predict

    mu = data["matchups"]
    ok = mu[mu["reason"] == "ok"]
    src = ok[ok["region"] == cfg.source_region]
    tgt = ok[ok["region"] == cfg.target_region]
    if len(src) < 10 or len(tgt) < 5:
        raise ValueError(f"{data.get('matchups_path', 'matchups')}: too few usable matchups "
                         f"(source {len(src)}, target {len(tgt)})")
    train, test = _split(src, cfg.finetune.get("split", "chronological"),
                         float(cfg.finetune.get("test_fraction", 0.3)), cfg.seed)

    def xy(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return _features(cfg, frame), frame["lst_insitu"].to_numpy(np.float32)

    x_ft, y_ft = xy(train)
    x_in, y_in = xy(test)
    x_tg, y_tg = xy(tgt)
    # trees are "fine-tuned" by continued boosting (LGBM) or added trees (RF) whatever the strategy name
    strat_name = ("continued_boosting" if name == "lgbm" else "added_trees") if tree else \
        str(cfg.finetune["strategy"]).lower()
    ft_kw = dict(epochs=int(cfg.finetune.get("epochs", 30)), batch_size=int(cfg.finetune.get("batch_size", 256)),
                 lr=float(cfg.finetune.get("lr", 5e-4)), seed=cfg.seed, threads=threads)

    def finetune(base: Any, x: np.ndarray, y: np.ndarray, few_shot: bool = False) -> tuple[Any, Any]:
        m = copy.deepcopy(base)
        if tree:
            m.finetune(x, y, n_more=int(cfg.transfer.get("n_more", cfg.finetune.get("n_more", 100)) if few_shot
                                        else cfg.finetune.get("n_more", 100)))
            return m, None
        name, kw = strat_name, ft_kw
        if few_shot:  # transfer.strategy / epochs / lr override the stage-2 settings for the k target samples
            name = str(cfg.transfer.get("strategy", strat_name)).lower()
            kw = {**ft_kw, **{k: type(ft_kw[k])(cfg.transfer[k]) for k in ("epochs", "lr") if k in cfg.transfer}}
        params = dict(cfg.finetune.get("params") or {}) if name == strat_name else {}
        strategy = make_strategy(name, **params)
        m = strategy.apply(m)
        fit_torch(m, x, y, strategy=strategy, **kw)
        return m, strategy

    t0 = time.perf_counter()
    log(f"stage 2: fine-tuning on {len(y_ft)} {cfg.source_region} matchups with {strat_name}")
    tuned, strategy = finetune(model, x_ft, y_ft)
    from sftl_dask.models.finetune import trainable_parameters

    stage2 = {"model": metrics(predict(tuned, x_in), y_in),
              "pretrained_only": metrics(predict(model, x_in), y_in),
              "split_window": metrics(_sw_predict(data["sw"], test), y_in),
              "n_train": len(y_ft), "n_test": len(y_in),
              "trainable_parameters": tuned.n_trees if tree else trainable_parameters(tuned),
              "seconds": round(time.perf_counter() - t0, 1)}
    log(f"  in-domain RMSE {stage2['model']['rmse_k']:.2f} K (pre-trained only "
        f"{stage2['pretrained_only']['rmse_k']:.2f}, split-window {stage2['split_window']['rmse_k']:.2f})")

    # direct-training baseline: the same architecture trained on the source matchups only
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        direct = _new_model(cfg, x_ft, y_ft)
    if tree:
        direct.fit(x_ft, y_ft)
    else:
        fit_torch(direct, x_ft, y_ft, epochs=max(60, ft_kw["epochs"]), batch_size=ft_kw["batch_size"],
                  lr=2e-3, seed=cfg.seed, threads=threads)

    log(f"stage 3: transfer to {cfg.target_region} ({len(y_tg)} matchups)")
    # each method's target predictions once: scored against the radiometers, the pixel truth, and written out
    p_sftl, p_sw, p_direct = predict(tuned, x_tg), _sw_predict(data["sw"], tgt), predict(direct, x_tg)
    stage3: dict[str, Any] = {
        "zero_shot": metrics(p_sftl, y_tg),
        "pretrained_only": metrics(predict(model, x_tg), y_tg),
        "split_window": metrics(p_sw, y_tg),
        "direct_training": metrics(p_direct, y_tg),
        "few_shot": [],
    }
    for k in [int(k) for k in cfg.transfer.get("k", [])]:
        if k >= len(y_tg) - 3:
            continue
        runs = []
        for r in range(int(cfg.transfer.get("repeats", 3))):
            idx = np.random.default_rng([cfg.seed, k, r]).permutation(len(y_tg))
            few, rest = idx[:k], idx[k:]
            adapted, _ = finetune(tuned, x_tg[few], y_tg[few], few_shot=True)
            runs.append(metrics(predict(adapted, x_tg[rest]), y_tg[rest])["rmse_k"])
        stage3["few_shot"].append({"k": k, "rmse_k_mean": float(np.mean(runs)), "rmse_k_sd": float(np.std(runs)),
                                   "repeats": len(runs)})
    if "lst_pixel_truth" in tgt and tgt["lst_pixel_truth"].notna().all():
        # testbed only: the same retrievals scored against the true pixel LST, and the radiometers' own error
        truth = tgt["lst_pixel_truth"].to_numpy(np.float64)
        stage3["against_pixel_truth"] = {
            "zero_shot": metrics(p_sftl, truth),
            "split_window": metrics(p_sw, truth),
            "direct_training": metrics(p_direct, truth),
            "radiometer": metrics(y_tg, truth),
        }
    log(f"  cross-site RMSE {stage3['zero_shot']['rmse_k']:.2f} K (split-window "
        f"{stage3['split_window']['rmse_k']:.2f}, direct training {stage3['direct_training']['rmse_k']:.2f})")

    # the per-pixel uncertainty the LST cube will carry, and its calibration on the target region
    from sftl_dask.features import compute_features, input_range
    from sftl_dask.models.error_model import apply_error_model, coverage

    error_model = _error_model(cfg, data["table"], model, tuned, test, x_in, y_in)
    sigma_tg = apply_error_model(error_model, compute_features(tgt, names=("wvc", "emis_mean", "sec_vza")))
    calibration = {"target_insitu": coverage(p_sftl - y_tg, sigma_tg),
                   "sigma_scene_k": error_model["sigma_scene_k"], "n_scene": error_model["n_scene"]}
    if "lst_pixel_truth" in tgt and tgt["lst_pixel_truth"].notna().all():
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
