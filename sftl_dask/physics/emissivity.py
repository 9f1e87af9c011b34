"""Surface emissivity: the embedded spectral library, band averaging, ASTER to VIMI, VCM and broadband.

The embedded library (``sftl_dask/data/emissivity_library.csv``, long format, rebuilt by
``tools/build_emissivity_library.py``) holds sourced spectra (ASTER spectral library v2
samples, the CRTM NPOESS surface-type table, class averages, water and snow values) and
documented parametric spectra that widen the thin classes (rocks, quartz-graded soils,
sands, wet soils, soil-vegetation mixtures). Every spectrum covers 7.5-13.5 um and says
where it comes from in its ``source``. See ``docs/emissivity.md``.

Emissivity is unitless (0-1), wavelength in um, NDVI unitless (-1 to 1). Bad input
raises ``ValueError`` naming the variable; no function returns a silent NaN unless the
caller passed NaN with ``allow_nan=True`` (masked pixels).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.physics.channels import Channel, thermal_channels
from sftl_dask.physics.checks import check_range

__all__ = [
    "CATEGORIES",
    "Spectrum",
    "aster_tir_channels",
    "aster_to_vimi",
    "band_emissivity",
    "broadband_emissivity",
    "default_library",
    "fit_aster_to_vimi",
    "vegetation_cover_method",
]

#: Surface categories of library spectra.
CATEGORIES: tuple[str, ...] = ("soil", "rock", "sand", "vegetation", "water", "snow_ice", "man_made")

# Vegetation Cover Method constants as run operationally by ECOSTRESS L2 (FACTS.md, Emissivity).
_VCM_WATER = 0.99
_VCM_SNOW = 0.985
# Above this GED vegetation fraction the bare-ground emissivity (eps_GED - eps_v fv)/(1 - fv)
# amplifies GED noise more than 100-fold; the GED value is kept instead (see vegetation_cover_method).
_VCM_FV_GED_MAX = 0.99

# Cheng J., Liang S., Yao Y., Zhang X. 2013, IEEE GRSL 10(2):401-405: broadband (8-13.5 um)
# emissivity from the five ASTER TIR band emissivities (FACTS.md, Emissivity).
_BROADBAND_INTERCEPT = 0.197
_BROADBAND_WEIGHTS = np.array([0.025, 0.057, 0.237, 0.333, 0.146])

# Spectral step (um) of the grid on which spectra are averaged through a channel's SRF.
_SRF_STEP_UM = 0.001
_LIBRARY_FILE = "emissivity_library.csv"
_ASTER_FILE = "aster_tir_bands.json"
_LIBRARY_COLUMNS = ("name", "category", "wavelength_um", "emissivity", "source")


@dataclass(frozen=True, eq=False)
class Spectrum:
    """A directional (near-nadir) emissivity spectrum of one surface.

    Parameters
    ----------
    name : str
        Unique identifier, e.g. ``"aster_jhu_green_grass"``.
    category : str
        One of :data:`CATEGORIES`.
    wavelength_um : numpy.ndarray
        Wavelengths (um), strictly increasing, > 0; at least two points.
    emissivity : numpy.ndarray
        Emissivity (unitless, 0-1) at ``wavelength_um``; linear in between.
    source : str
        Citation, file, or the exact parametric rule the values come from.

    Raises
    ------
    ValueError
        Naming the spectrum, if the category is unknown, the arrays are not 1-D of equal
        length >= 2, the wavelengths are not finite, positive and strictly increasing,
        the emissivity is not finite or outside [0, 1], or the name or source is empty.
    """

    name: str
    category: str
    wavelength_um: NDArray[np.float64] = field(repr=False)
    emissivity: NDArray[np.float64] = field(repr=False)
    source: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"spectrum {self.name!r}: name must be a non-empty string")
        who = f"spectrum {self.name}"
        if self.category not in CATEGORIES:
            raise ValueError(f"{who}: category {self.category!r} is not one of {', '.join(CATEGORIES)}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"{who}: source must be a non-empty string")
        wl = np.array(self.wavelength_um, dtype=np.float64)
        eps = np.array(self.emissivity, dtype=np.float64)
        if wl.ndim != 1 or wl.shape != eps.shape or wl.size < 2:
            raise ValueError(
                f"{who}: wavelength_um and emissivity must be 1-D of equal length >= 2 "
                f"(got shapes {wl.shape} and {eps.shape})"
            )
        if not np.all(np.isfinite(wl)) or wl[0] <= 0:
            raise ValueError(f"{who}: wavelength_um must be finite and > 0")
        if np.any(np.diff(wl) <= 0):
            raise ValueError(f"{who}: wavelength_um must be strictly increasing")
        if not np.all(np.isfinite(eps)):
            raise ValueError(f"{who}: emissivity has non-finite value(s)")
        if eps.min() < 0.0 or eps.max() > 1.0:
            raise ValueError(f"{who}: emissivity spans [{eps.min():.4g}, {eps.max():.4g}], outside [0, 1]")
        wl.flags.writeable = False
        eps.flags.writeable = False
        object.__setattr__(self, "wavelength_um", wl)
        object.__setattr__(self, "emissivity", eps)

    def at(self, wavelength_um: ArrayLike) -> NDArray[np.float64]:
        """Emissivity (unitless) linearly interpolated at ``wavelength_um`` (um).

        Raises
        ------
        ValueError
            If a wavelength is non-finite or outside the spectrum's range.
        """
        lo, hi = float(self.wavelength_um[0]), float(self.wavelength_um[-1])
        wl = check_range(f"wavelength_um (spectrum {self.name})", wavelength_um, lo, hi, unit="um")
        return np.interp(wl, self.wavelength_um, self.emissivity)


@lru_cache(maxsize=1)
def default_library() -> tuple[Spectrum, ...]:
    """The embedded emissivity library (cached), in file order.

    Returns
    -------
    tuple of Spectrum
        At least 81 spectra over 7.5-13.5 um in all seven :data:`CATEGORIES`; see
        ``docs/emissivity.md`` for the contents and sources.

    Raises
    ------
    ValueError
        If the packaged table is malformed (a packaging error, not user input).
    """
    text = resources.files("sftl_dask.data").joinpath(_LIBRARY_FILE).read_text(encoding="utf-8")
    return _parse_library(text, _LIBRARY_FILE)


def _parse_library(text: str, origin: str) -> tuple[Spectrum, ...]:
    """Spectra from the long-format library table (one row per spectrum and wavelength)."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != _LIBRARY_COLUMNS:
        raise ValueError(f"{origin}: columns must be {', '.join(_LIBRARY_COLUMNS)}, got {reader.fieldnames}")
    rows: dict[str, dict[str, Any]] = {}
    last = None
    for lineno, row in enumerate(reader, start=2):
        name = row["name"]
        if name != last and name in rows:
            raise ValueError(f"{origin}: line {lineno}: rows of spectrum {name} are not contiguous")
        entry = rows.setdefault(name, {"category": row["category"], "source": row["source"], "wl": [], "eps": []})
        if row["category"] != entry["category"] or row["source"] != entry["source"]:
            raise ValueError(f"{origin}: line {lineno}: spectrum {name} changes category or source")
        try:
            entry["wl"].append(float(row["wavelength_um"]))
            entry["eps"].append(float(row["emissivity"]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{origin}: line {lineno}: non-numeric wavelength or emissivity") from err
        last = name
    if not rows:
        raise ValueError(f"{origin}: no spectra")
    return tuple(Spectrum(n, e["category"], e["wl"], e["eps"], e["source"]) for n, e in rows.items())


@lru_cache(maxsize=1)
def aster_tir_channels() -> tuple[Channel, ...]:
    """ASTER TIR bands 10-14 as boxcar channels (``sftl_dask/data/aster_tir_bands.json``).

    Returns
    -------
    tuple of Channel
        ``aster_b10`` ... ``aster_b14``: boxcars over the nominal band edges
        (8.125-8.475, 8.475-8.825, 8.925-9.275, 10.25-10.95, 10.95-11.65 um).
    """
    table = json.loads(resources.files("sftl_dask.data").joinpath(_ASTER_FILE).read_text(encoding="utf-8"))
    return tuple(
        Channel.boxcar(b["name"], b["band"], b["centre_um"], b["lower_um"], b["upper_um"])
        for b in table["thermal"]
    )


def band_emissivity(
    spectra: Spectrum | Iterable[Spectrum],
    channels: Sequence[Channel] | None = None,
) -> NDArray[np.float64]:
    """Channel emissivities: each spectrum averaged through each channel's SRF.

    Spectra are interpolated linearly onto a 0.001 um grid spanning each channel's
    response (plus the SRF's own nodes) and weighted by :meth:`Channel.weights`.

    Parameters
    ----------
    spectra : Spectrum or iterable of Spectrum
        Spectra to average; each must cover every channel's non-zero response.
    channels : sequence of Channel, optional
        Channels (default: the four VIMI TIR channels, :func:`thermal_channels`).

    Returns
    -------
    numpy.ndarray
        Emissivity (unitless), shape ``(n_spectra, n_channels)``.

    Raises
    ------
    ValueError
        If there are no spectra or channels, or a spectrum does not cover a channel.
    """
    specs = (spectra,) if isinstance(spectra, Spectrum) else tuple(spectra)
    chans = thermal_channels() if channels is None else tuple(channels)
    if not specs:
        raise ValueError("spectra: no spectra given")
    if not chans:
        raise ValueError("channels: no channels given")
    out = np.empty((len(specs), len(chans)))
    for j, ch in enumerate(chans):
        grid = np.union1d(ch.wavelength_um, np.arange(ch.wavelength_um[0], ch.wavelength_um[-1], _SRF_STEP_UM))
        weights = ch.weights(grid)
        for i, s in enumerate(specs):
            if s.wavelength_um[0] > ch.lower_um + 1e-9 or s.wavelength_um[-1] < ch.upper_um - 1e-9:
                raise ValueError(
                    f"spectrum {s.name}: covers [{s.wavelength_um[0]:.3f}, {s.wavelength_um[-1]:.3f}] um, "
                    f"channel {ch.name} needs [{ch.lower_um:.3f}, {ch.upper_um:.3f}] um"
                )
            # Zero-response SRF shoulders may fall outside the spectrum: np.interp holds the end value there.
            out[i, j] = np.interp(grid, s.wavelength_um, s.emissivity) @ weights
    return out


def _emis_name(channel_name: str) -> str:
    """Emissivity variable name of a channel: ``bt_10_80`` -> ``emis_10_80``."""
    return "emis_" + channel_name[3:] if channel_name.startswith("bt_") else channel_name


def fit_aster_to_vimi(
    spectra: Iterable[Spectrum] | None = None,
    *,
    channels: Sequence[Channel] | None = None,
) -> dict[str, Any]:
    """Regress each VIMI channel emissivity on the five ASTER TIR band emissivities.

    Ordinary least squares with intercept over the library:
    ``eps_vimi = intercept + sum_k coefficients[k] * eps_aster[k]``.

    Parameters
    ----------
    spectra : iterable of Spectrum, optional
        Training spectra (default: :func:`default_library`); at least 7.
    channels : sequence of Channel, optional
        Target channels (default: the four VIMI TIR channels).

    Returns
    -------
    dict
        JSON-serialisable: ``inputs`` (ASTER channel names), ``channels`` (an ordered
        mapping ``emis_08_20`` ... -> ``{"intercept", "coefficients" (5), "rmse",
        "max_abs_error"}``, unitless), ``n_spectra`` and ``method``.

    Raises
    ------
    ValueError
        If fewer than 7 spectra are given or a spectrum does not cover a channel.
    """
    specs = default_library() if spectra is None else tuple(spectra)
    aster = aster_tir_channels()
    if len(specs) < len(aster) + 2:
        raise ValueError(f"spectra: need at least {len(aster) + 2} spectra to fit, got {len(specs)}")
    targets = thermal_channels() if channels is None else tuple(channels)
    x = band_emissivity(specs, aster)
    y = band_emissivity(specs, targets)
    design = np.column_stack([np.ones(len(specs)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = design @ coef - y
    result: dict[str, Any] = {"inputs": [c.name for c in aster], "channels": {}, "n_spectra": len(specs)}
    for j, ch in enumerate(targets):
        result["channels"][_emis_name(ch.name)] = {
            "intercept": float(coef[0, j]),
            "coefficients": [float(v) for v in coef[1:, j]],
            "rmse": float(np.sqrt(np.mean(resid[:, j] ** 2))),
            "max_abs_error": float(np.max(np.abs(resid[:, j]))),
        }
    result["method"] = (
        "ordinary least squares with intercept of SRF-averaged channel emissivities on the ASTER B10-B14 "
        "boxcar band emissivities of the spectra"
    )
    return result


def aster_to_vimi(
    aster_emis: ArrayLike,
    coeffs: Mapping[str, Any],
    *,
    allow_nan: bool = False,
) -> NDArray[np.float64]:
    """VIMI channel emissivities from ASTER B10-B14 emissivities (e.g. ASTER GED).

    Parameters
    ----------
    aster_emis : array_like
        ASTER band emissivities (unitless, 0-1), last axis = 5 bands (B10-B14).
    coeffs : mapping
        Output of :func:`fit_aster_to_vimi` (or its JSON round trip).
    allow_nan : bool, optional
        Accept NaN (masked pixels); NaN propagates to the output of that pixel.

    Returns
    -------
    numpy.ndarray
        Emissivity (unitless), shape ``(..., n_channels)`` in the order of
        ``coeffs["channels"]``, clipped to [0, 1].

    Raises
    ------
    ValueError
        If ``aster_emis`` is NaN (unless ``allow_nan``), outside [0, 1], or its last
        axis is not 5, or ``coeffs`` lacks the expected entries.
    """
    x = check_range("aster_emis", aster_emis, 0.0, 1.0, allow_nan=allow_nan)
    if x.ndim == 0 or x.shape[-1] != 5:
        raise ValueError(f"aster_emis: last axis must hold the 5 ASTER bands B10-B14, got shape {x.shape}")
    try:
        chans = coeffs["channels"]
        intercept = np.array([float(c["intercept"]) for c in chans.values()])
        weights = np.array([[float(v) for v in c["coefficients"]] for c in chans.values()])
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"coeffs: not the output of fit_aster_to_vimi ({err!r})") from err
    if weights.ndim != 2 or weights.shape[1] != 5 or weights.shape[0] == 0:
        raise ValueError(f"coeffs: each channel needs 5 coefficients, got shape {weights.shape}")
    return np.clip(x @ weights.T + intercept, 0.0, 1.0)


def _check_mask(name: str, mask: ArrayLike) -> NDArray[np.bool_]:
    """A boolean pixel mask; 0/1 numbers are accepted, anything else raises."""
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1))):
        raise ValueError(f"{name}: mask must be boolean (or 0/1)")
    return arr.astype(bool)


def _vegetation_fraction(ndvi: NDArray[np.float64], ndvi_bare: float) -> NDArray[np.float64]:
    """fv = 1 - (1 - NDVI)/(1 - NDVI_bare), clipped to [0, 1] (ECOSTRESS L2 form)."""
    return np.clip(1.0 - (1.0 - ndvi) / (1.0 - ndvi_bare), 0.0, 1.0)


def vegetation_cover_method(
    emis_ged: ArrayLike,
    ndvi_ged: ArrayLike,
    ndvi: ArrayLike,
    *,
    veg_emissivity: float = 0.985,
    ndvi_bare: float = 0.15,
    water: ArrayLike | None = None,
    snow: ArrayLike | None = None,
    allow_nan: bool = False,
) -> NDArray[np.float64]:
    """Adjust ASTER GED emissivity to the scene's vegetation cover (Vegetation Cover Method).

    As run operationally in the ECOSTRESS L2 LST code (FACTS.md, Emissivity)::

        fv       = clip(1 - (1 - NDVI) / (1 - 0.15), 0, 1)      (same for fv_GED from NDVI_GED)
        eps_bare = (eps_GED - 0.985 fv_GED) / (1 - fv_GED)
        eps      = 0.985 fv + eps_bare (1 - fv)
        eps      = 0.99 on water, 0.985 on snow

    Guards beyond the published form: where ``fv_GED > 0.99`` the bare-ground emissivity
    is undefined (0/0 at fv_GED = 1, GED noise amplified > 100-fold just below), so the
    GED emissivity is returned unchanged there; elsewhere ``eps_bare`` is clipped to
    [0, 1] so that the result stays a physical emissivity. A pixel flagged both water
    and snow gets the snow value (frozen water).

    Why this is long: the formula, its guards and eight parameters with their units make this text long; the
    body is 30 lines of input checks and one broadcast.

    Parameters
    ----------
    emis_ged : array_like
        GED emissivity (unitless, 0-1), shape ``(...)`` or ``(..., n_channels)``. When it
        has more dimensions than the NDVI arrays broadcast together, its last axis is a
        channel axis and the vegetation fractions broadcast over it.
    ndvi_ged : array_like
        NDVI of the GED climatology (unitless, -1 to 1), e.g. ASTER GED ``/NDVI/Mean``.
    ndvi : array_like
        NDVI of the scene (unitless, -1 to 1).
    veg_emissivity : float, optional
        Emissivity of full vegetation (unitless), 0.985.
    ndvi_bare : float, optional
        NDVI of bare ground (fv = 0), 0.15.
    water, snow : array_like of bool, optional
        Pixel masks broadcasting against ``ndvi``.
    allow_nan : bool, optional
        Accept NaN inputs (masked pixels); they give NaN output pixels.

    Returns
    -------
    numpy.ndarray
        Emissivity (unitless), the broadcast shape of the inputs.

    Raises
    ------
    ValueError
        If an input is NaN (unless ``allow_nan``) or out of range, ``veg_emissivity`` is
        outside [0, 1], ``ndvi_bare`` outside [-1, 1), a mask is not boolean, or shapes
        do not broadcast.
    """
    eps_ged = check_range("emis_ged", emis_ged, 0.0, 1.0, allow_nan=allow_nan)
    nd_ged = check_range("ndvi_ged", ndvi_ged, -1.0, 1.0, allow_nan=allow_nan)
    nd = check_range("ndvi", ndvi, -1.0, 1.0, allow_nan=allow_nan)
    eps_v = float(check_range("veg_emissivity", veg_emissivity, 0.0, 1.0))
    nd_bare = float(check_range("ndvi_bare", ndvi_bare, -1.0, 0.999))
    fv_ged = _vegetation_fraction(nd_ged, nd_bare)
    fv = _vegetation_fraction(nd, nd_bare)
    masks = {k: _check_mask(k, m) for k, m in (("water", water), ("snow", snow)) if m is not None}
    try:
        pixel_ndim = np.broadcast(fv_ged, fv, *masks.values()).ndim
    except ValueError as err:
        raise ValueError(f"ndvi_ged, ndvi, water, snow: shapes do not broadcast ({err})") from err
    channel_axis = eps_ged.ndim > pixel_ndim
    if channel_axis:
        fv_ged, fv = fv_ged[..., None], fv[..., None]
        masks = {k: m[..., None] for k, m in masks.items()}
    try:
        shape = np.broadcast_shapes(eps_ged.shape, fv_ged.shape, fv.shape, *(m.shape for m in masks.values()))
    except ValueError as err:
        raise ValueError(f"emis_ged: shape {eps_ged.shape} does not broadcast against the NDVI arrays") from err
    defined = fv_ged <= _VCM_FV_GED_MAX
    with np.errstate(divide="ignore", invalid="ignore"):
        eps_bare = np.clip((eps_ged - eps_v * fv_ged) / (1.0 - fv_ged), 0.0, 1.0)
    eps = np.where(defined, eps_v * fv + eps_bare * (1.0 - fv), eps_ged)
    eps = np.broadcast_to(eps, shape).copy()
    if "water" in masks:
        eps[np.broadcast_to(masks["water"], shape)] = _VCM_WATER
    if "snow" in masks:
        eps[np.broadcast_to(masks["snow"], shape)] = _VCM_SNOW
    return eps


def broadband_emissivity(aster_emis: ArrayLike, *, allow_nan: bool = False) -> NDArray[np.float64]:
    """Broadband (8-13.5 um) emissivity from ASTER B10-B14 emissivities (Cheng et al. 2013).

    ``eps_b = 0.197 + 0.025 e10 + 0.057 e11 + 0.237 e12 + 0.333 e13 + 0.146 e14``
    (Cheng J., Liang S., Yao Y., Zhang X. 2013, IEEE Geosci. Remote Sens. Lett. 10(2):401-405).

    Parameters
    ----------
    aster_emis : array_like
        ASTER band emissivities (unitless, 0-1), last axis = 5 bands (B10-B14).
    allow_nan : bool, optional
        Accept NaN (masked pixels); NaN propagates.

    Returns
    -------
    numpy.ndarray
        Broadband emissivity (unitless), shape ``aster_emis.shape[:-1]``.

    Raises
    ------
    ValueError
        If ``aster_emis`` is NaN (unless ``allow_nan``), outside [0, 1], or its last axis is not 5.
    """
    x = check_range("aster_emis", aster_emis, 0.0, 1.0, allow_nan=allow_nan)
    if x.ndim == 0 or x.shape[-1] != 5:
        raise ValueError(f"aster_emis: last axis must hold the 5 ASTER bands B10-B14, got shape {x.shape}")
    return _BROADBAND_INTERCEPT + x @ _BROADBAND_WEIGHTS
