"""The archive pipeline (``sftl archive``): ingest -> retrieve -> validate -> monthly composites, resumable.

An operator keeping a growing multi-year archive re-runs the same configuration whenever products arrive:

* **ingest** appends the new scenes to the fixed tiles of the scene cube and skips those already in
  (:func:`sftl_dask.ingest.ingest`);
* **retrieve** fills only the LST time steps that are missing (:func:`sftl_dask.retrieve.retrieve`);
* **validate** and **composites** are keyed by the LST they read (the model's hash and each tile's complete
  steps): unchanged, they are reused; changed, they are rebuilt whole.

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

__all__ = ["ArchiveConfigError", "load_archive_config", "run_archive"]

_DATA_KEYS = {"testbed", "archives", "era5", "ged", "insitu", "sites"}
_TESTBED_KEYS = {"scenes", "size", "seed", "shifted", "max_shift"}
_TOP_KEYS = {"name", "data", "tiles", "model", "steps"}
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
    try:
        cfg = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ArchiveConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ArchiveConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ArchiveConfigError(f"{path}: expected a mapping at the top")

    def bad(key: str, what: str) -> ArchiveConfigError:
        return ArchiveConfigError(f"{path}: {key}: {what}")

    for k in cfg:
        if k not in _TOP_KEYS:
            raise bad(k, f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    data = cfg.get("data")
    if not isinstance(data, dict):
        raise bad("data", "a mapping is required")
    for k in data:
        if k not in _DATA_KEYS:
            raise bad(f"data.{k}", f"unknown key (known: {', '.join(sorted(_DATA_KEYS))})")
    base = path.parent
    out: dict[str, Any] = {"name": str(cfg.get("name", path.stem)), "source": str(path)}
    if data.get("testbed") is not None:
        tb = data["testbed"]
        if not isinstance(tb, dict):
            raise bad("data.testbed", "a mapping is required")
        for k, v in tb.items():
            if k not in _TESTBED_KEYS:
                raise bad(f"data.testbed.{k}", f"unknown key (known: {', '.join(sorted(_TESTBED_KEYS))})")
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise bad(f"data.testbed.{k}", f"a number is required, got {v!r}")
        out["testbed"] = dict(tb)
        others = sorted(_DATA_KEYS - {"testbed"} & set(data))
        if others:
            raise bad(f"data.{others[0]}", "give either data.testbed or the input paths, not both")
    else:
        missing = sorted((_DATA_KEYS - {"testbed"}) - set(data))
        if missing:
            raise bad(f"data.{missing[0]}", "missing (or give data.testbed)")
        for k in ("ged", "insitu", "sites"):
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
    tiles = cfg.get("tiles") or {}
    if not isinstance(tiles, dict) or set(tiles) - {"size"}:
        raise bad("tiles", "a mapping with only 'size' (px) is expected")
    size = tiles.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 16):
        raise bad("tiles.size", f"an integer >= 16 (px) is required, got {size!r}")
    out["tile_px"] = size
    model = cfg.get("model") or {}
    if not isinstance(model, dict) or set(model) - {"path"}:
        raise bad("model", "a mapping with only 'path' is expected")
    if model.get("path") is not None:
        p = base / str(model["path"])
        if not p.exists():
            raise bad("model.path", f"{p} does not exist")
        out["model"] = p
    else:
        out["model"] = None
    steps = cfg.get("steps", list(STEPS))
    if not isinstance(steps, list) or any(s not in STEPS for s in steps):
        raise bad("steps", f"a list drawn from {', '.join(STEPS)} is expected, got {steps!r}")
    out["steps"] = [s for s in STEPS if s in steps]
    return out


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
    from sftl_dask import __version__
    from sftl_dask.pipelines.demo import _lst_steps, write_monthly_composites
    from sftl_dask.staging import cache_key, reuse_or_remove, staged_dir, staged_file, stamp

    cfg = load_archive_config(config)
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    bar = progress or (lambda step: None)
    steps: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []

    def done(step: str, t0: float, reused: bool, **counts: Any) -> None:
        steps.append({"step": step, "seconds": round(time.perf_counter() - t0, 1), "reused": reused, **counts})
        log(f"  {step}: {'reused' if reused else 'done'} in {steps[-1]['seconds']:.1f} s"
            + "".join(f", {k} {v}" for k, v in counts.items()))

    t0 = time.perf_counter()
    inputs = _inputs(cfg, work, client, bar("testbed"))
    done("inputs", t0, inputs.pop("reused"))
    t0 = time.perf_counter()
    model, reused = _model(cfg, work, client)
    done("model", t0, reused, model=str(model))

    cube, lst = out / "cube", out / "lst"
    if "ingest" in cfg["steps"]:
        from sftl_dask.ingest import ingest

        t0 = time.perf_counter()
        s = ingest(inputs["archives"], cube, era5=inputs["era5"], ged=inputs["ged"], client=client,
                   progress=bar("ingest"), tile_px=cfg["tile_px"])
        failed += [{"step": "ingest", "item": f["scene_id"], "reason": f.get("reason", "")} for f in s["failed"]]
        done("ingest", t0, s["ingested"] == 0, ingested=s["ingested"], skipped=s["skipped"],
             failed=len(s["failed"]), tiles=len(s["stores"]))
    if "retrieve" in cfg["steps"]:
        from sftl_dask.retrieve import retrieve

        t0 = time.perf_counter()
        s = retrieve(cube, model, lst, client=client, progress=bar("retrieve"), command=f"sftl archive {config}")
        failed += [{"step": "retrieve", "item": f"{Path(f['store']).name} {f['scene_id']}", "reason": f["reason"]}
                   for f in s["failed"]]
        done("retrieve", t0, s["retrieved"] == 0, steps=s["retrieved"], pixels=s["pixels"],
             failed=len(s["failed"]))
    from sftl_dask.models.retriever import model_digest

    lst_key = cache_key({"model": model_digest(model), "steps": _lst_steps(lst) if lst.exists() else {},
                         "version": __version__})
    if "validate" in cfg["steps"]:
        from sftl_dask.validate import validate

        t0 = time.perf_counter()
        val = out / "validation"
        reused = reuse_or_remove(val, lst_key)
        if not reused:
            validate(lst, inputs["insitu"], inputs["sites"], val, client=client, overwrite=True,
                     progress=bar("validate"))
            stamp(val, lst_key)
        done("validate", t0, reused)
    if "composites" in cfg["steps"]:
        t0 = time.perf_counter()
        comp = out / "composites"
        reused = reuse_or_remove(comp, lst_key)
        if not reused:
            with staged_dir(comp) as tmp:
                write_monthly_composites(lst, tmp, {})
            stamp(comp, lst_key)
        done("composites", t0, reused)
    summary = {"config": cfg["source"], "version": __version__, "steps": steps, "failed": failed}
    with staged_file(out / "archive.json", replace=True) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _inputs(cfg: Mapping[str, Any], work: Path, client: Any, progress: Any) -> dict[str, Any]:
    """The pipeline's input paths: the configured ones, or those of the testbed (built once under ``work``)."""
    if "testbed" not in cfg:
        return {k: cfg[k] for k in ("archives", "era5", "ged", "insitu", "sites")} | {"reused": True}
    from sftl_dask.testbed.build import build_testbed

    tb = work / "testbed"
    reused = (tb / "testbed.json").is_file()
    if reused:
        made = json.loads((tb / "testbed.json").read_text())
        want = {"seed": cfg["testbed"].get("seed", 0), "scenes_per_region": cfg["testbed"].get("scenes", 20)}
        if any(made.get(k) != v for k, v in want.items()):
            raise ArchiveConfigError(f"{cfg['source']}: data.testbed differs from the testbed already under {tb} "
                                     "(remove it, or use another --out)")
    else:
        build_testbed(tb, client=client, progress=progress, overwrite=True, **cfg["testbed"])
    return {"archives": [tb / "archives"], "era5": sorted((tb / "era5").glob("*")), "ged": tb / "ged",
            "insitu": tb / "insitu", "sites": tb / "sites.csv", "reused": reused}


def _model(cfg: Mapping[str, Any], work: Path, client: Any) -> tuple[Path, bool]:
    """The model artifact: the configured one, else a split-window fitted on a simulation table (once)."""
    if cfg["model"] is not None:
        return Path(cfg["model"]), True
    from sftl_dask.simulate import (
        SW_COLUMNS,
        SimulationConfig,
        fit_split_window_on_simulation,
        read_simulation_columns,
        split_window_document,
        write_simulation,
    )
    from sftl_dask.staging import staged_file

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
