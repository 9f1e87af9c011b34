"""Reports people read: Markdown with PNG figures, and the same as one self-contained HTML page.

This module assembles text: the figures are drawn by :mod:`sftl_dask.plotting`, the figures of merit come
from :mod:`sftl_dask.metrics`, and the callers pass in what they know (the simulation table's metadata, a run's
results, the folders of its products). It imports no module above it.

:func:`foundation_report` summarises a simulation table and its split-window fit: the table's coverage (WVC,
LST - air temperature, view angles, emissivity classes), the per-window fit quality on held-out rows, and a
scatter of split-window LST against the simulated truth. :func:`demo_report` is the demo's report,
:func:`experiment_report` the experiment grid's summary, and :func:`markdown_to_html` turns a report into one
HTML page with its figures embedded.
"""

from __future__ import annotations

import base64
import html
import json
import os
import xml.etree.ElementTree as etree
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import markdown
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

from sftl_dask import plotting
from sftl_dask.metrics import metrics
from sftl_dask.physics.splitwindow import SplitWindowCoefficients, apply_split_window
from sftl_dask.staging import staged_file

__all__ = ["demo_report", "experiment_report", "foundation_report", "markdown_to_html"]

#: Columns of the simulation table drawn in the foundation report.
_SAMPLE_COLUMNS = ("lst", "t_air", "wvc", "vza", "bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95", "category")


def foundation_report(sim: str | os.PathLike[str], sw_json: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], *, simulation_meta: Mapping[str, Any],
                      sample: int = 200_000, seed: int = 0) -> Path:
    """Write ``report.md`` (and its figures) for a simulation table and its split-window fit; see
    :func:`_foundation_lines`."""
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(["# sftl-dask foundation report", "",
                               *_foundation_lines(sim, sw_json, out_dir, simulation_meta=simulation_meta,
                                                  sample=sample, seed=seed)]))
    return path


def _foundation_lines(sim: str | os.PathLike[str], sw_json: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], *, simulation_meta: Mapping[str, Any],
                      sample: int = 200_000, seed: int = 0) -> list[str]:
    """The report's sections on a simulation table and its split-window fit; writes their figures.

    Parameters
    ----------
    sim : path
        Simulation table (Parquet dataset from ``sftl simulate``).
    sw_json : path
        Coefficients from ``sftl fit-sw``.
    out_dir : path
        Where ``sim_coverage.png`` and ``sw_fit.png`` go.
    simulation_meta : mapping
        The table's metadata (:func:`sftl_dask.simulate.read_simulation_metadata`): ``config`` (``n_profiles``,
        ``vza_deg``, ``draws_per_combination``), ``spectra``, ``rt_model``.
    sample : int, optional
        Rows drawn (without replacement) for the figures and the scatter statistics.
    seed : int, optional
        Seed of that draw.

    Returns
    -------
    list of str
        Markdown lines.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_rows, d = _simulation_sample(sim, sample, seed)
    coeffs = SplitWindowCoefficients.from_dict(json.loads(Path(sw_json).read_text()))
    lst_sw = apply_split_window(coeffs, d["bt_10_80"], d["bt_11_95"], d["emis_10_80"], d["emis_11_95"],
                                d["wvc"], d["vza"])
    plotting.foundation_figures(d, lst_sw, n_rows, out)
    fit = metrics(lst_sw, d["lst"])
    cfg = simulation_meta["config"]
    return [
        "## The simulation table",
        "",
        f"Simulation table `{sim}`: **{n_rows:,} rows** from {cfg['n_profiles']} profiles, "
        f"{len(simulation_meta['spectra'])} emissivity spectra, view angles {cfg['vza_deg']} deg, "
        f"{cfg['draws_per_combination']} LST draws per combination; radiative transfer: "
        f"{simulation_meta['rt_model']}.",
        "",
        "![coverage](sim_coverage.png)",
        "",
        "## Split-window baseline (fitted on the simulation)",
        "",
        "Per window, on rows held out of the fit:",
        "",
        "| WVC (g cm⁻²) | VZA (deg) | n train | RMSE train (K) | n held out | RMSE held out (K) | bias (K) |",
        "|---|---|---|---|---|---|---|",
        *_window_lines(coeffs),
        "",
        f"Applied with window blending to a {len(d['lst']):,}-row sample: RMSE {fit['rmse_k']:.3f} K, "
        f"bias {fit['bias_k']:+.3f} K (this sample includes rows used in the fit).",
        "",
        "![split-window](sw_fit.png)",
        "",
    ]


def _simulation_sample(sim: str | os.PathLike[str], sample: int, seed: int) -> tuple[int, dict[str, np.ndarray]]:
    """The table's row count and a sorted random draw of ``sample`` rows of :data:`_SAMPLE_COLUMNS`."""
    table = ds.dataset(sim, format="parquet").to_table()
    n_rows = table.num_rows
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n_rows, size=min(sample, n_rows), replace=False))
    return n_rows, {c: table.column(c).take(idx).to_numpy(zero_copy_only=False) for c in _SAMPLE_COLUMNS}


def _window_lines(coeffs: SplitWindowCoefficients) -> list[str]:
    """One table row per split-window window: its range and fit statistics ('–' where absent)."""
    def f(v: object, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, int | float) and v == v else "–"

    return [f"| {w['wvc_min']:.1f}–{w['wvc_max']:.1f} | {w['vza_min']:.0f}–{w['vza_max']:.0f} | "
            f"{f(w.get('n_train'), 'd')} | {f(w.get('rmse_train_k'), '.3f')} | {f(w.get('n_holdout'), 'd')} | "
            f"{f(w.get('rmse_holdout_k'), '.3f')} | {f(w.get('bias_holdout_k'), '+.3f')} |"
            for w in coeffs.to_dict()["windows"]]


def demo_report(data: dict[str, Any], results: dict[str, dict[str, Any]], out_dir: str | os.PathLike[str], *,
                stages: list[dict[str, Any]], maps: list[tuple[str, str]], validation: str | os.PathLike[str],
                composites: str | os.PathLike[str], lst_root: str | os.PathLike[str],
                simulation_meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write the demo's ``report.md`` and a self-contained ``report.html`` (figures embedded).

    Sections: simulation and split-window, the testbed's matchups, the three SFTL stages against the baselines
    per direction, the LST maps with their QC masks, the validation against the radiometers, the monthly
    composites, and this run's wall time and throughput per stage.

    Parameters
    ----------
    data : dict
        From :func:`sftl_dask.pipelines.data.prepare_data`.
    results : dict
        Direction name -> :func:`sftl_dask.training.stages.run_stages` result (its folder ``out/<direction>``
        holds ``model/`` and ``cross_site_predictions.parquet``).
    out_dir : path
        Where the report and figures go.
    stages : list of dict
        ``stage``, ``seconds``, ``skipped``, ``scenes``, ``pixels`` per stage.
    maps : list of (str, str)
        Title and PNG path (relative to ``out_dir``) of each LST map.
    validation, composites, lst_root : path
        The ``sftl validate`` folder, the composites folder and the LST root.
    simulation_meta : mapping
        The simulation table's metadata (:func:`sftl_dask.simulate.read_simulation_metadata` of ``data["sim"]``).

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        ``report.md`` and ``report.html``.
    """
    out = Path(out_dir)
    sw_json = out / "work" / "sw.json"
    lines = ["# sftl-dask demo report", "",
             "The main job end to end on the testbed (synthetic world in the real formats, see docs/testbed.md): "
             "simulation -> split-window; testbed -> `sftl ingest` -> matchups; the three SFTL stages in both "
             "directions; `sftl retrieve` of each region by the model transferred to it; `sftl validate`; monthly "
             "composites. **These are testbed figures, not the paper's real-data numbers.**", ""]
    lines += _stage_lines(stages)
    lines += _foundation_lines(data["sim"], sw_json, out, simulation_meta=simulation_meta)
    mu = data["matchups"]
    counts = mu.groupby(["region", "reason"]).size().unstack(fill_value=0)
    lines += ["## Matchups (site x scene)", "", "| region | " + " | ".join(counts.columns) + " |",
              "|---" * (len(counts.columns) + 1) + "|"]
    for reg, row in counts.iterrows():
        lines.append(f"| {reg} | " + " | ".join(str(int(v)) for v in row.to_numpy()) + " |")
    for direction, res in results.items():
        lines += _sftl_lines(res, out / direction, out, f"sftl_{direction}.png")
    lines += ["## LST maps", "", "Each region's LST retrieved by the model trained on the other region (the "
              "transfer case: a region without ground data of its own), on its best-covered scene, beside the QC "
              "mask of that scene (`qc` flag bits, `docs/retrieval.md`).", ""]
    for title, png in maps:
        lines += [f"### {title}", "", f"![{title}]({png})", ""]
    lines += _validation_lines(Path(validation), out)
    comp = Path(composites)
    lines += ["## Monthly composites", "", "Median of the good pixels per month (`ds.sftl.good().sftl.composite("
              "'MS', 'median')`), with the number of scenes per pixel; CF NetCDF files in "
              f"`{comp.relative_to(out)}/`.", ""]
    for png in sorted(comp.glob("*.png")):
        lines += [f"![composite {png.stem}]({png.relative_to(out)})", ""]
    lines += [f"LST cubes: `{Path(lst_root).relative_to(out)}/` (open with `sftl_dask.open_lst`).", ""]
    text = "\n".join(lines)
    md = out / "report.md"
    with staged_file(md, replace=True) as tmp:
        tmp.write_text(text)
    html = out / "report.html"
    with staged_file(html, replace=True) as tmp:
        tmp.write_text(markdown_to_html(text, out, title="sftl-dask demo report"))
    return md, html


def _stage_lines(stages: list[dict[str, Any]]) -> list[str]:
    lines = ["## This run, per stage", "", "| stage | wall (s) | scenes | Mpx | Mpx/s | scenes/s |",
             "|---|---|---|---|---|---|"]
    for s in stages:
        sec, done = float(s["seconds"]), not s["skipped"]
        wall = f"{sec:.1f}" + ("" if done else " (reused)")
        mpx = s["pixels"] / 1e6
        px_rate = f"{mpx / sec:.2f}" if done and mpx and sec > 0 else ""
        sc_rate = f"{s['scenes'] / sec:.2f}" if done and s["scenes"] and sec > 0 else ""
        lines.append(f"| {s['stage']} | {wall} | {s['scenes'] or ''} | {f'{mpx:.1f}' if mpx else ''} | {px_rate} | "
                     f"{sc_rate} |")
    total = sum(float(s["seconds"]) for s in stages)
    lines += [f"| total | {total:.1f} | | | | |", ""]
    return lines


def _validation_lines(val: Path, out: Path) -> list[str]:
    """The validation's metrics table and its two figures."""
    m = pd.read_parquet(val / "metrics.parquet")
    lines = ["## Validation against the radiometers (`sftl validate`)", "",
             "Matchups from the LST cubes with the training's QC and stability rules; per site and region. "
             f"Details: `{(val / 'summary.md').relative_to(out)}`.", "",
             "| site / region | n | RMSE (K) | bias (K) | ubRMSE (K) | R² | within 1σ | within 2σ |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in m.iterrows():
        lines.append(f"| {r['name']} | {int(r['n'])} | {r['rmse_k']:.2f} | {r['bias_k']:+.2f} | {r['ubrmse_k']:.2f} "
                     f"| {r['r2']:.3f} | {r['within_1sigma']:.0%} | {r['within_2sigma']:.0%} |")
    lines += ["", f"![validation scatter]({(val / 'scatter.png').relative_to(out)})", "",
              "A site's series: radiometer LST against the retrieved LST ± its uncertainty:", "",
              f"![site time series]({(val / 'timeseries.png').relative_to(out)})", ""]
    return lines + _validation_calibration_lines(val, out, m)


def _share(v: Any, lo: Any, hi: Any) -> str:
    ok = all(isinstance(x, int | float) and np.isfinite(x) for x in (v, lo, hi))
    return f"{v:.0%} [{lo:.0%}, {hi:.0%}]" if ok else "–"


def _validation_calibration_lines(val: Path, out: Path, m: pd.DataFrame) -> list[str]:
    """The calibration of ``lst_uncertainty`` against the radiometers with their error added (``sftl validate``'s
    ``calibration.parquet`` and ``reliability.png``), where the validation made them."""
    cal_path, png = val / "calibration.parquet", val / "reliability.png"
    if not cal_path.is_file() or "within_1sigma_with_ref" not in m:
        return []
    lines = ["### Uncertainty calibration against the radiometers", "",
             "Residuals against √(σ_product² + σ_reference²): `lst_uncertainty` plus the radiometer's own error "
             "(per site; `docs/uncertainty.md`). Shares with their 95 % Wilson interval; calibrated: 68 % and 95 %.",
             "", "| set | n | σ_reference (K) | within ±1σ | within ±2σ |", "|---|---|---|---|---|"]
    for _, r in m[m["level"].isin(["all", "region"])].iterrows():
        one, two = (_share(*(r[f"within_{z}sigma_with_ref{t}"] for t in ("", "_low", "_high"))) for z in (1, 2))
        lines.append(f"| {r['name']} | {int(r['n'])} | {r['sigma_reference_k']:.2f} | {one} | {two} |")
    cls = pd.read_parquet(cal_path)
    cls = cls[cls["kind"] == "class"]
    if len(cls):
        lines += ["", "| region | uncertainty class | n | within ±1σ | within ±2σ |", "|---|---|---|---|---|"]
        for (region, group), sub in cls.groupby(["region", "group"], sort=True):
            one, two = sub[sub["z"] == 1.0].iloc[0], sub[sub["z"] == 2.0].iloc[0]
            lines.append(f"| {region} | {group} | {int(one['n'])} | {_share(one['observed'], one['low'], one['high'])} "
                         f"| {_share(two['observed'], two['low'], two['high'])} |")
    if png.is_file():
        lines += ["", f"![reliability diagram]({png.relative_to(out)})"]
    return [*lines, ""]


def _uncertainty_lines(s3: Mapping[str, Any]) -> list[str]:
    """Stage 3's calibration of the per-pixel uncertainty on held-out target scenes, by k and method."""
    uc = s3.get("uncertainty_calibration") or {}
    by_k = uc.get("by_k")
    if not by_k:
        return []
    cal = uc.get("calibration") or {}
    lines = [f"Per-pixel uncertainty (`docs/uncertainty.md`): the artifact's scene term {uc['sigma_scene_k']:.2f} K, "
             f"{cal.get('label', 'uncalibrated (source-fitted)')}. Coverage on held-out target scenes (scenes that "
             "gave no calibration matchup), pooled over the draws, with 95 % Wilson intervals; against the pixel "
             "truth σ_product alone, against the radiometers √(σ_product² + σ_reference²):", "",
             "| model | k | method | n scored | truth ±1σ | truth ±2σ | radiometers ±1σ | radiometers ±2σ |",
             "|---|---|---|---|---|---|---|---|"]
    for key, curve in by_k.items():
        name, method = key.split(":")
        if method != "loo-split":  # the default; the others are in results.json
            continue
        for c in curve:
            t, i = c.get("pixel_truth") or {}, c["insitu_with_reference"]
            lines.append(f"| {name} | {c['k']} | {c['method']} | {i['n']} | "
                         f"{_share(t.get('within_1sigma'), *(t.get('within_1sigma_ci') or (None, None)))} | "
                         f"{_share(t.get('within_2sigma'), *(t.get('within_2sigma_ci') or (None, None)))} | "
                         f"{_share(i['within_1sigma'], *(i['within_1sigma_ci'] or (None, None)))} | "
                         f"{_share(i['within_2sigma'], *(i['within_2sigma_ci'] or (None, None)))} |")
    for label, key in (("radiometers", "random_systematic_insitu"), ("pixel truth", "random_systematic_pixel_truth")):
        rs = uc.get(key) or {}
        if rs.get("random_k") is not None and rs.get("systematic_k") is not None:
            lines.append(f"\nAgainst the {label}, by scene: random {rs['random_k']:.2f} K, systematic "
                         f"{rs['systematic_k']:.2f} K (bias {rs['bias_k']:+.2f} K; {rs['n_groups']} scenes).")
    return [*lines, ""]


def _sftl_lines(results: dict[str, Any], folder: Path, out: Path, fig_name: str) -> list[str]:
    """One direction's three stages against the baselines, and its figure."""
    lines: list[str] = []
    s1, s2, s3 = results["stage1_pretrain"], results["stage2_finetune"], results["stage3_transfer"]

    def r(m: dict[str, Any]) -> str:
        return f"{m['rmse_k']:.2f} | {m['bias_k']:+.2f} | {m['r2']:.3f} | {m['n']}"

    lines += ["", f"## SFTL: {results['model'].upper()} + {results['strategy']} ({results['direction']})", "",
              "| stage / method | RMSE (K) | bias (K) | R² | n |", "|---|---|---|---|---|",
              f"| 1 pre-train, held-out simulated profiles: model | {r(s1['model'])} |",
              f"| 1 same rows: split-window | {r(s1['split_window'])} |",
              f"| 2 in-domain (source, held-out scenes): SFTL | {r(s2['model'])} |",
              f"| 2 same rows: pre-trained only | {r(s2['pretrained_only'])} |",
              f"| 2 same rows: split-window | {r(s2['split_window'])} |",
              f"| 3 cross-site (target, zero-shot): SFTL | {r(s3['zero_shot'])} |",
              f"| 3 same rows: pre-trained only | {r(s3['pretrained_only'])} |",
              f"| 3 same rows: split-window | {r(s3['split_window'])} |",
              f"| 3 same rows: direct training on source matchups (tuned by cross-validation there) | "
              f"{r(s3['direct_training'])} |", ""]
    if "direct_tuning" in s3:
        dt = s3["direct_tuning"]
        lines += [f"Direct baseline: search space `{json.dumps(dt['search'])}`, chosen `{json.dumps(dt['chosen'])}` "
                  f"by {dt['folds']}-fold cross-validation over source scenes (RMSE {dt['cv_rmse_k']:.2f} K).", ""]
    if "against_pixel_truth" in s3:
        t = s3["against_pixel_truth"]
        lines += ["Scored against the testbed's true pixel LST instead of the radiometers (only a synthetic world "
                  "knows it): the radiometers' own representativeness error is a floor no retrieval can beat "
                  "when scored against them.", "",
                  "| target rows against pixel truth | RMSE (K) | bias (K) | R² | n |", "|---|---|---|---|---|",
                  f"| SFTL | {r(t['zero_shot'])} |", f"| split-window | {r(t['split_window'])} |",
                  f"| direct training | {r(t['direct_training'])} |",
                  f"| the radiometers themselves | {r(t['radiometer'])} |", ""]
    if s3["few_shot"]:
        lines += ["Few-shot adaptation on k target samples (RMSE on the remaining target rows, mean ± sd over "
                  "draws), next to the zero-shot model on the same rows:", "",
                  "| k | few-shot RMSE (K) | zero-shot, same rows (K) | draws |", "|---|---|---|---|"]
        lines += [f"| {f['k']} | {f['rmse_k_mean']:.2f} ± {f['rmse_k_sd']:.2f} | "
                  f"{f.get('zero_shot_rmse_k_mean', float('nan')):.2f} | {f['repeats']} |" for f in s3["few_shot"]]
    lines += ["", *_uncertainty_lines(s3)]
    pred_path = folder / "cross_site_predictions.parquet"
    predictions = pd.read_parquet(pred_path) if pred_path.is_file() else None
    plotting.sftl_figure(s3, results["direction"], predictions, out / fig_name)
    lines += ["", f"![sftl {results['direction']}]({fig_name})", "",
              f"Artifact: `{(folder / 'model').relative_to(out)}` (TorchScript + torch.export + card.json + sha256).",
              ""]
    return lines


def markdown_to_html(text: str, base: str | os.PathLike[str], *, title: str = "") -> str:
    """The report's Markdown as one self-contained HTML page, with its images embedded.

    Python-Markdown with the ``tables`` and ``fenced_code`` extensions; each image becomes a ``<figure>`` whose
    PNG is embedded as a data URI (read from its path relative to ``base``; empty when the file is missing),
    so the page needs nothing beside it.

    Parameters
    ----------
    text : str
        The Markdown.
    base : path
        The folder the images' paths are relative to.
    title : str, optional
        The page's title.

    Returns
    -------
    str
        The HTML page.
    """
    md = markdown.Markdown(extensions=["tables", "fenced_code", _EmbedImages(Path(base))], output_format="html")
    body = md.convert(text)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left}th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 3px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + body + "\n</body></html>\n")


class _EmbedImages(Extension):
    """Images as ``<figure>`` with the PNG inline (a data URI); one block per line of HTML, none inside a table."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # Python-Markdown's hook
        md.treeprocessors.deregister("prettify")  # it breaks lines between table cells and list items
        md.treeprocessors.register(_EmbedImagesProcessor(md, self.base), "sftl_embed_images", 0)


class _EmbedImagesProcessor(Treeprocessor):
    """See :class:`_EmbedImages`."""

    def __init__(self, md: markdown.Markdown, base: Path) -> None:
        super().__init__(md)
        self.base = base

    def run(self, root: etree.Element) -> None:
        for img in root.iter("img"):
            path = self.base / img.get("src", "")
            data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
            img.set("src", f"data:image/png;base64,{data}")
        for block in root:
            if block.tag == "p" and len(block) == 1 and block[0].tag == "img" and not (block.text or "").strip() \
                    and not (block[0].tail or "").strip():
                block.tag = "figure"
            block.tail = "\n"


#: The paper's best-SFTL / split-window cross-site RMSE ratios (Heidarian et al. 2025): the targets.
PAPER_RATIOS = {"SiHuHe": 2.89 / 4.22, "SiHeHu": 3.34 / 3.67}


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.2f} ± {0.0 if not np.isfinite(sd) else sd:.2f}"


def experiment_report(table: pd.DataFrame, predictions: pd.DataFrame, out_dir: str | os.PathLike[str], *,
                      wall_s: float | None = None, prep_s: float | None = None, n_workers: int | None = None
                      ) -> Path:
    """Write the grid's ``summary.md`` with ``grid.png``, ``scatter.png`` and ``fewshot.png``.

    Sections: the targets (per direction, the SFTL configuration chosen on the source region's held-out
    scenes, :func:`select_on_source`, beside the oracle chosen on the target, :func:`select_oracle`, the
    split-window and the tuned direct baseline chosen by its source cross-validation; on a testbed also
    against the true pixel LST and the radiometers' own error), the results table (mean ± sd over seeds),
    pre-training, the feature ablation, the recommendation of model × strategy by the number of target
    samples (chosen on some few-shot draws, scored on the others), and few-shot against zero-shot.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per cell (:func:`sftl_dask.training.experiment.run_grid`).
    predictions : pandas.DataFrame
        Cross-site predictions of every cell (``cell``, ``lst_insitu``, ``lst_sftl``, ...; K).
    out_dir : path
        Where the files go.
    wall_s : float, optional
        Wall time of the whole grid (s).
    prep_s : float, optional
        Of which preparing the data (simulation, testbed, ingest, matchups; reused when present) (s).
    n_workers : int, optional
        Dask workers it ran on.

    Returns
    -------
    pathlib.Path
        The summary's path.
    """
    out = Path(out_dir)
    ok = table[table["error"] == ""] if "error" in table else table
    failed = table[table["error"] != ""] if "error" in table else table.iloc[:0]
    lines = ["# Experiment grid", "",
             "RMSE, bias and MAE in K; mean ± sd over seeds. **Testbed figures (a synthetic world in the real "
             "formats), not the paper's real-data numbers.**", ""]
    if wall_s is not None:
        prep = f" ({prep_s / 60:.1f} min of it preparing the data)" if prep_s is not None else ""
        lines += [f"{len(table)} cells ({len(failed)} failed) in {wall_s / 60:.1f} min{prep} on "
                  f"{n_workers or '?'} Dask worker(s).", ""]
    if ok.empty:
        lines += ["No cell succeeded."]
    else:
        full = ok[ok["features"] == "all"] if "features" in ok else ok
        agg = _grid_aggregate(full)
        lines += _targets_lines(agg, full)
        lines += _results_lines(agg)
        lines += _pretrain_lines(full)
        lines += _ablation_lines(ok)
        lines += _recommendation_lines(full)
        plotting.grid_figures(agg, full, predictions, out)
        lines += ["", "![grid](grid.png)", "", "![scatter](scatter.png)", "", "![few-shot](fewshot.png)"]
    if not failed.empty:
        lines += ["", "## Failed cells", ""] + [f"- {r['cell']}: {r['error']}" for _, r in failed.iterrows()]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _grid_aggregate(ok: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ok.columns if c.endswith(("_rmse_k", "_bias_k", "_mae_k", "_r2"))
            and pd.api.types.is_numeric_dtype(ok[c])]  # not the per-draw lists (JSON text)
    cols += ["trainable_parameters", "wall_s", "pretrain_s"]
    g = ok.groupby(["direction", "model", "strategy"])
    mean = g[cols].mean()
    sd = g[cols].std().add_suffix("_sd")
    n = g.size().rename("seeds")
    rows_n = g["cross_site_n"].first().rename("n")
    return pd.concat([mean, sd, n, rows_n], axis=1).reset_index()


def select_on_source(agg: pd.DataFrame) -> pd.Series:
    """The configuration reported as "SFTL": lowest mean RMSE on the source region's held-out rows.

    Those rows (``in_domain_rmse_k``: the source scenes held out of fine-tuning) are source-region data;
    no target row takes part in the choice, so the target RMSE of the choice is an honest estimate. The
    best on the target (:func:`select_oracle`) is reported beside it as an oracle.
    """
    return agg.loc[agg["in_domain_rmse_k"].idxmin()]


def select_oracle(agg: pd.DataFrame) -> pd.Series:
    """The oracle: lowest mean target RMSE (chosen on the rows it is scored on; optimistic by construction)."""
    return agg.loc[agg["cross_site_rmse_k"].idxmin()]


def _targets_lines(agg: pd.DataFrame, ok: pd.DataFrame) -> list[str]:
    lines = ["## Targets: zero-shot cross-site", "",
             "**Source-selected** SFTL: the model + strategy with the lowest RMSE on the source region's held-out "
             "scenes (no target row used to choose), then scored once on the target. **Oracle**: the best on the "
             "target rows themselves (optimistic; for reference only). The direct baseline is every model trained "
             "on the source matchups alone with settings tuned by cross-validation there; the one reported is the "
             "model with the lowest cross-validated RMSE (source-selected too).", "",
             "| direction | source-selected SFTL | RMSE | ratio to split-window | oracle SFTL | RMSE | ratio | "
             "paper's ratio | split-window | tuned direct (source-selected) | RMSE | source-selected beats "
             "split-window and direct |", "|---" * 12 + "|"]
    truth_lines = []
    for direction, sub in agg.groupby("direction"):
        sel, best = select_on_source(sub), select_oracle(sub)
        sw = float(sub["cross_site_sw_rmse_k"].mean())
        target = PAPER_RATIOS.get(str(direction), float("nan"))
        d = ok[ok["direction"] == direction]
        if "direct_cv_rmse_k" in d:
            per_model = d.groupby("model")[["direct_cv_rmse_k", "cross_site_direct_rmse_k"]].mean()
            dm = per_model["direct_cv_rmse_k"].idxmin()
        else:
            per_model = d.groupby("model")[["cross_site_direct_rmse_k"]].mean()
            dm = per_model["cross_site_direct_rmse_k"].idxmin()
        direct = float(per_model.loc[dm, "cross_site_direct_rmse_k"])
        beats = sel["cross_site_rmse_k"] < min(sw, direct)
        lines.append(f"| {direction} | {sel['model']} + {sel['strategy']} | "
                     f"{_pm(sel['cross_site_rmse_k'], sel['cross_site_rmse_k_sd'])} | "
                     f"{sel['cross_site_rmse_k'] / sw:.2f} | {best['model']} + {best['strategy']} | "
                     f"{_pm(best['cross_site_rmse_k'], best['cross_site_rmse_k_sd'])} | "
                     f"{best['cross_site_rmse_k'] / sw:.2f} | {target:.2f} | {sw:.2f} | {dm} | {direct:.2f} | "
                     f"{'yes' if beats else '**no**'} |")
        if "truth_radiometer_rmse_k" in sub and np.isfinite(sub["truth_radiometer_rmse_k"]).any():
            floor = float(sub["truth_radiometer_rmse_k"].mean())
            sw_t = float(sub["truth_sw_rmse_k"].mean())
            truth_lines.append(
                f"| {direction} | {floor:.2f} | {floor / sw:.2f} | {sel['model']} + {sel['strategy']}: "
                f"{sel['truth_cross_site_rmse_k']:.2f} | {sw_t:.2f} | {sel['truth_cross_site_rmse_k'] / sw_t:.2f} |")
    if "direct_chosen" in ok:
        lines += ["", "Tuned direct baselines: search space and the settings chosen by cross-validation (per "
                  "direction and seed).", "", "| direction | model | seed | search | chosen | CV RMSE |",
                  "|---" * 6 + "|"]
        for _, r in ok.drop_duplicates(["direction", "model", "seed"]).sort_values(
                ["direction", "model", "seed"]).iterrows():
            lines.append(f"| {r['direction']} | {r['model']} | {r['seed']} | `{r['direct_search']}` | "
                         f"`{r['direct_chosen']}` | {r['direct_cv_rmse_k']:.2f} |")
    if truth_lines:
        lines += ["", "Against the testbed's true pixel LST (only a synthetic world knows it; scored here, in the "
                  "report, never in training). The radiometers' own error against the pixel (footprint and "
                  "representativeness) is a floor that every retrieval meets when scored against the radiometers: "
                  "the ratio cannot go below floor / split-window.", "",
                  "| direction | radiometer vs pixel RMSE (floor) | lowest reachable ratio vs radiometers | "
                  "source-selected SFTL vs pixel truth | split-window vs pixel truth | ratio vs pixel truth |",
                  "|---" * 6 + "|", *truth_lines]
    return [*lines, ""]


def _results_lines(agg: pd.DataFrame) -> list[str]:
    lines = ["## Results (all features)", "",
             "| direction | model | strategy | seeds | sim RMSE | in-domain RMSE | cross-site RMSE | cross-site bias | "
             "MAE | R² | n | split-window | direct | trainable params | wall (s) |", "|---" * 15 + "|"]
    for _, r in agg.sort_values(["direction", "cross_site_rmse_k"]).iterrows():
        def pm(col: str, r: pd.Series = r) -> str:
            return _pm(r[col], r[f"{col}_sd"])

        lines.append(
            f"| {r['direction']} | {r['model']} | {r['strategy']} | {r['seeds']} | {pm('sim_rmse_k')} | "
            f"{pm('in_domain_rmse_k')} | {pm('cross_site_rmse_k')} | {pm('cross_site_bias_k')} | "
            f"{r['cross_site_mae_k']:.2f} | {r['cross_site_r2']:.3f} | {r['n']:.0f} | {r['cross_site_sw_rmse_k']:.2f}"
            f" | {pm('cross_site_direct_rmse_k')} | {r['trainable_parameters']:.0f} | {r['wall_s']:.0f} |")
    return [*lines, ""]


def _pretrain_lines(ok: pd.DataFrame) -> list[str]:
    per = ok.drop_duplicates(["model", "seed"]).groupby("model")
    lines = ["## Stage 1: pre-training on the simulation (held-out profiles)", "",
             "| model | sim RMSE | split-window, same rows | below split-window | ≤ 0.5 K | pre-training (s) |",
             "|---|---|---|---|---|---|"]
    for model, sub in per:
        m, sw = sub["sim_rmse_k"], sub["sim_sw_rmse_k"]
        lines.append(f"| {model} | {_pm(m.mean(), m.std())} | {sw.mean():.2f} | {'yes' if (m < sw).all() else 'no'} | "
                     f"{'yes' if (m <= 0.5).all() else 'no'} | {sub['pretrain_s'].mean():.0f} |")
    return [*lines, ""]


def _ablation_lines(ok: pd.DataFrame) -> list[str]:
    if "features" not in ok or ok["features"].nunique() < 2:
        return []
    variants = [f for f in ok["features"].unique() if f != "all"]
    lines = ["## Feature ablation", "",
             f"The same cells retrained (pre-training included) without {', '.join(v.lstrip('-') for v in variants)}. "
             "Δ = without − with (positive: the feature helps).", "",
             "| direction | model | strategy | features | sim RMSE | Δ sim | cross-site RMSE | Δ cross-site |",
             "|---" * 8 + "|"]
    key = ["direction", "model", "strategy"]
    base = ok[ok["features"] == "all"].groupby(key)[["sim_rmse_k", "cross_site_rmse_k"]].mean()
    for v in variants:
        sub = ok[ok["features"] == v].groupby(key)[["sim_rmse_k", "cross_site_rmse_k"]].agg(["mean", "std"])
        for idx, r in sub.iterrows():
            if idx not in base.index:
                continue
            b = base.loc[idx]
            sim = _pm(r[("sim_rmse_k", "mean")], r[("sim_rmse_k", "std")])
            lines.append(f"| {idx[0]} | {idx[1]} | {idx[2]} | {v} | {sim}"
                         f" | {r[('sim_rmse_k', 'mean')] - b['sim_rmse_k']:+.3f} | "
                         f"{_pm(r[('cross_site_rmse_k', 'mean')], r[('cross_site_rmse_k', 'std')])} | "
                         f"{r[('cross_site_rmse_k', 'mean')] - b['cross_site_rmse_k']:+.2f} |")
    return [*lines, ""]


def _draws(ok: pd.DataFrame, col: str, part: slice) -> pd.Series:
    """Per cell: the mean over some of its few-shot draws (a JSON list column), NaN where absent."""
    return ok[col].map(lambda t: float(np.mean(json.loads(t)[part])) if isinstance(t, str) and json.loads(t)[part]
                       else np.nan)


def _recommendation_lines(ok: pd.DataFrame) -> list[str]:
    """Best model × strategy by target sample size, chosen on some data and scored on other data.

    Score: RMSE / split-window RMSE on the same rows, averaged over directions and seeds (lower is better).
    Zero-shot and the in-domain row: chosen on the source region's held-out scenes. Few-shot with k samples:
    chosen on the even draws of k samples, scored on the odd draws (other samples, other scoring rows); the
    candidates are every cell adapted on the k samples and every cell left as it is ('no adaptation').
    """
    lines = ["## Recommendation by target sample size", "",
             "Score: RMSE divided by the split-window's on the same rows, averaged over directions and seeds "
             "(lower is better). The recommendation is **chosen on other data than it is scored on**: zero-shot on "
             "the source region's held-out scenes; with k target samples on half of the random draws of k samples "
             "(even draws) and scored on the other half (odd draws). The candidates with k samples are every cell "
             "adapted on them (`transfer.method`: ridge update of the head pulled to the transferred weights, "
             "chosen by leave-one-out) and every cell left as it is ('no adaptation'). The oracle column is the "
             "best on the scoring data itself (optimistic).", "",
             "| target samples | recommended (chosen on) | score | oracle (best on the scored data) | score |",
             "|---" * 5 + "|"]
    sw_t, sw_s = ok["cross_site_sw_rmse_k"], ok["in_domain_sw_rmse_k"]
    cols = [*plotting.learning_columns(ok),
            (f"source region, ~{ok['in_domain_n'].mean():.0f} held-out rows (in-domain)", "in_domain_rmse_k")]
    for label, col in cols:
        if col not in ok or not ok[col].notna().any():
            continue
        if col.startswith("few_shot_"):
            k = col.removesuffix("_rmse_k")
            if f"{k}_draws_rmse_k" not in ok:
                continue
            adapted = ok[["model", "strategy"]].assign(
                choose=_draws(ok, f"{k}_draws_rmse_k", slice(0, None, 2)) / sw_t,
                score=_draws(ok, f"{k}_draws_rmse_k", slice(1, None, 2)) / sw_t)
            zero = ok[["model", "strategy"]].assign(
                strategy=ok["strategy"] + " (no adaptation)",
                choose=_draws(ok, f"{k}_zero_shot_draws_rmse_k", slice(0, None, 2)) / sw_t,
                score=_draws(ok, f"{k}_zero_shot_draws_rmse_k", slice(1, None, 2)) / sw_t)
            frame, on = pd.concat([adapted, zero], ignore_index=True), "even draws"
        elif col == "cross_site_rmse_k":
            frame = ok[["model", "strategy"]].assign(choose=ok["in_domain_rmse_k"] / sw_s, score=ok[col] / sw_t)
            on = "source held-out scenes"
        else:
            frame = ok[["model", "strategy"]].assign(choose=ok[col] / sw_s, score=ok[col] / sw_s)
            on = "the same rows (in-domain)"
        g = frame.groupby(["model", "strategy"])[["choose", "score"]]
        s = g.mean().join(g.std()["score"].rename("sd")).dropna(subset=["choose", "score"])
        if s.empty:
            continue
        pick, oracle = s["choose"].idxmin(), s["score"].idxmin()
        lines.append(f"| {label} | {pick[0]} + {pick[1]} ({on}) | {_pm(s.loc[pick, 'score'], s.loc[pick, 'sd'])} | "
                     f"{oracle[0]} + {oracle[1]} | {_pm(s.loc[oracle, 'score'], s.loc[oracle, 'sd'])} |")
    lines += _few_shot_lines(ok)
    return [*lines, ""]


def _few_shot_lines(ok: pd.DataFrame) -> list[str]:
    """Few-shot against zero-shot on the same scoring rows, per direction and model (mean over draws, seeds and
    strategies): adaptation should never hurt in expectation."""
    ks = [int(lab) for lab, _ in plotting.learning_columns(ok)[1:]]
    ks = [k for k in ks if f"few_shot_k{k}_zero_shot_rmse_k" in ok]
    if not ks:
        return []
    lines = ["", "### Few-shot against zero-shot on the same rows", "",
             "Mean RMSE (K) over draws, seeds and strategies; zero-shot scored on the same rows as each draw.", "",
             "| direction | model | " + " | ".join(f"k={k}: zero-shot → few-shot" for k in ks) + " | never worse |",
             "|---" * (len(ks) + 3) + "|"]
    for (direction, model), sub in ok.groupby(["direction", "model"]):
        cells, fine = [], True
        for k in ks:
            z, f = float(sub[f"few_shot_k{k}_zero_shot_rmse_k"].mean()), float(sub[f"few_shot_k{k}_rmse_k"].mean())
            cells.append(f"{z:.2f} → {f:.2f}")
            fine = fine and f <= z + 1e-9
        lines.append(f"| {direction} | {model} | " + " | ".join(cells) + f" | {'yes' if fine else '**no**'} |")
    return lines
