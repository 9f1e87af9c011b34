"""The archive pipeline (``sftl archive``): ingest -> retrieve -> validate -> monthly composites, resumable.

An operator keeping a growing multi-year archive re-runs the same configuration whenever products arrive:

* **ingest** appends the new scenes to the fixed tiles of the scene cube and skips those already in
  (:func:`sftl_dask.ingest.ingest`);
* **retrieve** fills only the LST time steps that are missing (:func:`sftl_dask.retrieve.retrieve`);
* **validate** is keyed by the LST it reads (the model's digest and each tile's complete steps): unchanged, it is
  reused; changed, it is rebuilt whole; **composites** are incremental per tile and month, and only with
  ``composites: {mosaics: true}`` also mosaicked per zone into a NetCDF of all months and a figure, remade when
  a month changed (the steps shared with the demo, :mod:`sftl_dask.pipelines.steps`).

So a run killed at any step resumes where it stopped, and a run with nothing new costs only the checks. The
inputs come from ``data`` (archives, ERA5, GED, radiometers, site table) or, for trying it out, from a testbed
the pipeline builds (``data.testbed``; ``pipelines/archive.yaml``: 160 scenes over 2021-2023 whose footprints
straddle tile edges and corners). The model is an artifact from ``sftl train`` or a split-window JSON from
``sftl fit-sw`` (``model.path``); with none, the split-window is fitted on a fresh simulation table.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sftl_dask.ingest import ingest
from sftl_dask.pipelines.data import testbed_dem
from sftl_dask.pipelines.steps import composites_step, lst_key, validate_step
from sftl_dask.retrieve import retrieve
from sftl_dask.simulate import (
    SW_COLUMNS,
    SimulationConfig,
    fit_split_window_on_simulation,
    read_simulation_columns,
    split_window_document,
    write_simulation,
)
from sftl_dask.staging import staged_file
from sftl_dask.testbed.build import DEFAULT_LAYOUT, LAYOUTS, build_testbed
from sftl_dask.version import __version__

__all__ = ["ArchiveConfigError", "load_archive_config", "run_archive"]

_DATA_KEYS = {"testbed", "archives", "era5", "ged", "insitu", "sites"}
#: Optional inputs beside the paths: a DEM for products in sensor geometry, a calibration table (``sftl ingest``).
_OPTIONAL_KEYS = {"dem", "calibration"}
_TESTBED_KEYS = {"scenes", "size", "seed", "shifted", "max_shift", "layout"}
_TOP_KEYS = {"name", "data", "tiles", "model", "steps", "composites"}
STEPS = ("ingest", "retrieve", "validate", "composites")


class ArchiveConfigError(ValueError):
    """A bad archive configuration (the message names the file and key)."""


def load_archive_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check an archive pipeline YAML; relative paths are taken from the file's folder.

    Raises
    ------
    ArchiveConfigError
        Unknown or missing keys, wrong types, or input paths that do not exist (named with the file).
    """
    path = Path(path)
    cfg = _read_yaml(path)
    bad = _Refusal(path)
    for k in cfg:
        if k not in _TOP_KEYS:
            raise bad(k, f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    out: dict[str, Any] = {"name": str(cfg.get("name", path.stem)), "source": str(path)}
    out |= _data_section(cfg.get("data"), path.parent, bad)
    out["tile_px"] = _tile_size(cfg.get("tiles") or {}, bad)
    out["model"] = _model_path(cfg.get("model") or {}, path.parent, bad)
    out["mosaics"] = _mosaics(cfg.get("composites") or {}, bad)
    steps = cfg.get("steps", list(STEPS))
    if not isinstance(steps, list) or any(s not in STEPS for s in steps):
        raise bad("steps", f"a list drawn from {', '.join(STEPS)} is expected, got {steps!r}")
    out["steps"] = [s for s in STEPS if s in steps]
    return out


class _Refusal:
    """Makes the error that refuses key ``key`` of the configuration at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, key: str, what: str) -> ArchiveConfigError:
        return ArchiveConfigError(f"{self.path}: {key}: {what}")


def _read_yaml(path: Path) -> dict[str, Any]:
    """The configuration's top-level mapping."""
    try:
        cfg = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ArchiveConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ArchiveConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ArchiveConfigError(f"{path}: expected a mapping at the top")
    return cfg


def _data_section(data: Any, base: Path, bad: _Refusal) -> dict[str, Any]:
    """``data``: a testbed to build (``testbed``), or the input paths, checked to exist."""
    if not isinstance(data, dict):
        raise bad("data", "a mapping is required")
    for k in data:
        if k not in _DATA_KEYS | _OPTIONAL_KEYS:
            raise bad(f"data.{k}", f"unknown key (known: {', '.join(sorted(_DATA_KEYS | _OPTIONAL_KEYS))})")
    out: dict[str, Any] = {}
    if data.get("testbed") is not None:
        tb = data["testbed"]
        if not isinstance(tb, dict):
            raise bad("data.testbed", "a mapping is required")
        for k, v in tb.items():
            if k not in _TESTBED_KEYS:
                raise bad(f"data.testbed.{k}", f"unknown key (known: {', '.join(sorted(_TESTBED_KEYS))})")
            if k == "layout":
                if v not in LAYOUTS:
                    raise bad("data.testbed.layout", f"one of {', '.join(LAYOUTS)} is required, got {v!r}")
            elif not isinstance(v, int | float) or isinstance(v, bool):
                raise bad(f"data.testbed.{k}", f"a number is required, got {v!r}")
        out["testbed"] = dict(tb)
        others = sorted((_DATA_KEYS | _OPTIONAL_KEYS) - {"testbed"} & set(data))
        if others:
            raise bad(f"data.{others[0]}", "give either data.testbed or the input paths, not both")
        return out
    missing = sorted((_DATA_KEYS - {"testbed"}) - set(data))
    if missing:
        raise bad(f"data.{missing[0]}", "missing (or give data.testbed)")
    for k in ("ged", "insitu", "sites", *sorted(_OPTIONAL_KEYS & set(data))):
        p = base / str(data[k])
        if not p.exists():
            raise bad(f"data.{k}", f"{p} does not exist")
        out[k] = p
    for k in ("archives", "era5"):
        items = data[k] if isinstance(data[k], list) else [data[k]]
        found = sorted({m for it in items for m in glob.glob(str(base / str(it)))})
        if not found:
            raise bad(f"data.{k}", f"no file matches {items}")
        out[k] = [Path(f) for f in found]
    return out


def _tile_size(tiles: Any, bad: _Refusal) -> int | None:
    """``tiles.size``: the tile edge of a new cube (px), or None for the default."""
    if not isinstance(tiles, dict) or set(tiles) - {"size"}:
        raise bad("tiles", "a mapping with only 'size' (px) is expected")
    size = tiles.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 16):
        raise bad("tiles.size", f"an integer >= 16 (px) is required, got {size!r}")
    return size


def _mosaics(composites: Any, bad: _Refusal) -> bool:
    """``composites.mosaics``: also write each zone's NetCDF mosaic of all months and its figure (default no)."""
    if not isinstance(composites, dict) or set(composites) - {"mosaics"}:
        raise bad("composites", "a mapping with only 'mosaics' (true or false) is expected")
    mosaics = composites.get("mosaics", False)
    if not isinstance(mosaics, bool):
        raise bad("composites.mosaics", f"true or false is required, got {mosaics!r}")
    return mosaics


def _model_path(model: Any, base: Path, bad: _Refusal) -> Path | None:
    """``model.path``: the model artifact or split-window JSON, checked to exist; None to fit a split-window."""
    if not isinstance(model, dict) or set(model) - {"path"}:
        raise bad("model", "a mapping with only 'path' is expected")
    if model.get("path") is None:
        return None
    p = base / str(model["path"])
    if not p.exists():
        raise bad("model.path", f"{p} does not exist")
    return p


def run_archive(config: str | os.PathLike[str], out: str | os.PathLike[str], *, client: Any,
                log: Callable[[str], None] = print,
                progress: Callable[[str], Callable[[int, int], None] | None] | None = None) -> dict[str, Any]:
    """Run (or resume) the archive pipeline of ``config`` into ``out``.

    Parameters
    ----------
    config : path
        An archive pipeline YAML (``pipelines/archive.yaml``).
    out : path
        ``work/`` (testbed, simulation, split-window), ``cube/`` (scene-cube tiles), ``lst/`` (LST tiles),
        ``validation/``, ``composites/`` and ``archive.json`` (this run's steps).
    client : distributed.Client
        Where every step runs.
    log : callable
        Progress lines.
    progress : callable, optional
        ``progress(step)`` returns a ``(done, total)`` callback for that step (a progress bar), or None.

    Returns
    -------
    dict
        Per step: seconds, whether it was reused, and its counts; ``failed`` lists what failed, each with its reason.

    Raises
    ------
    ArchiveConfigError
        A bad configuration.
    """
    cfg = load_archive_config(config)
    out = Path(out)
    (out / "work").mkdir(parents=True, exist_ok=True)
    run = _Run(log, progress or (lambda step: None))
    t0 = time.perf_counter()
    inputs = _inputs(cfg, out / "work", client, run.bar("testbed"))
    run.done("inputs", t0, inputs.pop("reused"))
    t0 = time.perf_counter()
    model, reused = _model(cfg, out / "work", client)
    run.done("model", t0, reused, model=str(model))

    cube, lst = out / "cube", out / "lst"
    if "ingest" in cfg["steps"]:
        _ingest(run, cfg, inputs, cube, client=client)
    if "retrieve" in cfg["steps"]:
        _retrieve(run, cube, model, lst, client=client, command=f"sftl archive {config}")
    key = lst_key({"model": model}, lst)
    if "validate" in cfg["steps"]:
        t0 = time.perf_counter()
        reused = validate_step(lst, inputs["insitu"], inputs["sites"], out / "validation", key, client=client,
                               progress=run.bar("validate"))
        run.done("validate", t0, reused)
    if "composites" in cfg["steps"]:
        t0 = time.perf_counter()
        reused, counts = composites_step(lst, out / "composites", key, {}, client=client,
                                         progress=run.bar("composites"), mosaics=cfg["mosaics"])
        run.done("composites", t0, reused, **counts)
    summary = {"config": cfg["source"], "version": __version__, "steps": run.steps, "failed": run.failed}
    with staged_file(out / "archive.json", replace=True) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, default=str))
    return summary


class _Run:
    """One run's record: each step's seconds, whether it was reused and its counts, and what failed."""

    def __init__(self, log: Callable[[str], None],
                 bar: Callable[[str], Callable[[int, int], None] | None]) -> None:
        self.log, self.bar = log, bar
        self.steps: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []

    def done(self, step: str, t0: float, reused: bool, **counts: Any) -> None:
        """Record ``step`` begun at ``t0`` (``time.perf_counter``) with its counts, and log it."""
        self.steps.append({"step": step, "seconds": round(time.perf_counter() - t0, 1), "reused": reused, **counts})
        self.log(f"  {step}: {'reused' if reused else 'done'} in {self.steps[-1]['seconds']:.1f} s"
                 + "".join(f", {k} {v}" for k, v in counts.items()))


def _ingest(run: _Run, cfg: Mapping[str, Any], inputs: Mapping[str, Any], cube: Path, *, client: Any) -> None:
    """The ingest step: new scenes onto the cube's tiles (those already in are skipped)."""
    t0 = time.perf_counter()
    s = ingest(inputs["archives"], cube, era5=inputs["era5"], ged=inputs["ged"], dem=inputs.get("dem"),
               calibration=inputs.get("calibration"), client=client, progress=run.bar("ingest"),
               tile_px=cfg["tile_px"])
    run.failed += [{"step": "ingest", "item": f["scene_id"], "reason": f.get("reason", "")} for f in s["failed"]]
    run.done("ingest", t0, s["ingested"] == 0, ingested=s["ingested"], skipped=s["skipped"],
             failed=len(s["failed"]), tiles=len(s["stores"]))


def _retrieve(run: _Run, cube: Path, model: Path, lst: Path, *, client: Any, command: str) -> None:
    """The retrieve step: the LST time steps that are missing."""
    t0 = time.perf_counter()
    s = retrieve(cube, model, lst, client=client, progress=run.bar("retrieve"), command=command)
    run.failed += [{"step": "retrieve", "item": f"{Path(f['store']).name} {f['scene_id']}", "reason": f["reason"]}
                   for f in s["failed"]]
    run.done("retrieve", t0, s["retrieved"] == 0, steps=s["retrieved"], pixels=s["pixels"],
             failed=len(s["failed"]))


def _inputs(cfg: Mapping[str, Any], work: Path, client: Any, progress: Any) -> dict[str, Any]:
    """The pipeline's input paths: the configured ones, or those of the testbed (built once under ``work``)."""
    if "testbed" not in cfg:
        return {k: cfg.get(k) for k in ("archives", "era5", "ged", "insitu", "sites", *_OPTIONAL_KEYS)} \
            | {"reused": True}
    tb = work / "testbed"
    reused = (tb / "testbed.json").is_file()
    if reused:
        made = json.loads((tb / "testbed.json").read_text())
        want = {"seed": cfg["testbed"].get("seed", 0), "scenes_per_region": cfg["testbed"].get("scenes", 20),
                "layout": cfg["testbed"].get("layout", DEFAULT_LAYOUT)}
        if any(made.get(k) != v for k, v in want.items()):
            raise ArchiveConfigError(f"{cfg['source']}: data.testbed differs from the testbed already under {tb} "
                                     "(remove it, or use another --out)")
    else:
        build_testbed(tb, client=client, progress=progress, overwrite=True, **cfg["testbed"])
    return {"archives": [tb / "archives"], "era5": sorted((tb / "era5").glob("*")), "ged": tb / "ged",
            "dem": testbed_dem(tb), "insitu": tb / "insitu", "sites": tb / "sites.csv", "reused": reused}


def _model(cfg: Mapping[str, Any], work: Path, client: Any) -> tuple[Path, bool]:
    """The model artifact: the configured one, else a split-window fitted on a simulation table (once)."""
    if cfg["model"] is not None:
        return Path(cfg["model"]), True
    sw = work / "split_window.json"
    if sw.is_file():
        return sw, True
    sim = work / "simulation.parquet"
    if not sim.exists():
        write_simulation(sim, SimulationConfig(), client=client, overwrite=True)
    data = read_simulation_columns(sim, SW_COLUMNS)
    doc = split_window_document(fit_split_window_on_simulation(data, seed=0), data)
    with staged_file(sw) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1))
    return sw, False
