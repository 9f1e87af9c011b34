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

import numpy as np
import pyarrow.dataset as ds

__all__ = ["foundation_report"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def foundation_report(sim: str | os.PathLike[str], sw_json: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], *, sample: int = 200_000, seed: int = 0) -> Path:
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
        "# sftl-dask foundation report",
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
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
