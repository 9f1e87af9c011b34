"""The ``sftl`` command: thin glue over the library.

Every verb that works on Dask takes ``--scheduler ADDRESS`` (else ``DASK_SCHEDULER_ADDRESS``, else an
embedded LocalCluster sized by ``--workers``); ``inspect`` reads headers only and starts no cluster. Bad
input ends with exit code 2 and one line naming the file or value and what is wrong; outputs are written
under a temporary name and moved into place only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import json
import linecache
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sftl_dask import staging
from sftl_dask.progress import Progress
from sftl_dask.staging import StoreBusyError
from sftl_dask.version import __version__

# Each verb imports its implementation in its handler, not here: importing every verb's module costs 3.4-4.1 s
# against 1.7-1.9 s for this module alone (measured on 2 loaded cores), which `sftl --help`, a bad-input exit and
# every verb would pay for the others'.

__all__ = ["main"]

EXIT_BAD_INPUT = 2
#: The options that take an fsspec URL (``s3://bucket/prefix``) besides a local path, per verb; any other option
#: given a URL is refused (docs/cluster.md, "Object storage").
URL_OPTIONS = {"ingest": ("cube",), "retrieve": ("cube", "out"), "validate": ("lst",)}


class BadInput(Exception):
    """A user error: reported as one line, exit code 2."""


@contextlib.contextmanager
def _refusing(*errors: type[Exception]) -> Iterator[None]:
    """Turn the library's bad-input errors ``errors`` into :class:`BadInput` (one line, exit code 2)."""
    try:
        yield
    except errors as exc:
        raise BadInput(str(exc)) from None


@contextlib.contextmanager
def _client(args: argparse.Namespace, **kw: Any) -> Any:
    """The verb's Dask client (``--scheduler``, else embedded); an embedded cluster's worker logs go to the run's
    log file, and to the terminal too with ``--debug``; with ``--report``, Dask's performance report of the run
    is written there."""
    from sftl_dask.cluster import get_client

    with get_client(args.scheduler, n_workers=args.workers, worker_log=args.log, worker_log_stderr=args.debug,
                    **kw) as client:
        if not args.report:
            yield client
            return
        from distributed import performance_report

        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        with performance_report(filename=str(args.report)):
            yield client
        print(f"  performance report: {args.report}")


def _log_path(verb: str) -> Path | None:
    """This run's log file: ``$SFTL_LOG_DIR``, else ``$XDG_CACHE_HOME/sftl/logs`` (``~/.cache``); None if that
    folder cannot be made. The file itself appears only when something is logged."""
    base = os.environ.get("SFTL_LOG_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "sftl" / "logs"
    try:
        Path(base).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(base) / f"{verb}-{stamp}-{os.getpid()}.log"


def _note_logs(args: argparse.Namespace) -> None:
    if args.log is not None and Path(args.log).exists():
        print(f"  worker logs (tracebacks of the failures): {args.log}")


def _atomic_write_text(path: Path, text: str) -> None:
    with staging.staged_file(path, replace=True) as tmp:  # the one atomic writer: a reader never sees half a file
        tmp.write_text(text)


# ---------------------------------------------------------------------------------------------
def _simulation_config(args: argparse.Namespace) -> Any:
    """The SimulationConfig of ``sftl simulate`` / ``sftl rt-template`` options: users' inputs alone unless
    ``--profiles`` / ``--spectra`` add generated profiles / embedded spectra to them."""
    from sftl_dask.simulate import SimulationConfig

    tables, dirs = tuple(args.profile_table or ()), tuple(getattr(args, "spectra_dir", None) or ())
    n_prof = args.profiles if args.profiles is not None else (0 if tables else 946)
    n_spec = args.spectra if getattr(args, "spectra", None) is not None else (0 if dirs else None)
    lst = tuple(args.screen_lst_offset) if getattr(args, "screen_lst_offset", None) else None
    try:
        return SimulationConfig(n_profiles=n_prof, n_spectra=n_spec, seed=args.seed, profile_tables=tables,
                                spectra_dirs=dirs, rt_table=getattr(args, "rt_table", None),
                                screen_max_rh_percent=args.screen_rh, screen_lst_minus_tair_k=lst)
    except ValueError as exc:
        raise BadInput(f"sftl {args.verb}: {exc}") from None


def _cmd_simulate(args: argparse.Namespace) -> int:
    from sftl_dask.simulate import read_simulation_metadata, resolve_inputs, write_simulation

    cfg = _simulation_config(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise BadInput(f"{out}: already exists (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    inputs = resolve_inputs(cfg)  # every input read and checked before a cluster starts or anything is written
    with _client(args) as client, Progress("simulate") as update:
        rows = write_simulation(out, cfg, client=client, progress=update, overwrite=args.overwrite, inputs=inputs)
    counts = read_simulation_metadata(out)["inputs"]["counts"]
    print(f"wrote {rows:,} rows to {out} in {time.perf_counter() - t0:.1f} s ({counts['profiles']} profiles, "
          f"{counts['spectra']} spectra, angles {list(cfg.vza_deg)} deg, {cfg.draws_per_combination} LST draws; "
          f"screened out: {counts['profiles_screened']} profiles, {counts['rows_screened']:,} rows)")
    return 0


def _cmd_rt_template(args: argparse.Namespace) -> int:
    from sftl_dask.io.rt_table import rt_template_paths, write_rt_template
    from sftl_dask.simulate import resolve_inputs

    cfg = _simulation_config(args)
    paths = rt_template_paths(args.out)
    inputs = resolve_inputs(cfg)
    n = write_rt_template(paths[0], inputs.profiles, cfg.vza_deg, overwrite=args.overwrite)
    print(f"wrote {n:,} rows to fill ({len(inputs.profiles)} profiles x {len(cfg.vza_deg)} angles x 4 channels) "
          f"to {paths[0]}, the channels' SRFs to {paths[1]} and the profiles to {paths[2]}")
    return 0


def _cmd_fit_sw(args: argparse.Namespace) -> int:
    from sftl_dask.physics.splitwindow import holdout_report
    from sftl_dask.simulate import (
        SW_COLUMNS,
        fit_split_window_on_simulation,
        read_simulation_columns,
        split_window_document,
    )

    data = read_simulation_columns(Path(args.sim), SW_COLUMNS)
    coeffs = fit_split_window_on_simulation(data, seed=args.seed)
    _atomic_write_text(Path(args.out), json.dumps(split_window_document(coeffs, data), indent=1))
    print(_format_sw_report(holdout_report(coeffs)))
    print(f"wrote {args.out}")
    return 0


def _format_sw_report(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'WVC g/cm2':>11} {'VZA deg':>9} {'n_train':>8} {'RMSE train K':>13} {'n_holdout':>10} " \
           f"{'RMSE holdout K':>15} {'bias K':>8}"
    lines = ["split-window fit (Wan & Dozier 1996 + quadratic term), per window:", head]
    for r in rows:
        def f(key: str, fmt: str, r: dict[str, Any] = r) -> str:
            v = r.get(key)
            return format(v, fmt) if isinstance(v, int | float) and v == v else "-"

        lines.append(
            f"{r['wvc_min']:>5.1f}-{r['wvc_max']:<5.1f} {r['vza_min']:>4.0f}-{r['vza_max']:<4.0f} "
            f"{f('n_train', 'd'):>8} {f('rmse_train_k', '.3f'):>13} {f('n_holdout', 'd'):>10} "
            f"{f('rmse_holdout_k', '.3f'):>15} {f('bias_holdout_k', '+.3f'):>8}"
        )
    return "\n".join(lines)


def _cmd_testbed(args: argparse.Namespace) -> int:
    from sftl_dask.testbed.build import build_testbed

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise BadInput(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    with _client(args) as client, Progress("testbed") as update, _refusing(ValueError):
        summary = build_testbed(out, scenes=args.scenes, size=args.size, seed=args.seed, client=client,
                                progress=update, overwrite=args.overwrite, shifted=args.shifted,
                                max_shift=args.max_shift, layout=args.layout)
    print(f"wrote testbed to {out} in {time.perf_counter() - t0:.1f} s: {summary['n_archives']} archives "
          f"({args.scenes} scenes x {len(summary['regions'])} regions, {args.size} x {args.size} px of 40 m), "
          f"{len(summary['sites'])} sites")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sftl_dask.io.inspect import inspect_products

    summaries = inspect_products(args.inputs, tile_px=args.tile_size, calibration=args.calibration)
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=1))
    else:
        for s in summaries:
            print(s.line())
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from sftl_dask.ingest import IngestError, check_ingest, ingest

    with _refusing(IngestError):  # the paths, the cube's tiles and the inputs are checked before a cluster starts
        check_ingest(args.inputs, args.cube, era5=args.era5, ged=args.ged, tile_px=args.tile_size)
    with _client(args) as client, Progress("ingest") as update, _refusing(IngestError):
        summary = ingest(args.inputs, args.cube, era5=args.era5, ged=args.ged, client=client, progress=update,
                         tile_px=args.tile_size, dem=args.dem, calibration=args.calibration)
    print(f"ingested {summary['ingested']} scene(s), skipped {summary['skipped']}, failed {len(summary['failed'])} "
          f"in {summary['seconds']:.1f} s -> {args.cube}")
    for f in summary["failed"]:
        print(f"  failed: {f['scene_id']}: {f.get('reason', '')}")
    if summary["failed"]:
        _note_logs(args)
    stores = summary["stores"]
    shown = stores if len(stores) <= 8 else [*stores[:4], f"... {len(stores) - 8} more ...", *stores[-4:]]
    print(f"  {len(stores)} tile store(s)" + (f" of {summary['tile_px']} px" if "tile_px" in summary else "") + ":")
    for s in shown:
        print(f"  cube: {s}")
    return 1 if summary["failed"] else 0  # some scenes failed: each named above with its reason


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from sftl_dask.models.artifact import ArtifactError
    from sftl_dask.retrieve import RetrieveError, check_retrieval, retrieve

    command = " ".join(["sftl", *(args.argv or [])])
    with _refusing(RetrieveError, ArtifactError):  # the model, cubes and outputs are checked before a cluster starts
        check_retrieval(args.cube, args.model, args.out, precision=args.precision, overwrite=args.overwrite)
    with _client(args, gpu=_wants_gpu(args.device, args.model)) as client:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        with Progress("retrieve") as update, _refusing(RetrieveError, ArtifactError):
            summary = retrieve(args.cube, args.model, args.out, client=client, device=args.device,
                               precision=args.precision, overwrite=args.overwrite, progress=update, command=command)
    m = summary["model"]
    print(f"retrieved {summary['retrieved']} time step(s), skipped {summary['skipped']} already done, failed "
          f"{len(summary['failed'])} in {summary['seconds']:.1f} s ({summary['chunks']} chunks, "
          f"{summary['pixels'] / 1e6:.1f} Mpx, {summary['px_per_s'] / 1e6:.2f} Mpx/s, "
          f"{summary['produced'] / 1e6:.1f} Mpx produced) with {m['model_kind']} {m['model_strategy']} "
          f"on {', '.join(summary['devices']) or '-'}")
    for f in summary["failed"]:
        print(f"  failed: {f['store']} {f['scene_id']}: {f['chunks_failed']} chunk(s), {f['reason']}")
    if summary["failed"]:
        _note_logs(args)
    for st in summary["stores"]:
        print(f"  lst: {st}")
    return 1 if summary["failed"] else 0


def _wants_gpu(device: str, model: str) -> bool:
    """Whether an embedded cluster should be laid out for GPUs: a torch model, a device that may be CUDA, and
    a GPU on this machine (torch is imported only for torch artifacts)."""
    if device == "cpu" or not (Path(model) / "model.pt").is_file():
        return False
    import torch

    return bool(torch.cuda.is_available())


def _cmd_validate(args: argparse.Namespace) -> int:
    from sftl_dask.validate import ValidateError, check_validation, validate

    with _refusing(ValidateError):  # the LST stores, site table, in situ folder and output: before a cluster starts
        check_validation(args.lst, args.insitu, args.sites, args.out, overwrite=args.overwrite)
    with _client(args) as client, Progress("validate") as update, _refusing(ValidateError):
        summary = validate(args.lst, args.insitu, args.sites, args.out, overwrite=args.overwrite, client=client,
                           progress=update)
    print(f"validated {summary['n_usable']} usable matchups of {summary['n_matchups']} in {summary['seconds']:.1f} s "
          f"-> {summary['out'] / 'summary.md'}")
    for m in summary["metrics"]:
        print(f"  {m['name']}: n={m['n']}, RMSE {m['rmse_k']:.3f} K, bias {m['bias_k']:+.3f} K, "
              f"ubRMSE {m['ubrmse_k']:.3f} K, within 1/2 sigma {m['within_1sigma']:.0%}/{m['within_2sigma']:.0%}")
    return 0


def _cmd_rechunk(args: argparse.Namespace) -> int:
    from sftl_dask.rechunk import RechunkError, check_rechunk, rechunk

    command = " ".join(["sftl", *(args.argv or [])])
    kw: dict[str, Any] = {"overwrite": args.overwrite}
    kw.update({k: v for k, v in (("tile", args.tile), ("max_mem", args.max_mem)) if v is not None})
    with _refusing(RechunkError):  # the LST stores, the output and the memory bound: before a cluster starts
        check_rechunk(args.lst, args.out, **kw)
    with _client(args) as client, Progress("rechunk") as update, _refusing(RechunkError):
        summary = rechunk(args.lst, args.out, client=client, progress=update, command=command, **kw)
    print(f"copied {summary['steps']} time step(s) of {len(summary['stores'])} store(s) in {summary['seconds']:.1f} s "
          f"({summary['bytes'] / 1e6:.0f} MB, {summary['tasks']} tasks, {summary['stages']} stage(s)) -> "
          f"{summary['out']}")
    for st in summary["stores"]:
        print(f"  {st['copy']}: chunks {tuple(st['chunks'])}")
    if not summary["conventional"]:
        print("  note: not the conventional place (<root>_ts/<grid>.zarr or <name>_ts.zarr beside the source); "
              "open_lst will not find this copy by itself")
    return 0


def _train(args: argparse.Namespace, what: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Prepare the data (on the cluster) and run the three stages of ``args.config`` into ``args.out``.

    The artifact replaces an existing one only once the new one is complete.
    """
    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.training.stages import load_config, pretrain, run_stages

    cfg = load_config(args.config)
    out = Path(args.out)
    pretrained = None
    with _client(args) as client:
        print(f"{cfg.name}: {what} under {out / 'work'} (reused where made by the same configuration and version)")
        data = prepare_data(cfg, out / "work", client=client)
        if cfg.pretrain.get("distributed"):  # stage 1 across the cluster's workers
            pretrained = pretrain(cfg, data, threads=args.threads, client=client)
    results = run_stages(cfg, data, out, threads=args.threads, pretrained=pretrained)
    results.pop("cross_site_predictions").to_parquet(out / "cross_site_predictions.parquet")
    _atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=float))
    return data, results, out


def _cmd_train(args: argparse.Namespace) -> int:
    if (Path(args.out) / "model").exists() and not args.overwrite:
        raise BadInput(f"{Path(args.out) / 'model'}: an artifact already exists (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    _, _, out = _train(args, "simulation, split-window and matchups")
    print(f"wrote {out / 'model'} and {out / 'results.json'} in {time.perf_counter() - t0:.0f} s")
    return 0


def _cmd_matchups(args: argparse.Namespace) -> int:
    from sftl_dask.matchups import build_matchups

    for flag, path in (("--cube", args.cube), ("--insitu", args.insitu), ("--sites", args.sites)):
        if not Path(path).exists():
            raise BadInput(f"{path}: not found ({flag})")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise BadInput(f"{out}: exists (pass --overwrite to replace it)")
    with _client(args):  # the cube's chunks are read on the cluster
        frame = build_matchups(args.cube, args.insitu, args.sites)
    with staging.staged_file(out, replace=True) as tmp:
        frame.to_parquet(tmp)
    usable = frame["reason"] == "ok"
    per_region = ", ".join(f"{r} {n}" for r, n in frame[usable].groupby("region").size().items())
    print(f"wrote {out}: {len(frame)} matchups, {int(usable.sum())} usable ({per_region or 'none'})")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from sftl_dask.pipelines.experiment import load_grid, run_experiment

    load_grid(args.config)  # bad configurations fail before any cluster starts
    t0 = time.perf_counter()
    with _client(args) as client, Progress("experiment") as update:
        table = run_experiment(args.config, args.out, client=client, progress=update)
    failed = int((table["error"] != "").sum()) if "error" in table else 0
    print(f"{len(table)} runs ({failed} failed) in {time.perf_counter() - t0:.0f} s -> {args.out}/summary.md")
    if failed:
        for _, row in table[table["error"] != ""].iterrows():
            cell = " ".join(str(row[k]) for k in ("model", "strategy", "direction", "seed") if k in row)
            print(f"  failed: {cell}: {str(row['error']).splitlines()[0] if row['error'] else ''}")
        print(f"  tracebacks: {Path(args.out) / 'results.parquet'} (column 'traceback')")
        return 1  # some work failed, each cell named with its reason
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sftl_dask.pipelines.demo import run_demo
    from sftl_dask.training.stages import load_config

    load_config(args.config)  # a bad configuration fails before any cluster starts
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a folder")
    t0 = time.perf_counter()
    with _client(args) as client:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        summary = run_demo(args.config, out, client=client, threads=args.threads)
    print(f"demo done in {time.perf_counter() - t0:.0f} s")
    print(f"  report: {summary['report']}")
    print(f"  report (one self-contained page): {summary['html']}")
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    from sftl_dask.pipelines.archive import ArchiveConfigError, load_archive_config, run_archive

    with _refusing(ArchiveConfigError):
        load_archive_config(args.config)  # a bad configuration fails before any cluster starts
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a folder")
    t0 = time.perf_counter()
    with _client(args) as client:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        with contextlib.ExitStack() as bars, _refusing(ArchiveConfigError):
            summary = run_archive(args.config, out, client=client,
                                  progress=lambda step: bars.enter_context(Progress(step)))
    print(f"archive pipeline done in {time.perf_counter() - t0:.0f} s -> {out} (steps in {out / 'archive.json'})")
    for f in summary["failed"]:
        print(f"  failed: {f['step']}: {f['item']}: {f['reason']}")
    if summary["failed"]:
        _note_logs(args)
    return 1 if summary["failed"] else 0  # some items failed: each named above with its reason


# ---------------------------------------------------------------------------------------------
def _cmd_export(args: argparse.Namespace) -> int:
    from sftl_dask.io.export import ExportError, export_cogs, plan_export

    with _refusing(ExportError):  # the LST stores, tiles, times and the folder: before a cluster starts
        plan_export(args.lst, args.cog, times=args.time, tiles=args.tiles, overwrite=args.overwrite)
    with _client(args) as client, Progress("export") as update, _refusing(ExportError):
        summary = export_cogs(args.lst, args.cog, times=args.time, tiles=args.tiles, overwrite=args.overwrite,
                              client=client, progress=update)
    print(f"exported {summary['written']} COG(s), kept {summary['kept']} already written, failed "
          f"{len(summary['failed'])} in {summary['seconds']:.1f} s; {summary['items']} STAC item(s): {summary['stac']}")
    if summary["lst_stac_rewritten"]:
        print(f"  rewrote the LST cube's STAC catalog (missing or from an older sftl-dask) beside {args.lst}")
    for f in summary["failed"]:
        print(f"  failed: {f['path']}: {f['reason']}")
    return 1 if summary["failed"] else 0


def _parser() -> argparse.ArgumentParser:
    """The ``sftl`` command line: one sub-command per verb, grouped as in DESIGN.md's CLI table."""
    p = argparse.ArgumentParser(prog="sftl", description="LST from GF5-02 VIMI by strategic fine-tuning "
                                "transfer learning, on Dask.")
    p.add_argument("--version", action="version", version=f"sftl-dask {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (_add_data_verbs, _add_cube_verbs, _add_training_verbs, _add_pipeline_verbs):
        add(sub)
    return p


def _common(sp: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    """The options every verb takes (after its own, as ``--help`` lists them), and the verb's handler."""
    sp.add_argument("--scheduler", default=None, help="Dask scheduler address (default: "
                    "$DASK_SCHEDULER_ADDRESS, else an embedded LocalCluster)")
    sp.add_argument("--workers", type=_positive_int, default=None, help="workers of the embedded cluster "
                    "(default: CPUs available)")
    sp.add_argument("--debug", action="store_true", help="show the traceback of a bad-input error too")
    sp.add_argument("--report", default=None, metavar="HTML", help="write Dask's performance report of the "
                    "run (task stream, worker profiles, bandwidth) to this HTML file")
    sp.set_defaults(func=func)


def _add_data_verbs(sub: Any) -> None:
    """The verbs of simulation, split-window and the testbed."""
    s = sub.add_parser("simulate", help="the simulation table (Parquet), from generated or users' own inputs")
    s.add_argument("--out", required=True, help="output Parquet dataset directory")
    _simulation_inputs(s)
    s.add_argument("--spectra", type=_non_negative_int, default=None, help="emissivity spectra of the embedded "
                   "library (default: all; none with --spectra-dir)")
    s.add_argument("--spectra-dir", nargs="+", default=None, metavar="D", help="folders of ECOSTRESS/ASTER "
                   "*.spectrum.txt files (docs/simulation.md)")
    s.add_argument("--rt-table", default=None, metavar="T.csv", help="atmospheric terms of every profile from a "
                   "filled 'sftl rt-template' table (MODTRAN, RTTOV, LOWTRAN) instead of the band model")
    s.add_argument("--screen-lst-offset", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="drop rows whose LST - bottom air temperature (K) is outside [LO, HI]")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _common(s, _cmd_simulate)

    s = sub.add_parser("rt-template", help="the rows an external RT code must fill for 'sftl simulate --rt-table' "
                       "(profile x view angle x channel), with the SRFs and the profiles beside them")
    s.add_argument("--out", required=True, metavar="T.csv", help="the rows to fill; T.srf.csv and "
                   "T.profiles.csv are written beside it")
    _simulation_inputs(s)
    s.add_argument("--overwrite", action="store_true", help="replace existing files")
    s.add_argument("--debug", action="store_true", help="show the traceback of a bad-input error too")
    s.set_defaults(func=_cmd_rt_template)

    s = sub.add_parser("fit-sw", help="split-window coefficients per WVC / view-angle window")
    s.add_argument("--sim", required=True, help="simulation table from 'sftl simulate'")
    s.add_argument("--out", required=True, help="output JSON")
    s.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    _common(s, _cmd_fit_sw)

    s = sub.add_parser("testbed", help="the synthetic world in the real file formats")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--scenes", type=_positive_int, default=20, help="scenes per region (default 20)")
    s.add_argument("--size", type=_positive_int, default=640, help="region grid size in 40 m pixels (default 640)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.add_argument("--shifted", type=float, default=0.15, metavar="SHARE",
                   help="share of scenes whose footprint is moved off the region grid, across tile edges "
                        "(default 0.15; the multi-year archive testbed uses 0.5)")
    s.add_argument("--max-shift", type=_positive_int, default=160, metavar="PX",
                   help="largest footprint move along each axis in px (default 160)")
    s.add_argument("--layout", choices=("delivered", "map"), default="delivered",  # testbed.build.LAYOUTS
                   help="delivered (default): sensor geometry with .rpb RPCs in a .tar.gz, a Copernicus DEM, a "
                        "calibration table and hot targets, as the ground segment delivers; map: north-up UTM "
                        "GeoTIFFs in a .tar (docs/testbed.md)")
    _common(s, _cmd_testbed)

    s = sub.add_parser("inspect", help="what the reader sees in each delivery: layout, time, geometry, calibration "
                       "source, footprint, UTM zone and tiles (one line per product)")
    s.add_argument("inputs", nargs="+", metavar="ARCHIVE_OR_DIR", help="products (.tar.gz, .tgz, .tar, product "
                   "folders) or folders holding them, searched as sftl ingest searches")
    s.add_argument("--json", action="store_true", help="print a JSON list of objects with the same fields")
    s.add_argument("--tile-size", type=_positive_int, default=1024, metavar="PX",
                   help="tile edge in 40 m pixels (default 1024, as sftl ingest); tiles on the unanchored grid "
                        "(zone offsets 0): a cube that already holds the zone, or a first ingest anchored at "
                        "its scenes' corner, may name other tiles")
    s.add_argument("--calibration", default=None, metavar="F", help="a calibration table for products whose XML "
                   "has no GAINS/OFFSETS (format of sftl_dask/data/vimi_calibration.csv)")
    s.add_argument("--debug", action="store_true", help="show the traceback of a bad-input error too")
    s.set_defaults(func=_cmd_inspect)  # reads headers only: no Dask cluster, so none of the cluster options


def _add_cube_verbs(sub: Any) -> None:
    """The verbs of scene cubes and LST cubes."""
    s = sub.add_parser("ingest", help="VIMI L1 archives + ERA5 + GED -> scene cubes (Zarr)")
    s.add_argument("inputs", nargs="+", metavar="ARCHIVE_OR_DIR", help="product .tar files or folders of them")
    s.add_argument("--cube", required=True, help="cube root folder (one Zarr store per tile inside), or an "
                   "object-store URL s3://bucket/prefix (credentials from the environment)")
    s.add_argument("--era5", required=True, nargs="+", metavar="F", help="ERA5 tcwv NetCDF/GRIB files")
    s.add_argument("--ged", required=True, help="folder of ASTER GED AG100 tiles")
    s.add_argument("--tile-size", type=_positive_int, default=None, metavar="PX",
                   help="tile edge in 40 m pixels of a new cube (default 1024 = 40.96 km); an existing cube "
                        "keeps its own")
    s.add_argument("--dem", default=None, metavar="DIR|FILE", help="DEM to orthorectify products in sensor "
                   "geometry by their RPCs: GeoTIFF/COG tiles (e.g. Copernicus GLO-30) or a VRT, heights above "
                   "WGS 84; without it, the GDEM layer of the --ged tiles (100 m; warned, recorded)")
    s.add_argument("--calibration", default=None, metavar="F", help="a calibration table for products whose XML "
                   "has no GAINS/OFFSETS (format of sftl_dask/data/vimi_calibration.csv)")
    _common(s, _cmd_ingest)

    s = sub.add_parser("retrieve", help="scene cubes -> CF LST cubes (torch, tree or split-window model)")
    s.add_argument("--cube", required=True, help="scene-cube root (or one grid store) from 'sftl ingest'; a "
                   "path or an s3:// URL")
    s.add_argument("--model", required=True, help="model artifact directory ('sftl train') or split-window JSON "
                   "('sftl fit-sw')")
    s.add_argument("--out", required=True, help="LST output: a root with one store per cube store (or a store); "
                   "a path or an s3:// URL")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where torch models run: auto = CUDA on workers that have a GPU, else CPU (default auto)")
    s.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="torch arithmetic: fp32, or bf16 matrix products (default fp32)")
    s.add_argument("--overwrite", action="store_true", help="replace LST made from another cube or model")
    _common(s, _cmd_retrieve)

    s = sub.add_parser("validate", help="LST cube against in situ radiometers: metrics, uncertainty calibration, "
                       "scatter and time-series plots")
    s.add_argument("--lst", required=True, help="LST root (one store per grid) or store from 'sftl retrieve'; a "
                   "path or an s3:// URL")
    s.add_argument("--insitu", required=True, help="folder of station files <site id>.csv")
    s.add_argument("--sites", required=True, help="site table (CSV: id, region, lon, lat, ...)")
    s.add_argument("--out", required=True, help="output folder: summary.md, metrics.parquet, matchups.parquet, "
                   "scatter.png, timeseries.png")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _common(s, _cmd_validate)

    s = sub.add_parser("rechunk", help="a time-contiguous copy of an LST cube, for point series")
    s.add_argument("--lst", required=True, help="LST root (one store per grid) or store from 'sftl retrieve'")
    s.add_argument("--out", default=None, help="the copy (default: <root>_ts or <name>_ts.zarr beside --lst, "
                   "where open_lst finds it)")
    s.add_argument("--tile", type=_positive_int, default=None, help="spatial tile edge of the copy's chunks in px "
                   "(default: sftl_dask.rechunk.TILE)")
    s.add_argument("--max-mem", default=None, help="largest array one task holds, e.g. 256MB (default: "
                   "sftl_dask.rechunk.MAX_MEM); longer series go through an intermediate store")
    s.add_argument("--overwrite", action="store_true", help="replace an existing time-series copy")
    _common(s, _cmd_rechunk)

    s = sub.add_parser("export", help="COGs per scene, tile and variable (lst, lst_uncertainty, qc) with STAC items "
                       "that odc-stac and stackstac load (docs/stac.md)")
    s.add_argument("--lst", required=True, help="LST root (one store per tile) or store from 'sftl retrieve'")
    s.add_argument("--cog", required=True, metavar="DIR", help="export folder: <tile>/<scene>_<tile>_<var>.tif, "
                   "stac/catalog.json, export.json; re-running adds only what is missing")
    s.add_argument("--time", nargs="+", default=[], metavar="T", help="time steps to export: 2022-05-17T03:30 or a "
                   "day 2022-05-17 (default: all complete ones)")
    s.add_argument("--tiles", nargs="+", default=[], metavar="TILE", help="tile names, e.g. 50N_134_009 (default all)")
    s.add_argument("--overwrite", action="store_true", help="replace an export of another LST cube or model")
    _common(s, _cmd_export)


def _add_training_verbs(sub: Any) -> None:
    """The verbs of training and matchups."""
    s = sub.add_parser("train", help="the three SFTL stages for one configuration -> model artifact")
    s.add_argument("--config", required=True, help="pipeline YAML (pipelines/*.yaml)")
    s.add_argument("--out", required=True, help="output folder: model/ (artifact), results.json, work/")
    s.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    _common(s, _cmd_train)

    s = sub.add_parser("matchups", help="the matchup table (in situ LST at each site's pixel) of a scene cube")
    s.add_argument("--cube", required=True, help="scene-cube root (or one store) from 'sftl ingest'")
    s.add_argument("--insitu", required=True, help="folder of station files <site id>.csv")
    s.add_argument("--sites", required=True, help="site table (CSV: id, region, lon, lat, ...)")
    s.add_argument("--out", required=True, help="output Parquet table (data.matchups of a pipeline)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing table")
    _common(s, _cmd_matchups)

    s = sub.add_parser("experiment", help="the grid (models x strategies x directions x seeds) as one Dask job")
    s.add_argument("--config", required=True, help="pipeline YAML with a 'grid' section")
    s.add_argument("--out", required=True, help="output folder: results.parquet, summary.md, grid.png, work/")
    _common(s, _cmd_experiment)


def _add_pipeline_verbs(sub: Any) -> None:
    """The verbs of the pipelines."""
    s = sub.add_parser("demo", help="the main job end to end on the testbed, with a report")
    s.add_argument("--out", required=True, help="output directory (work/ inside is reused on re-runs)")
    s.add_argument("--config", default="pipelines/demo.yaml", help="pipeline YAML (default pipelines/demo.yaml)")
    s.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
    _common(s, _cmd_demo)

    s = sub.add_parser("archive", help="a growing archive: ingest -> retrieve -> validate -> monthly composites, "
                       "resumable at each step")
    s.add_argument("--config", default="pipelines/archive.yaml", help="archive pipeline YAML (default "
                   "pipelines/archive.yaml)")
    s.add_argument("--out", required=True, help="output directory (re-running into it resumes)")
    _common(s, _cmd_archive)


def _simulation_inputs(s: argparse.ArgumentParser) -> None:
    """The profile options ``simulate`` and ``rt-template`` share (the same options give the same profiles)."""
    s.add_argument("--profiles", type=_non_negative_int, default=None, help="generated TIGR-like clear-sky "
                   "profiles (default 946; none with --profile-table)")
    s.add_argument("--profile-table", nargs="+", default=None, metavar="F", help="profile tables (CSV or NetCDF "
                   "on pressure levels: TIGR exports, radiosondes, reanalysis columns; docs/simulation.md)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--screen-rh", type=float, default=None, metavar="PCT", help="drop profiles whose relative "
                   "humidity reaches PCT %% at any level up to 100 hPa (cloudy or saturated columns)")


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low``, refused in argparse's words otherwise."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


def _is_input_error(exc: ValueError) -> bool:
    """Whether a ``ValueError`` is this package refusing an input, rather than a bug.

    Input checks raise the package's own error classes (``IngestError``, ``RetrieveError`` ...) or a
    ``ValueError`` from a ``raise`` statement in ``sftl_dask`` that names the file or value. A ValueError raised
    anywhere else (inside numpy, pandas, torch, or by Python itself, e.g. ``float("x")`` in our code) is a bug and
    keeps its traceback.
    """
    if type(exc) is not ValueError and type(exc).__module__.startswith("sftl_dask"):
        return True
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    package = Path(__file__).resolve().parent
    if package not in path.parents:
        return False
    return linecache.getline(str(path), tb.tb_lineno).lstrip().startswith("raise ")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sftl`` command; returns the exit code (0 all done, 1 some work failed, 2 bad input).

    A bug (any other exception) propagates with its traceback, which is also appended to the run's log file.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.log = _log_path(args.verb)
    try:
        _check_urls(args)
        return int(args.func(args) or 0)
    except BadInput as exc:
        return _refused(args, exc)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
            ConnectionError, StoreBusyError) as exc:
        if isinstance(exc, ValueError) and not _is_input_error(exc):
            _log_bug(args)
            raise  # a bug (numpy, pandas, torch or Python refusing a value deep inside): keep its traceback
        return _refused(args, exc)
    except OSError as exc:
        if exc.errno == errno.EROFS:  # an output on a read-only file system: refused like a permission
            return _refused(args, exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # work failed part-way; what was complete stays complete
            if args.debug:
                traceback.print_exc()
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"sftl {args.verb}: error: {where}{exc.strerror}; what was complete before is intact and nothing "
                  "unfinished is marked complete: make room and re-run to finish", file=sys.stderr)
            return 1
        _log_bug(args)
        raise
    except KeyboardInterrupt:
        print(f"sftl {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        _log_bug(args)
        raise


def _check_urls(args: argparse.Namespace) -> None:
    """Refuse object-store URLs where a verb takes none, and probe the others before any cluster work.

    Raises
    ------
    BadInput
        A URL given to an option that takes local paths only.
    ObjectStoreError
        An object store that cannot be reached or used (one line naming the URL and what is wrong).
    """
    from sftl_dask.io.location import is_url, probe

    for key, value in vars(args).items():
        if key in ("scheduler", "argv", "func", "log", "verb"):  # a scheduler address is a URL of its own kind
            continue
        for v in value if isinstance(value, list) else [value]:
            if not (isinstance(v, str) and is_url(v)):
                continue
            if key not in URL_OPTIONS.get(args.verb, ()):
                flag = "ARCHIVE_OR_DIR" if key == "inputs" else f"--{key.replace('_', '-')}"
                raise BadInput(f"{v}: {flag} of sftl {args.verb} takes a local or shared-file-system path, not an "
                               "object-store URL (docs/cluster.md, 'Object storage')")
            probe(v)


def _refused(args: argparse.Namespace, exc: BaseException) -> int:
    """Bad input: one line on stderr, exit 2 (the traceback too with ``--debug``)."""
    if getattr(args, "debug", False):
        traceback.print_exc()
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        msg = f"{exc.filename}: {exc.strerror}"
    print(f"sftl {args.verb}: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _log_bug(args: argparse.Namespace) -> None:
    """Append the traceback of the exception being handled to the run's log file, and say where it is."""
    if args.log is None:
        return
    with contextlib.suppress(OSError), Path(args.log).open("a") as fh:
        fh.write(f"sftl {' '.join(args.argv)}\n{traceback.format_exc()}")
        print(f"sftl {args.verb}: internal error (a bug); traceback below and in {args.log}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
