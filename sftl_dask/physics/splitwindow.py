"""Generalized split-window LST: Wan & Dozier (1996) with Wan (2014)'s quadratic term.

The form, with brightness temperatures ``Ti``, ``Tj`` (K) of a channel pair and
their emissivities ``ei``, ``ej``::

    Ts = C + (A1 + A2 (1-e)/e + A3 de/e**2) (Ti+Tj)/2
           + (B1 + B2 (1-e)/e + B3 de/e**2) (Ti-Tj)/2 + D (Ti-Tj)**2,
    e = (ei + ej)/2,  de = ei - ej.

Coefficients are regressed on a simulation table separately in each view-zenith
band and each column water vapour (WVC) window; WVC windows overlap
(FACTS.md, "Split-window forms"). Applying them, a pixel takes its view-zenith
band and, inside it, the WVC window containing its WVC; in the overlap of two
windows the coefficients are blended linearly by the position in the overlap,
which (the form being linear in its coefficients) is the same as blending the
two windows' LST and leaves no seam at window edges.

Units: K for temperatures, unitless emissivities, g cm^-2 for WVC, degrees for
the view zenith angle (VZA). numpy only; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.physics.checks import check_range

__all__ = [
    "COEFFICIENT_NAMES",
    "SplitWindowCoefficients",
    "SplitWindowWindow",
    "apply_split_window",
    "design_matrix",
    "fit_split_window",
    "holdout_report",
]

#: Coefficient names in design-matrix column order.
COEFFICIENT_NAMES: tuple[str, ...] = ("C", "A1", "A2", "A3", "B1", "B2", "B3", "D")
#: Name of the form, written into coefficient files.
_FORM = "wan_dozier_1996_generalized_quadratic"
#: Version of the ``to_dict`` layout; bump when it changes incompatibly.
_SCHEMA_VERSION = 1

_DEFAULT_WVC_WINDOWS = ((0.0, 2.5), (2.0, 3.5), (3.0, 4.5), (4.0, 5.5), (5.0, 6.5))
_DEFAULT_VZA_WINDOWS = ((0.0, 15.0), (15.0, 35.0), (35.0, 65.0))

# Valid input ranges: a value outside is a unit or scaling error, not a surface.
_BT_RANGE_K = (150.0, 400.0)
_EMIS_RANGE = (0.5, 1.0)
_WVC_RANGE_G_CM2 = (0.0, 15.0)  # ERA5 tcwv tops out near 8 g cm-2
_VZA_RANGE_DEG = (0.0, 90.0)
# Narrowest blend zone (g cm-2): touching windows switch at the shared edge.
_MIN_ZONE_WIDTH = 1e-9

_WINDOW_REQUIRED = ("wvc_min", "wvc_max", "vza_min", "vza_max", "coefficients")
_TOP_REQUIRED = ("schema_version", "form", "channel_i", "channel_j", "windows")


@dataclass(frozen=True)
class SplitWindowWindow:
    """Coefficients of one (VZA band x WVC window) cell and their fit statistics.

    Attributes
    ----------
    wvc_min, wvc_max : float
        WVC interval (g cm^-2) of the training rows.
    vza_min, vza_max : float
        View zenith band (deg).
    coefficients : dict of str to float, or None
        ``{C, A1, A2, A3, B1, B2, B3, D}`` (K for C, K/K for A and B, K^-1 for D);
        None when the window could not be fitted (see ``reason``).
    n_train, n_holdout : int
        Training and held-out rows falling in the window.
    rmse_train_k, bias_train_k, rmse_holdout_k, bias_holdout_k : float or None
        RMSE and bias (mean of retrieved minus target, K) of this window's own
        coefficients on its training and held-out rows; None when not available.
    rank : int or None
        Rank of the training design matrix (8 when all coefficients are determined).
    reason : str or None
        Why the window is empty, or a warning about the fit (e.g. rank deficiency).
    """

    wvc_min: float
    wvc_max: float
    vza_min: float
    vza_max: float
    coefficients: dict[str, float] | None
    n_train: int = 0
    rmse_train_k: float | None = None
    bias_train_k: float | None = None
    n_holdout: int = 0
    rmse_holdout_k: float | None = None
    bias_holdout_k: float | None = None
    rank: int | None = None
    reason: str | None = None

    @property
    def fitted(self) -> bool:
        """True when the window holds coefficients."""
        return self.coefficients is not None


@dataclass(frozen=True)
class _Lookup:
    """Per-pixel window selection tables, built once per coefficient set."""

    vza_edges: NDArray[np.float64]  # interior VZA band edges (deg), for searchsorted
    band_map: NDArray[np.intp]  # VZA band -> band whose windows are used (nearest fitted band)
    zone_start: NDArray[np.float64]  # (bands, zones) start of each blend zone (g cm-2), +inf padding
    zone_width: NDArray[np.float64]  # (bands, zones) width of each blend zone (g cm-2)
    coef_t: NDArray[np.float64]  # (8, bands * stride) coefficients, last window repeated as padding
    step_t: NDArray[np.float64]  # (8, bands * stride) next window's coefficients minus these
    stride: int


@dataclass(frozen=True)
class SplitWindowCoefficients:
    """A fitted split-window algorithm: channel pair and per-window coefficients.

    Attributes
    ----------
    channel_i, channel_j : str
        Brightness-temperature variables of the pair, e.g. ``"bt_10_80"``, ``"bt_11_95"``;
        their emissivities are the matching ``emis_*`` variables.
    windows : tuple of SplitWindowWindow
        All cells, fitted or empty. Within each VZA band the WVC windows are
        ordered and at most two overlap at any WVC; VZA bands are contiguous.
    form : str
        Name of the regression form.
    target : str
        Column the coefficients were fitted to.
    holdout_fraction, seed, holdout_group : optional
        How held-out rows were drawn (None for coefficients not fitted here).
    overall : dict
        Metrics of the blended retrieval on all held-out rows:
        ``n_holdout``, ``rmse_holdout_k``, ``bias_holdout_k``.
    schema_version : int
        Layout version of :meth:`to_dict`.

    Raises
    ------
    ValueError
        On an unknown form or schema version, bad channel names, incomplete
        coefficients or a window layout that cannot be applied.
    """

    channel_i: str
    channel_j: str
    windows: tuple[SplitWindowWindow, ...]
    form: str = _FORM
    target: str = "lst"
    holdout_fraction: float | None = None
    seed: int | None = None
    holdout_group: str | None = None
    overall: dict[str, Any] = field(default_factory=dict)
    schema_version: int = _SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "windows", tuple(self.windows))
        if self.schema_version != _SCHEMA_VERSION:
            raise ValueError(f"schema_version: {self.schema_version!r} is not supported (expected {_SCHEMA_VERSION})")
        if self.form != _FORM:
            raise ValueError(f"form: {self.form!r} is not supported (expected {_FORM!r})")
        _emis_name("channel_i", self.channel_i)
        _emis_name("channel_j", self.channel_j)
        if self.channel_i == self.channel_j:
            raise ValueError(f"channel_j: same channel as channel_i ({self.channel_i!r})")
        for n, w in enumerate(self.windows):
            if w.coefficients is None:
                continue
            missing = [k for k in COEFFICIENT_NAMES if k not in w.coefficients]
            if missing:
                raise ValueError(f"windows[{n}].coefficients: missing key {missing[0]!r}")
            if not all(math.isfinite(float(w.coefficients[k])) for k in COEFFICIENT_NAMES):
                raise ValueError(f"windows[{n}].coefficients: non-finite value")
        bands = _bands(self.windows)
        _check_layout("vza_windows", list(bands), overlapping=False)
        for (vlo, vhi), members in bands.items():
            _check_layout(f"wvc_windows (vza {vlo:g}-{vhi:g} deg)", [(w.wvc_min, w.wvc_max) for w in members],
                          overlapping=True)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (plain floats, ints, strings, None) with ``schema_version``."""
        return {
            "schema_version": self.schema_version,
            "form": self.form,
            "channel_i": self.channel_i,
            "channel_j": self.channel_j,
            "target": self.target,
            "holdout_fraction": self.holdout_fraction,
            "seed": self.seed,
            "holdout_group": self.holdout_group,
            "overall": dict(self.overall),
            "windows": [asdict(w) for w in self.windows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitWindowCoefficients:
        """Rebuild from :meth:`to_dict` output (e.g. after a JSON round trip).

        Required keys: ``schema_version``, ``form``, ``channel_i``, ``channel_j``,
        ``windows``; per window ``wvc_min``, ``wvc_max``, ``vza_min``, ``vza_max``,
        ``coefficients`` (all of ``C A1 A2 A3 B1 B2 B3 D``, or null for an empty
        window). Fit statistics are optional, so published coefficients can be
        entered by hand.

        Raises
        ------
        ValueError
            Naming the first missing key, or whatever :class:`SplitWindowCoefficients` rejects.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"split-window coefficients: expected a mapping, got {type(data).__name__}")
        for key in _TOP_REQUIRED:
            if key not in data:
                raise ValueError(f"split-window coefficients: missing key {key!r}")
        if not isinstance(data["windows"], Sequence) or isinstance(data["windows"], str):
            raise ValueError("windows: expected a list of windows")
        windows = []
        for n, wd in enumerate(data["windows"]):
            if not isinstance(wd, Mapping):
                raise ValueError(f"windows[{n}]: expected a mapping")
            for key in _WINDOW_REQUIRED:
                if key not in wd:
                    raise ValueError(f"windows[{n}]: missing key {key!r}")
            raw = wd["coefficients"]
            if raw is not None:
                if not isinstance(raw, Mapping):
                    raise ValueError(f"windows[{n}].coefficients: expected a mapping or null")
                for key in COEFFICIENT_NAMES:
                    if key not in raw:
                        raise ValueError(f"windows[{n}].coefficients: missing key {key!r}")
                raw = {k: float(raw[k]) for k in COEFFICIENT_NAMES}
            windows.append(
                SplitWindowWindow(
                    wvc_min=float(wd["wvc_min"]), wvc_max=float(wd["wvc_max"]),
                    vza_min=float(wd["vza_min"]), vza_max=float(wd["vza_max"]),
                    coefficients=raw,
                    n_train=int(wd.get("n_train", 0)),
                    rmse_train_k=_opt_float(wd.get("rmse_train_k")),
                    bias_train_k=_opt_float(wd.get("bias_train_k")),
                    n_holdout=int(wd.get("n_holdout", 0)),
                    rmse_holdout_k=_opt_float(wd.get("rmse_holdout_k")),
                    bias_holdout_k=_opt_float(wd.get("bias_holdout_k")),
                    rank=None if wd.get("rank") is None else int(wd["rank"]),
                    reason=wd.get("reason"),
                )
            )
        return cls(
            channel_i=str(data["channel_i"]),
            channel_j=str(data["channel_j"]),
            windows=tuple(windows),
            form=str(data["form"]),
            target=str(data.get("target", "lst")),
            holdout_fraction=_opt_float(data.get("holdout_fraction")),
            seed=None if data.get("seed") is None else int(data["seed"]),
            holdout_group=data.get("holdout_group"),
            overall=dict(data.get("overall") or {}),
            schema_version=data["schema_version"],
        )

    # -- application tables --------------------------------------------------------------------
    @cached_property
    def _lookup(self) -> _Lookup:
        """Tables for :func:`apply_split_window`, built on first use (raises when nothing is fitted)."""
        bands = _bands(self.windows)
        keys = list(bands)
        fitted = [[w for w in bands[k] if w.fitted] for k in keys]
        has = np.array([len(f) > 0 for f in fitted])
        if not has.any():
            raise ValueError("split-window coefficients: no fitted window to apply (all windows are empty)")
        centres = np.array([(lo + hi) / 2 for lo, hi in keys])
        band_map = np.array(
            [b if has[b] else int(np.flatnonzero(has)[np.argmin(np.abs(centres[has] - centres[b]))])
             for b in range(len(keys))],
            dtype=np.intp,
        )
        n_max = max(len(f) for f in fitted)
        stride = n_max + 1
        n_zones = max(n_max - 1, 1)
        zone_start = np.full((len(keys), n_zones), np.inf)
        zone_width = np.ones((len(keys), n_zones))
        coef = np.zeros((len(keys), stride, len(COEFFICIENT_NAMES)))
        for b, ws in enumerate(fitted):
            if not ws:
                continue
            for k in range(len(ws) - 1):
                # Overlap: blend across [lo_{k+1}, hi_k]. Gap left by an empty window: blend across it.
                a, c = sorted((ws[k + 1].wvc_min, ws[k].wvc_max))
                zone_start[b, k] = a
                zone_width[b, k] = max(c - a, _MIN_ZONE_WIDTH)
            rows = [[w.coefficients[n] for n in COEFFICIENT_NAMES] for w in ws]  # type: ignore[index]
            rows += [rows[-1]] * (stride - len(rows))
            coef[b] = rows
        coef_t = np.ascontiguousarray(coef.reshape(-1, len(COEFFICIENT_NAMES)).T)
        step_t = np.zeros_like(coef_t)
        step_t[:, :-1] = coef_t[:, 1:] - coef_t[:, :-1]
        return _Lookup(
            vza_edges=np.array([hi for _, hi in keys[:-1]], dtype=np.float64),
            band_map=band_map,
            zone_start=zone_start,
            zone_width=zone_width,
            coef_t=coef_t,
            step_t=step_t,
            stride=stride,
        )


def design_matrix(bt_i: ArrayLike, bt_j: ArrayLike, emis_i: ArrayLike, emis_j: ArrayLike) -> NDArray[np.float64]:
    """Regressors of the generalized split-window form, one row per sample.

    Parameters
    ----------
    bt_i, bt_j : array_like
        Brightness temperatures (K, 150-400) of channels i and j; broadcast together and flattened.
    emis_i, emis_j : array_like
        Channel emissivities (unitless, 0.5-1).

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 8)``, columns in :data:`COEFFICIENT_NAMES` order:
        ``1, S, S r, S q, H, H r, H q, (Ti-Tj)^2`` with ``S = (Ti+Tj)/2``,
        ``H = (Ti-Tj)/2``, ``r = (1-e)/e``, ``q = de/e^2``.

    Raises
    ------
    ValueError
        Naming the argument that is non-finite or out of range.
    """
    ti, tj, ei, ej = (a.reshape(-1) for a in np.broadcast_arrays(
        check_range("bt_i", bt_i, *_BT_RANGE_K, unit="K"),
        check_range("bt_j", bt_j, *_BT_RANGE_K, unit="K"),
        check_range("emis_i", emis_i, *_EMIS_RANGE),
        check_range("emis_j", emis_j, *_EMIS_RANGE),
    ))
    s, h, r, q, dt2 = _terms(ti, tj, ei, ej)
    return np.column_stack([np.ones_like(s), s, s * r, s * q, h, h * r, h * q, dt2])


def _fit_columns(table: Mapping[str, ArrayLike], names: tuple[str, str, str, str, str]) -> dict[str, NDArray]:
    """The columns a fit reads, checked for range and length: the channel pair (K), their emissivities, ``wvc``
    (g cm^-2), ``vza`` (deg) and the target (K); ``names`` is (channel_i, channel_j, emis_i, emis_j, target)."""
    channel_i, channel_j, emis_i, emis_j, target = names
    cols = {}
    for name, bounds, unit in (
        (channel_i, _BT_RANGE_K, "K"), (channel_j, _BT_RANGE_K, "K"),
        (emis_i, _EMIS_RANGE, ""), (emis_j, _EMIS_RANGE, ""),
        ("wvc", _WVC_RANGE_G_CM2, "g cm-2"), ("vza", _VZA_RANGE_DEG, "deg"), (target, _BT_RANGE_K, "K"),
    ):
        cols[name] = check_range(name, _column(table, name), *bounds, unit=unit).reshape(-1)
    n = cols[channel_i].size
    for name, values in cols.items():
        if values.size != n:
            raise ValueError(f"{name}: {values.size} rows, but {channel_i} has {n}")
    if n == 0:
        raise ValueError(f"table: no rows in {channel_i}")
    return cols


def _fit_windows(x: NDArray, y: NDArray, wvc: NDArray, vza: NDArray, wvc_w: Sequence[tuple[float, float]],
                 vza_w: Sequence[tuple[float, float]], held: NDArray, min_rows: int) -> list[SplitWindowWindow]:
    """One least-squares fit per (VZA band, WVC window) cell, trained on the rows not ``held`` out."""
    band = np.searchsorted(np.array([hi for _, hi in vza_w[:-1]]), vza, side="right")
    windows = []
    for b, (vlo, vhi) in enumerate(vza_w):
        in_band = band == b
        for k, (wlo, whi) in enumerate(wvc_w):
            upper = wvc <= whi if k == len(wvc_w) - 1 else wvc < whi
            cell = in_band & (wvc >= wlo) & upper
            windows.append(_fit_window(x, y, cell & ~held, cell & held, (wlo, whi, vlo, vhi), min_rows))
    return windows


def fit_split_window(
    table: Mapping[str, ArrayLike],
    *,
    wvc_windows: Sequence[tuple[float, float]] = _DEFAULT_WVC_WINDOWS,
    vza_windows: Sequence[tuple[float, float]] = _DEFAULT_VZA_WINDOWS,
    channel_i: str = "bt_10_80",
    channel_j: str = "bt_11_95",
    target: str = "lst",
    holdout_fraction: float = 0.2,
    seed: int = 0,
    holdout_group: str | None = None,
    min_rows: int = 50,
) -> SplitWindowCoefficients:
    """Least-squares split-window coefficients per VZA band and WVC window.

    Why this is long: the numpydoc text of ten parameters and what they raise; the body is 29 lines, its
    steps already in helpers (:func:`_fit_columns`, :func:`_holdout_mask`, :func:`_fit_windows`).

    Parameters
    ----------
    table : mapping of str to array_like
        Columns ``channel_i``, ``channel_j`` (K), their ``emis_*`` columns (unitless),
        ``wvc`` (g cm^-2), ``vza`` (deg) and ``target`` (K); a pandas DataFrame works.
    wvc_windows : sequence of (float, float)
        WVC windows (g cm^-2), ordered; neighbours overlap or touch, never more
        than two overlap. A row belongs to ``[lo, hi)`` (the last window closed), so
        rows in an overlap train both windows. The lowest window is made to start
        at 0 and the highest to reach the largest WVC in the table.
    vza_windows : sequence of (float, float)
        Contiguous view-zenith bands (deg); the lowest is made to start at 0 and the
        highest to reach the largest VZA in the table.
    channel_i, channel_j : str
        The brightness-temperature pair (``bt_*``).
    target : str
        Column of the surface temperature to fit (K).
    holdout_fraction : float
        Share of rows (or of groups, see ``holdout_group``) held out, in [0, 1).
    seed : int
        Seed of the held-out draw; the same seed gives the same split.
    holdout_group : str, optional
        Column whose values are held out together (e.g. a profile id in a
        simulation table, so that held-out rows see unseen atmospheres).
    min_rows : int
        Windows with fewer training rows are recorded as empty with a reason (>= 8).

    Returns
    -------
    SplitWindowCoefficients
        Coefficients with per-window training and held-out RMSE / bias, and
        ``overall`` metrics of the blended retrieval on all held-out rows.

    Raises
    ------
    ValueError
        Naming the missing or bad column, or the bad window / holdout argument.
    """
    emis_i, emis_j = _emis_name("channel_i", channel_i), _emis_name("channel_j", channel_j)
    if channel_i == channel_j:
        raise ValueError(f"channel_j: same channel as channel_i ({channel_i!r})")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction: {holdout_fraction!r} is outside [0, 1)")
    if min_rows < len(COEFFICIENT_NAMES):
        raise ValueError(f"min_rows: {min_rows} is below the {len(COEFFICIENT_NAMES)} coefficients")
    cols = _fit_columns(table, (channel_i, channel_j, emis_i, emis_j, target))
    n = cols[channel_i].size
    wvc, vza, y = cols["wvc"], cols["vza"], cols[target]
    wvc_w = _normalise_windows("wvc_windows", wvc_windows, float(wvc.max()), overlapping=True)
    vza_w = _normalise_windows("vza_windows", vza_windows, float(vza.max()), overlapping=False)
    groups = None if holdout_group is None else np.asarray(_column(table, holdout_group)).reshape(-1)
    if groups is not None and groups.size != n:
        raise ValueError(f"{holdout_group}: {groups.size} rows, but {channel_i} has {n}")
    held = _holdout_mask(n, holdout_fraction, seed, groups)

    x = design_matrix(cols[channel_i], cols[channel_j], cols[emis_i], cols[emis_j])
    windows = _fit_windows(x, y, wvc, vza, wvc_w, vza_w, held, min_rows)
    coeffs = SplitWindowCoefficients(
        channel_i=channel_i, channel_j=channel_j, windows=tuple(windows), target=target,
        holdout_fraction=float(holdout_fraction), seed=int(seed), holdout_group=holdout_group,
    )
    rmse, bias = None, None
    if held.any() and any(w.fitted for w in windows):
        est = apply_split_window(coeffs, cols[channel_i][held], cols[channel_j][held], cols[emis_i][held],
                                 cols[emis_j][held], wvc[held], vza[held])
        rmse, bias = _metrics(est - y[held])
    return replace(coeffs, overall={"n_holdout": int(held.sum()), "rmse_holdout_k": rmse, "bias_holdout_k": bias})


def apply_split_window(
    coeffs: SplitWindowCoefficients,
    bt_i: ArrayLike,
    bt_j: ArrayLike,
    emis_i: ArrayLike,
    emis_j: ArrayLike,
    wvc: ArrayLike,
    vza: ArrayLike,
    *,
    allow_nan: bool = False,
    block_size: int = 65536,
) -> NDArray[np.floating]:
    """Land surface temperature (K) from split-window coefficients, pixel by pixel.

    Each pixel uses the VZA band containing its VZA (the edge band beyond the
    covered range) and, inside it, the WVC window containing its WVC; in the
    overlap of two windows the estimate is blended linearly between them by the
    position in the overlap, so the result is continuous in WVC. WVC beyond the
    covered range uses the edge window. Empty windows are skipped (their
    neighbours blend across the gap); a VZA band without fitted windows uses the
    nearest band that has some.

    Why this is long: the numpydoc text of nine parameters and the blending rules above; the body is 30 lines,
    most of them the one ``nditer`` call that keeps the temporaries in cache. Each block is checked by its
    extremes (the full check, naming the variable, only where they fail) and evaluated with scalar coefficients
    where its pixels share a window (the common case: a scene's chunk sits in one VZA band and mostly in one WVC
    window), else per pixel; a pixel gets the same bits either way.

    Parameters
    ----------
    coeffs : SplitWindowCoefficients
        Fitted coefficients; their ``channel_i`` / ``channel_j`` name the pair.
    bt_i, bt_j : array_like
        Brightness temperatures (K, 150-400) of the pair.
    emis_i, emis_j : array_like
        Their emissivities (unitless, 0.5-1).
    wvc : array_like
        Column water vapour (g cm^-2, 0-15).
    vza : array_like
        View zenith angle (deg, 0-90).
    allow_nan : bool, optional
        If true, a pixel with any NaN input gives NaN (masked pixels); otherwise NaN raises.
    block_size : int, optional
        Pixels evaluated at a time; the default keeps the temporaries in cache, so
        a Dask chunk of any size costs little more memory than its output.

    Returns
    -------
    numpy.ndarray
        LST (K) of the broadcast shape of the inputs; float32 when all inputs are
        float32 (or narrower), else float64. Computation is in float64.

    Raises
    ------
    ValueError
        Naming the variable (e.g. ``bt_10_80``, ``emis_11_95``, ``wvc``) that is
        non-finite (unless ``allow_nan``) or out of range, or when ``coeffs`` has
        no fitted window.
    """
    if block_size < 1:
        raise ValueError(f"block_size: {block_size} must be >= 1")
    lk = coeffs._lookup
    names = (coeffs.channel_i, coeffs.channel_j, _emis_name("channel_i", coeffs.channel_i),
             _emis_name("channel_j", coeffs.channel_j), "wvc", "vza")
    bounds = (_BT_RANGE_K, _BT_RANGE_K, _EMIS_RANGE, _EMIS_RANGE, _WVC_RANGE_G_CM2, _VZA_RANGE_DEG)
    units = ("K", "K", "", "", "g cm-2", "deg")
    arrays = [np.asarray(a) for a in (bt_i, bt_j, emis_i, emis_j, wvc, vza)]
    for name, a in zip(names, arrays, strict=True):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    result = np.empty(np.broadcast_shapes(*(a.shape for a in arrays)), dtype=np.result_type(*arrays, np.float32))
    # nditer broadcasts without materialising the broadcast inputs and hands out
    # float64 buffers of at most block_size pixels, so temporaries stay in cache.
    it = np.nditer(
        [*arrays, result],
        flags=["external_loop", "buffered", "zerosize_ok"],
        op_flags=[["readonly"]] * 6 + [["writeonly"]],
        op_dtypes=[np.float64] * 7,
        casting="same_kind",
        buffersize=block_size,
    )
    scratch = np.empty((_N_SCRATCH, min(block_size, max(result.size, 1))))
    with it:
        for *blocks, out in it:
            has_nan = False
            for nm, blk, (lo, hi), u in zip(names, blocks, bounds, units, strict=True):
                if not (lo <= blk.min(initial=lo) and blk.max(initial=hi) <= hi):  # NaN fails too
                    check_range(nm, blk, lo, hi, unit=u, allow_nan=allow_nan)  # raises, naming it, unless NaN
                    has_nan = True  # allowed: NaN and nothing out of range
            lst = _evaluate(lk, *blocks, has_nan=has_nan, scratch=scratch[:, :out.size], out=out)
            if lst is not out:
                out[...] = lst
    return result


def holdout_report(coeffs: SplitWindowCoefficients) -> list[dict[str, Any]]:
    """Per-window fit statistics as rows (``pandas.DataFrame(rows)`` prints them as a table).

    Returns
    -------
    list of dict
        One row per window, in the coefficients' order, with ``vza_min``,
        ``vza_max`` (deg), ``wvc_min``, ``wvc_max`` (g cm^-2), ``n_train``,
        ``rmse_train_k``, ``n_holdout``, ``rmse_holdout_k``, ``bias_holdout_k`` (K,
        None where not available) and ``note`` (empty-window reason or fit warning,
        else ``""``).
    """
    return [
        {
            "vza_min": w.vza_min, "vza_max": w.vza_max, "wvc_min": w.wvc_min, "wvc_max": w.wvc_max,
            "n_train": w.n_train, "rmse_train_k": w.rmse_train_k,
            "n_holdout": w.n_holdout, "rmse_holdout_k": w.rmse_holdout_k, "bias_holdout_k": w.bias_holdout_k,
            "note": w.reason or "",
        }
        for w in coeffs.windows
    ]


# -- private helpers ---------------------------------------------------------------------------


def _terms(
    ti: NDArray[np.float64], tj: NDArray[np.float64], ei: NDArray[np.float64], ej: NDArray[np.float64]
) -> tuple[NDArray[np.float64], ...]:
    """S = (Ti+Tj)/2, H = (Ti-Tj)/2, r = (1-e)/e, q = de/e^2 and (Ti-Tj)^2."""
    dt = ti - tj
    e = 0.5 * (ei + ej)
    inv_e = 1.0 / e
    return 0.5 * (ti + tj), 0.5 * dt, inv_e - 1.0, (ei - ej) * inv_e * inv_e, dt * dt


#: Rows of :func:`apply_split_window`'s scratch block: S, H, r, q, (Ti-Tj)^2 and two temporaries.
_N_SCRATCH = 7


def _terms_into(ti: NDArray[np.float64], tj: NDArray[np.float64], ei: NDArray[np.float64], ej: NDArray[np.float64],
                scratch: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """:func:`_terms` written into rows of ``scratch`` (the same operations, so the same bits); S, H, r, q, dt^2."""
    s, h, r, q, dt2 = scratch[:5]
    np.subtract(ti, tj, out=h)
    np.multiply(h, h, out=dt2)
    h *= 0.5
    np.add(ti, tj, out=s)
    s *= 0.5
    np.add(ei, ej, out=r)
    r *= 0.5
    np.divide(1.0, r, out=r)  # 1 / e
    np.subtract(ei, ej, out=q)
    q *= r
    q *= r
    r -= 1.0
    return s, h, r, q, dt2


def _form_into(c: Sequence[float], terms: Sequence[NDArray[np.float64]], out: NDArray[np.float64],
               tmp: NDArray[np.float64], tmp2: NDArray[np.float64]) -> NDArray[np.float64]:
    """The split-window form (K) with one set of coefficients ``c`` for every pixel, into ``out``.

    ``c0 + S (c1 + c2 r + c3 q) + H (c4 + c5 r + c6 q) + c7 dt^2``, summed in that order (the per-pixel form of
    :func:`_evaluate_general` gives the same bits for the same coefficients)."""
    s, h, r, q, dt2 = terms
    np.multiply(r, c[2], out=out)
    out += c[1]
    np.multiply(q, c[3], out=tmp)
    out += tmp
    out *= s
    out += c[0]
    np.multiply(r, c[5], out=tmp)
    tmp += c[4]
    np.multiply(q, c[6], out=tmp2)
    tmp += tmp2
    tmp *= h
    out += tmp
    np.multiply(dt2, c[7], out=tmp)
    out += tmp
    return out


def _evaluate(
    lk: _Lookup,
    ti: NDArray[np.float64],
    tj: NDArray[np.float64],
    ei: NDArray[np.float64],
    ej: NDArray[np.float64],
    wvc: NDArray[np.float64],
    vza: NDArray[np.float64],
    *,
    has_nan: bool,
    scratch: NDArray[np.float64],
    out: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Blended split-window LST (K) on one 1-D block of validated inputs (NaN only where ``has_nan``), in ``out``
    where it can (the block's output buffer).

    A block's pixels usually share one VZA band and one WVC window, outside the blend zones: the block's extremes
    tell, and that window's coefficients apply to every pixel as scalars (:func:`_form_into`). Other blocks take
    the per-pixel path (:func:`_evaluate_general`). Both give a pixel the same bits, whatever its block.
    """
    bad = None
    if has_nan:
        bad = ~(np.isfinite(ti) & np.isfinite(tj) & np.isfinite(ei) & np.isfinite(ej)
                & np.isfinite(wvc) & np.isfinite(vza))
        # Placeholder values keep the window lookup defined; these pixels become NaN below.
        ti, tj, ei, ej, wvc, vza = (np.where(bad, fill, a) for a, fill in
                                    zip((ti, tj, ei, ej, wvc, vza), (300.0, 300.0, 1.0, 1.0, 0.0, 0.0), strict=True))
    col = _uniform_window(lk, wvc, vza)
    if col is None:
        lst = _evaluate_general(lk, ti, tj, ei, ej, wvc, vza)
    else:
        lst = _form_into(lk.coef_t[:, col], _terms_into(ti, tj, ei, ej, scratch), out, *scratch[5:7])
    if bad is not None:
        lst[bad] = np.nan
    return lst


def _uniform_window(lk: _Lookup, wvc: NDArray[np.float64], vza: NDArray[np.float64]) -> int | None:
    """The column of :attr:`_Lookup.coef_t` every pixel of a block uses unblended, or None if they differ.

    The window position is monotonic in WVC, so the block's extremes decide: each zone's weight is 0 or 1 for
    both (computed as :func:`_evaluate_general` does, so the per-pixel path would find the same window)."""
    if not wvc.size:
        return None
    band = 0
    if lk.vza_edges.size:
        raw = np.searchsorted(lk.vza_edges, [vza.min(), vza.max()], side="right")
        if raw[0] != raw[1]:
            return None
        band = int(lk.band_map[raw[0]])
    k = 0
    ends = np.array([wvc.min(), wvc.max()])
    for z in range(lk.zone_start.shape[1]):
        start = lk.zone_start[band, z]
        if np.isinf(start):
            break  # padding: this band has no more windows
        t = np.clip((ends - start) / lk.zone_width[band, z], 0.0, 1.0)
        if t[0] != t[1] or 0.0 < t[0] < 1.0:
            return None  # some pixels blend, or sit in different windows
        k += int(t[0])
    return band * lk.stride + k


def _evaluate_general(
    lk: _Lookup,
    ti: NDArray[np.float64],
    tj: NDArray[np.float64],
    ei: NDArray[np.float64],
    ej: NDArray[np.float64],
    wvc: NDArray[np.float64],
    vza: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Blended split-window LST (K) of finite, validated pixels, with per-pixel band, window and coefficients."""
    band: int | NDArray[np.intp] = 0
    if lk.vza_edges.size and vza.size:
        band = lk.band_map[np.searchsorted(lk.vza_edges, vza, side="right")]
    # Window position: integer part = lower window, fraction = blend weight of the next one.
    pos = np.zeros_like(wvc)
    for z in range(lk.zone_start.shape[1]):
        if isinstance(band, int):
            start, width = lk.zone_start[band, z], lk.zone_width[band, z]
            if np.isinf(start):
                break  # padding: this band has no more windows
        else:
            start, width = lk.zone_start[:, z].take(band), lk.zone_width[:, z].take(band)
        t = wvc - start
        t /= width
        np.clip(t, 0.0, 1.0, out=t)
        pos += t
    k = pos.astype(np.intp)
    frac = pos - k
    idx = band * lk.stride + k
    c = []
    for row, step in zip(lk.coef_t, lk.step_t, strict=True):
        cj = row.take(idx)
        cj += frac * step.take(idx)
        c.append(cj)
    s, h, r, q, dt2 = _terms(ti, tj, ei, ej)
    return c[0] + s * (c[1] + c[2] * r + c[3] * q) + h * (c[4] + c[5] * r + c[6] * q) + c[7] * dt2


def _fit_window(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    train: NDArray[np.bool_],
    hold: NDArray[np.bool_],
    bounds: tuple[float, float, float, float],
    min_rows: int,
) -> SplitWindowWindow:
    """Least squares on one window's training rows, with train and held-out metrics."""
    wlo, whi, vlo, vhi = bounds
    n_train, n_hold = int(train.sum()), int(hold.sum())
    base = {"wvc_min": wlo, "wvc_max": whi, "vza_min": vlo, "vza_max": vhi, "n_train": n_train, "n_holdout": n_hold}
    if n_train < min_rows:
        return SplitWindowWindow(coefficients=None, reason=f"too few training rows ({n_train} < {min_rows})", **base)
    xt, yt = x[train], y[train]
    # Scale columns to unit norm: S (~300 K) and the emissivity terms (~1 K) differ by 10^2-10^3.
    scale = np.sqrt(np.einsum("ij,ij->j", xt, xt))
    scale[scale == 0.0] = 1.0
    sol, _, rank, _ = np.linalg.lstsq(xt / scale, yt, rcond=None)
    beta = sol / scale
    reason = None
    if rank < len(COEFFICIENT_NAMES):
        reason = (f"rank-deficient design (rank {rank} of {len(COEFFICIENT_NAMES)}): emissivities too uniform; "
                  "minimum-norm coefficients")
    rmse_train, bias_train = _metrics(xt @ beta - yt)
    rmse_hold, bias_hold = _metrics(x[hold] @ beta - y[hold])
    return SplitWindowWindow(
        coefficients={k: float(v) for k, v in zip(COEFFICIENT_NAMES, beta, strict=True)},
        rmse_train_k=rmse_train, bias_train_k=bias_train, rmse_holdout_k=rmse_hold, bias_holdout_k=bias_hold,
        rank=int(rank), reason=reason, **base,
    )


def _metrics(residual: NDArray[np.float64]) -> tuple[float | None, float | None]:
    """RMSE and bias (K) of residuals (retrieved minus target); None for no residuals."""
    if residual.size == 0:
        return None, None
    return float(np.sqrt(np.mean(residual * residual))), float(residual.mean())


def _holdout_mask(n: int, fraction: float, seed: int, groups: NDArray[Any] | None) -> NDArray[np.bool_]:
    """Boolean mask of held-out rows: a seeded random ``fraction`` of rows, or of whole groups."""
    rng = np.random.default_rng(seed)
    if groups is None:
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: round(fraction * n)]] = True
        return mask
    uniq, inverse = np.unique(groups, return_inverse=True)
    chosen = np.zeros(uniq.size, dtype=bool)
    chosen[rng.permutation(uniq.size)[: round(fraction * uniq.size)]] = True
    return chosen[inverse.reshape(-1)]


def _normalise_windows(
    name: str, windows: Sequence[tuple[float, float]], data_max: float, *, overlapping: bool
) -> list[tuple[float, float]]:
    """Windows as float pairs, lowest starting at 0 and highest reaching ``data_max``."""
    arr = np.asarray(windows, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty sequence of (min, max) pairs")
    pairs = [(float(lo), float(hi)) for lo, hi in arr]
    pairs[0] = (0.0, pairs[0][1])
    pairs[-1] = (pairs[-1][0], max(pairs[-1][1], data_max))
    _check_layout(name, pairs, overlapping=overlapping)
    return pairs


def _check_layout(name: str, pairs: list[tuple[float, float]], *, overlapping: bool) -> None:
    """Raise unless windows are ordered and either overlap pairwise (WVC) or tile (VZA)."""
    for k, (lo, hi) in enumerate(pairs):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{name}: window {k} ({lo:g}, {hi:g}) must have finite min < max")
    for k in range(len(pairs) - 1):
        (lo0, hi0), (lo1, hi1) = pairs[k], pairs[k + 1]
        if overlapping:
            if not (lo0 < lo1 <= hi0 < hi1):
                raise ValueError(f"{name}: windows {k} ({lo0:g}, {hi0:g}) and {k + 1} ({lo1:g}, {hi1:g}) "
                                 "must be ordered and overlap or touch")
            if k + 2 < len(pairs) and pairs[k + 2][0] < hi0:
                raise ValueError(f"{name}: windows {k} and {k + 2} overlap; at most two windows may overlap")
        elif lo1 != hi0:
            raise ValueError(f"{name}: windows {k} ({lo0:g}, {hi0:g}) and {k + 1} ({lo1:g}, {hi1:g}) "
                             "must be contiguous")


def _bands(windows: Sequence[SplitWindowWindow]) -> dict[tuple[float, float], list[SplitWindowWindow]]:
    """Windows grouped by VZA band, bands ordered by VZA and windows by WVC."""
    if not windows:
        raise ValueError("windows: no windows")
    out: dict[tuple[float, float], list[SplitWindowWindow]] = {}
    for w in windows:
        out.setdefault((w.vza_min, w.vza_max), []).append(w)
    return {k: sorted(out[k], key=lambda w: (w.wvc_min, w.wvc_max)) for k in sorted(out)}


def _emis_name(arg: str, channel: str) -> str:
    """Emissivity variable matching a brightness-temperature variable (``bt_10_80`` -> ``emis_10_80``)."""
    if not isinstance(channel, str) or not channel.startswith("bt_") or len(channel) <= 3:
        raise ValueError(f"{arg}: {channel!r} is not a brightness-temperature variable like 'bt_10_80'")
    return "emis_" + channel[3:]


def _column(table: Mapping[str, ArrayLike], name: str) -> NDArray[Any]:
    """One column of ``table`` as an array; ValueError naming it when absent."""
    try:
        return np.asarray(table[name])
    except (KeyError, IndexError):
        raise ValueError(f"table: missing column {name!r}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
