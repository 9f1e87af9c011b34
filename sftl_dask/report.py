"""Reports people read: Markdown with PNG figures.

:func:`foundation_report` summarises a simulation table and its split-window fit: the
table's coverage (WVC, LST - air temperature, view angles, emissivity classes), the
per-window fit quality on held-out rows, and a scatter of split-window LST against the
simulated truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds

__all__ = ["demo_report", "foundation_report"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def foundation_report(sim: str | os.PathLike[str], sw_json: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], *, sample: int = 200_000, seed: int = 0) -> Path:
    """Write ``report.md`` (and its figures) for a simulation table and its split-window fit; see
    :func:`_foundation_lines`."""
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(["# sftl-dask foundation report", "", *_foundation_lines(sim, sw_json, out_dir,
                                                                                     sample=sample, seed=seed)]))
    return path


def _foundation_lines(sim: str | os.PathLike[str], sw_json: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], *, sample: int = 200_000, seed: int = 0) -> list[str]:
    """Write ``report.md`` and figures for a simulation table and its split-window fit.

    Parameters
    ----------
    sim : path
        Simulation table (Parquet dataset from ``sftl simulate``).
    sw_json : path
        Coefficients from ``sftl fit-sw``.
    out_dir : path
        Where ``report.md``, ``sim_coverage.png`` and ``sw_fit.png`` go.
    sample : int, optional
        Rows drawn (without replacement) for the figures and the scatter statistics.
    seed : int, optional
        Seed of that draw.

    Returns
    -------
    pathlib.Path
        The report's path.
    """
    from sftl_dask.physics.splitwindow import SplitWindowCoefficients, apply_split_window
    from sftl_dask.simulate import read_simulation_metadata

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = ds.dataset(sim, format="parquet").to_table()
    n_rows = table.num_rows
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n_rows, size=min(sample, n_rows), replace=False))
    cols = ["lst", "t_air", "wvc", "vza", "bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95", "category"]
    d = {c: table.column(c).take(idx).to_numpy(zero_copy_only=False) for c in cols}
    meta = read_simulation_metadata(sim)
    coeffs = SplitWindowCoefficients.from_dict(json.loads(Path(sw_json).read_text()))
    lst_sw = apply_split_window(coeffs, d["bt_10_80"], d["bt_11_95"], d["emis_10_80"], d["emis_11_95"],
                                d["wvc"], d["vza"])
    err = lst_sw - d["lst"]

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].hist(d["wvc"], bins=50, color="#3b75af")
    ax[0].set_xlabel("WVC (g cm$^{-2}$)")
    ax[0].set_ylabel("samples")
    ax[1].hist(d["lst"] - d["t_air"], bins=50, color="#e1812c")
    ax[1].set_xlabel("LST − bottom air temperature (K)")
    cats, counts = np.unique(d["category"].astype(str), return_counts=True)
    ax[2].barh(cats, counts, color="#3a923a")
    ax[2].set_xlabel("samples")
    ax[2].set_title("emissivity classes")
    fig.suptitle(f"simulation table: {n_rows:,} rows")
    fig.tight_layout()
    fig.savefig(out / "sim_coverage.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    ax[0].scatter(d["lst"], lst_sw, s=1, alpha=0.2, color="#3b75af")
    lim = [float(np.min(d["lst"])), float(np.max(d["lst"]))]
    ax[0].plot(lim, lim, "k--", lw=0.8)
    ax[0].set_xlabel("simulated LST (K)")
    ax[0].set_ylabel("split-window LST (K)")
    ax[0].set_title(f"RMSE {np.sqrt(np.mean(err**2)):.2f} K, bias {np.mean(err):+.2f} K")
    edges = np.arange(0.0, 7.01, 0.5)
    which = np.digitize(d["wvc"], edges) - 1
    rmse = [np.sqrt(np.mean(err[which == i] ** 2)) if np.any(which == i) else np.nan for i in range(len(edges) - 1)]
    ax[1].bar(edges[:-1] + 0.25, rmse, width=0.45, color="#e1812c")
    ax[1].axhline(1.0, color="k", ls=":", lw=0.8)
    ax[1].set_xlabel("WVC (g cm$^{-2}$)")
    ax[1].set_ylabel("split-window RMSE (K)")
    fig.tight_layout()
    fig.savefig(out / "sw_fit.png", dpi=110)
    plt.close(fig)

    lines = [
        "## The simulation table",
        "",
        f"Simulation table `{sim}`: **{n_rows:,} rows** from {meta['config']['n_profiles']} profiles, "
        f"{len(meta['spectra'])} emissivity spectra, view angles {meta['config']['vza_deg']} deg, "
        f"{meta['config']['draws_per_combination']} LST draws per combination; radiative transfer: "
        f"{meta['rt_model']}.",
        "",
        "![coverage](sim_coverage.png)",
        "",
        "## Split-window baseline (fitted on the simulation)",
        "",
        "Per window, on rows held out of the fit:",
        "",
        "| WVC (g cm⁻²) | VZA (deg) | n train | RMSE train (K) | n held out | RMSE held out (K) | bias (K) |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in coeffs.to_dict()["windows"]:
        def f(v: object, fmt: str) -> str:
            return format(v, fmt) if isinstance(v, int | float) and v == v else "–"
        lines.append(
            f"| {w['wvc_min']:.1f}–{w['wvc_max']:.1f} | {w['vza_min']:.0f}–{w['vza_max']:.0f} | "
            f"{f(w.get('n_train'), 'd')} | {f(w.get('rmse_train_k'), '.3f')} | {f(w.get('n_holdout'), 'd')} | "
            f"{f(w.get('rmse_holdout_k'), '.3f')} | {f(w.get('bias_holdout_k'), '+.3f')} |"
        )
    lines += [
        "",
        f"Applied with window blending to a {len(idx):,}-row sample: RMSE {np.sqrt(np.mean(err**2)):.3f} K, "
        f"bias {np.mean(err):+.3f} K (this sample includes rows used in the fit).",
        "",
        "![split-window](sw_fit.png)",
        "",
    ]
    return lines


def demo_report(data: dict[str, Any], results: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write the demo's ``report.md``: simulation and split-window, the testbed's matchups, and the three
    SFTL stages against the baselines, with figures.

    Parameters
    ----------
    data : dict
        From :func:`sftl_dask.training.stages.prepare_data`.
    results : dict
        From :func:`sftl_dask.training.stages.run_stages`.
    out_dir : path
        Where the report and figures go.

    Returns
    -------
    pathlib.Path
        The report's path.
    """
    plt = _plt()
    out = Path(out_dir)
    sw_json = out / "work" / "sw.json"
    lines = ["# sftl-dask demo report", "",
             "The main job end to end on the testbed (synthetic world in the real formats, see docs/testbed.md): "
             "simulation -> split-window; testbed -> `sftl ingest` -> matchups; the three SFTL stages. "
             "**These are testbed figures, not the paper's real-data numbers.**", ""]
    lines += _foundation_lines(data["sim"], sw_json, out)
    mu = data["matchups"]
    counts = mu.groupby(["region", "reason"]).size().unstack(fill_value=0)
    lines += ["## Matchups (site x scene)", "", "| region | " + " | ".join(counts.columns) + " |",
              "|---" * (len(counts.columns) + 1) + "|"]
    for reg, row in counts.iterrows():
        lines.append(f"| {reg} | " + " | ".join(str(int(v)) for v in row.to_numpy()) + " |")
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
              f"| 3 same rows: direct training on source matchups | {r(s3['direct_training'])} |", ""]
    if s3["few_shot"]:
        lines += ["Few-shot adaptation on k target samples (RMSE on the remaining target rows, mean ± sd over "
                  "draws):", "", "| k | RMSE (K) |", "|---|---|"]
        lines += [f"| {f['k']} | {f['rmse_k_mean']:.2f} ± {f['rmse_k_sd']:.2f} |" for f in s3["few_shot"]]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    names = ["split-window", "direct", "pre-trained", "SFTL"]
    vals = [s3["split_window"]["rmse_k"], s3["direct_training"]["rmse_k"], s3["pretrained_only"]["rmse_k"],
            s3["zero_shot"]["rmse_k"]]
    ax[0].bar(names, vals, color=["#999999", "#e1812c", "#3b75af", "#3a923a"])
    ax[0].set_ylabel("cross-site RMSE (K)")
    ax[0].set_title(f"transfer to the target region ({results['direction']})")
    if s3["few_shot"]:
        ks = [0] + [f["k"] for f in s3["few_shot"]]
        ys = [s3["zero_shot"]["rmse_k"]] + [f["rmse_k_mean"] for f in s3["few_shot"]]
        es = [0.0] + [f["rmse_k_sd"] for f in s3["few_shot"]]
        ax[1].errorbar(ks, ys, yerr=es, marker="o")
        ax[1].axhline(s3["split_window"]["rmse_k"], color="#999999", ls="--", label="split-window")
        ax[1].set_xlabel("target samples k")
        ax[1].set_ylabel("RMSE (K)")
        ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "sftl.png", dpi=110)
    plt.close(fig)
    lines += ["", "![sftl](sftl.png)", "", f"Artifact: `{out / 'model'}` (TorchScript + card.json + sha256).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
