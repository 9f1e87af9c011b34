"""Build the embedded emissivity library ``sftl_dask/data/emissivity_library.csv`` (developer tool).

The table is long format (``name, category, wavelength_um, emissivity, source``), one row per
spectrum and wavelength, every spectrum covering 7.5-13.5 um. Two kinds of entries:

* Sourced spectra, transcribed from ``shared/reference/EMISSIVITY.md`` sections A-G (ASTER
  spectral library v2 samples read every 0.5 um, the CRTM NPOESS surface-type table, class
  averages, water and snow values). Where a source stops (8.0 um, 12.0 or 12.5 um) the first or
  last value is held flat to 7.5 and 13.5 um; the source string says so.
* Parametric spectra on a 0.1 um grid that widen the thin classes (rocks, quartz-graded soils,
  sands, wet soils, soil-vegetation mixtures, urban mixtures). The source string of each spells
  out the rule and its parameters; the rules are the functions below.

Left out on purpose (see docs/emissivity.md): metals (bare aluminium / copper, emissivity
~0.02-0.06: not a land-pixel surface, and nonsense as a simulation end-member for 40 m pixels),
CRTM 'meadow_grass' (0.835 at 11 um, far below any measured green grass) and 'grass_scrub'
(exactly its 50/50 mixture with 'scrub'), hemispherical sea water (not a nadir value), two-band
class values of ground-bearing classes (no information on the 8-9.5 um silicate region) and
exact duplicates.

Usage: python tools/build_emissivity_library.py [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from sftl_dask.physics.emissivity import CATEGORIES, Spectrum

WL_MIN, WL_MAX = 7.5, 13.5
GRID = np.round(np.arange(WL_MIN, WL_MAX + 1e-9, 0.1), 3)
OUT = Path(__file__).resolve().parents[1] / "sftl_dask" / "data" / "emissivity_library.csv"

# --------------------------------------------------------------------------------------------
# Sourced spectra (EMISSIVITY.md). Each entry: name, category, wavelengths (um), values, source.
# --------------------------------------------------------------------------------------------
_ASTER_PTS = (8.0, 8.5, 9.0, 9.5, 10.0, 10.5, 11.0, 11.5, 12.0, 12.5)
_ASTER_SRC = (
    "ASTER Spectral Library v2 (Baldridge et al. 2009, Remote Sens. Environ. 113:711-715), {sample}; "
    "eps = 1 - R/100 read every 0.5 um 8.0-12.5 um from the copy in github.com/3dgeo-heidelberg/helios "
    "@fd94d1ff python/pyhelios/data/spectra/{file} (EMISSIVITY.md A); held flat to 7.5 and 13.5 um"
)
_ASTER = [
    # (name, category, sample, file, values at _ASTER_PTS)
    ("aster_jhu_green_grass", "vegetation", "JHU green rye grass sod (grass.doc)", "grass.txt",
     (0.991, 0.987, 0.968, 0.972, 0.980, 0.980, 0.984, 0.988, 0.989, 0.988)),
    ("aster_jhu_conifer_needles", "vegetation", "JHU conifer needle pile (conifers.doc)", "conifer.txt",
     (0.992, 0.991, 0.990, 0.991, 0.990, 0.989, 0.989, 0.990, 0.991, 0.991)),
    ("aster_jhu_deciduous_leaves", "vegetation", "JHU deciduous leaf pile (decidous.doc)", "deciduous.txt",
     (0.984, 0.978, 0.978, 0.983, 0.980, 0.974, 0.973, 0.972, 0.973, 0.975)),
    # Senescent (non-photosynthetic) grass: counted with the ground the VCM treats as bare.
    ("aster_jhu_dry_grass", "soil", "JHU dry grass (drygrass.doc), senescent litter", "grass_dry.txt",
     (0.967, 0.974, 0.969, 0.954, 0.940, 0.911, 0.912, 0.902, 0.915, 0.926)),
    ("aster_npic_asphalt_concrete", "man_made", "NPIC 0425UUUASP asphaltic concrete runway", "asphalt.txt",
     (0.933, 0.923, 0.918, 0.942, 0.957, 0.956, 0.944, 0.961, 0.970, 0.964)),
    ("aster_npic_red_asphalt_shingle", "man_made", "NPIC 0672UUUASP reddish asphalt roofing shingle",
     "shingle_red.txt", (0.978, 0.962, 0.930, 0.929, 0.943, 0.954, 0.959, 0.964, 0.970, 0.971)),
    # Weathered slate stone: a roofing product, but the emitting material is natural rock.
    ("aster_npic_slate_gray", "rock", "NPIC 0680UUUSTO weathered gray slate stone shingle", "shingle_gray.txt",
     (0.876, 0.774, 0.688, 0.746, 0.787, 0.879, 0.904, 0.929, 0.951, 0.941)),
    ("aster_npic_pine_lumber", "man_made", "NPIC 0404UUUWOD pine construction lumber", "wood.txt",
     (0.967, 0.974, 0.974, 0.944, 0.937, 0.919, 0.923, 0.926, 0.921, 0.948)),
]

_CRTM_PTS = (8.0, 8.5, 9.0, 9.5, 10.0, 11.0, 12.0)
_CRTM_SRC = (
    "CRTM NPOESS surface type '{t}' (JCSDA CRTM @8bf10076 of 2023-02-27, src/Coefficients/EmisCoeff/SEcategory/"
    "SEcategory_CreateFile/Modules/{module}, Load_NPOESS_Data, eps = 1 - R; EMISSIVITY.md B); "
    "held flat to 7.5 and 13.5 um"
)
# Open scene types (scrub, brush, tundra, soil mixtures) show ground between plants: they go with
# 'soil' (what the VCM treats as partly bare); closed canopies and crops go with 'vegetation'.
_CRTM = [
    ("compacted_soil", "soil", (0.970, 0.960, 0.950, 0.950, 0.955, 0.960, 0.975)),
    ("tilled_soil", "soil", (0.979, 0.972, 0.965, 0.965, 0.969, 0.972, 0.982)),
    ("sand", "sand", (0.900, 0.900, 0.900, 0.910, 0.920, 0.980, 0.980)),
    ("rock", "rock", (0.900, 0.890, 0.870, 0.860, 0.880, 0.950, 0.970)),
    ("irrigated_low_vegetation", "vegetation", (0.964, 0.964, 0.964, 0.964, 0.964, 0.964, 0.955)),
    ("scrub", "soil", (0.950, 0.960, 0.970, 0.965, 0.960, 0.950, 0.940)),
    ("broadleaf_forest", "vegetation", (0.962, 0.962, 0.962, 0.962, 0.962, 0.962, 0.950)),
    ("pine_forest", "vegetation", (0.990, 0.990, 0.990, 0.990, 0.990, 0.990, 0.990)),
    ("tundra", "soil", (0.955, 0.954, 0.947, 0.944, 0.943, 0.944, 0.953)),
    ("grass_soil", "soil", (0.962, 0.952, 0.943, 0.940, 0.933, 0.910, 0.925)),
    ("broadleaf_pine_forest", "vegetation", (0.982, 0.982, 0.982, 0.982, 0.982, 0.982, 0.978)),
    ("soil_grass_scrub", "soil", (0.958, 0.954, 0.951, 0.947, 0.940, 0.919, 0.927)),
    ("urban_concrete", "man_made", (0.973, 0.971, 0.968, 0.967, 0.970, 0.977, 0.980)),
    ("pine_brush", "soil", (0.970, 0.975, 0.980, 0.977, 0.975, 0.970, 0.965)),
    ("broadleaf_brush", "soil", (0.955, 0.961, 0.967, 0.964, 0.961, 0.955, 0.944)),
    ("wet_soil", "soil", (0.975, 0.975, 0.970, 0.970, 0.972, 0.975, 0.982)),
    ("scrub_soil", "soil", (0.962, 0.960, 0.958, 0.956, 0.957, 0.956, 0.961)),
    ("broadleaf70_pine30", "vegetation", (0.970, 0.970, 0.970, 0.970, 0.970, 0.970, 0.962)),
    ("old_snow", "snow_ice", (0.991, 0.991, 0.992, 0.992, 0.994, 0.990, 0.982)),
    ("fresh_snow", "snow_ice", (0.992, 0.991, 0.994, 0.994, 0.995, 0.992, 0.982)),
    ("new_ice", "snow_ice", (0.990, 0.990, 0.990, 0.990, 0.990, 0.980, 0.960)),
]
_CRTM_MODULE = {"old_snow": "IRVISsnowCoeff_Module.f90", "fresh_snow": "IRVISsnowCoeff_Module.f90",
                "new_ice": "IRVISiceCoeff_Module.f90"}

_DU_SRC = (
    "Du C., Ren H., Qin Q., Meng J., Zhao S. 2015, Remote Sens. 7(1):647-665, FROM-GLC class '{c}' average for "
    "Landsat 8 TIRS B10/B11 (10.9/12.0 um), tabulated in github.com/OSGeo/grass-addons "
    "src/imagery/i.landsat8.swlst/average_emissivity.csv (EMISSIVITY.md C); placed at 10.9 and 12.0 um and held "
    "flat outside (spectrally flat surface)"
)
_OTHER = [
    ("du2015_cropland", "vegetation", (10.9, 12.0), (0.971, 0.968), _DU_SRC.format(c="Cropland")),
    ("du2015_forest", "vegetation", (10.9, 12.0), (0.995, 0.996), _DU_SRC.format(c="Forest")),
    ("du2015_grasslands", "vegetation", (10.9, 12.0), (0.970, 0.971), _DU_SRC.format(c="Grasslands")),
    ("du2015_waterbodies", "water", (10.9, 12.0), (0.992, 0.998), _DU_SRC.format(c="Waterbodies")),
    ("du2015_snow_ice", "snow_ice", (10.9, 12.0), (0.992, 0.998), _DU_SRC.format(c="Snow and ice")),
    ("ermida2020_full_vegetation", "vegetation", (8.125, 11.65), (0.99, 0.99),
     "Ermida S.L. et al. 2020, Remote Sens. 12:1471, full-vegetation emissivity 0.99 for ASTER B10-B14 "
     "(github.com/sofiaermida/Landsat_SMW_LST modules/ASTER_bare_emiss.js; EMISSIVITY.md D); held flat to 7.5 "
     "and 13.5 um"),
    ("yu2014_full_vegetation", "vegetation", (10.9, 12.0), (0.9863, 0.9896),
     "Yu X., Guo X., Wu Z. 2014, Remote Sens. 6:9829-9852, full vegetation for Landsat 8 TIRS B10/B11 "
     "(10.9/12.0 um), as coded in github.com/pylandtemp/pylandtemp emissivity/algorithms.py (EMISSIVITY.md D); "
     "held flat outside"),
    ("espa_snow_tirs", "snow_ice", (10.9, 12.0), (0.9904, 0.9904),
     "USGS EROS ESPA LST prototype (Malakar et al. 2018, IEEE TGRS 56:5717), snow emissivity 0.9904 for the "
     "Landsat 8 TIRS ST band, github.com/ldj01/e-s-t estimate_landsat_emissivity.py (EMISSIVITY.md D); flat"),
    ("mod06_sea_water", "water", (8.30, 9.30, 10.80), (0.9807, 0.98648, 0.99297),
     "MODIS MOD06 cloud-top routine assign_eco_emis (Seemann / Borbas 2003), 'seawater_emis' at 1205/1075/926 "
     "cm-1 = 8.30/9.30/10.80 um (EMISSIVITY.md E); held flat to 7.5 and 13.5 um"),
    ("mod06_land_generic", "soil", (8.30, 9.30, 10.80), (0.95, 0.95, 0.9626),
     "MODIS MOD06 routine assign_eco_emis (Seemann / Borbas 2003), 'land_emis' at 8.30/9.30/10.80 um, based on "
     "MOD11 averages of IGBP classes 1-14 (EMISSIVITY.md E); held flat to 7.5 and 13.5 um"),
    ("feldman2014_desert", "sand",
     (8.00, 8.33, 8.70, 9.09, 9.52, 10.00, 10.64, 11.11, 12.05, 12.50),
     (0.987, 0.965, 0.924, 0.909, 0.858, 0.897, 0.933, 0.936, 0.954, 0.957),
     "Desert sand/soil digitized from Feldman et al. 2014 PNAS 111(46):16297, as tabulated in Met Office "
     "specemis_mod emis_desert_feldman (EMISSIVITY.md F). HEMISPHERICAL emissivity, low precision (digitized); "
     "held flat to 7.5 and 13.5 um"),
    ("hori2006_coarse_snow", "snow_ice", (11.0, 12.0), (0.99, 0.975),
     "Coarse-grain snow, nadir, 0.99 at 11 um and 0.975 at 12 um, AIP Conf. Proc. 1531:316 (2013) abstract "
     "summarizing in situ measurements (presumably Hori et al. 2006, Remote Sens. Environ. 100:486; "
     "EMISSIVITY.md G); held flat outside"),
]


def _flat_extended(wl: tuple[float, ...], eps: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Source points with the first and last value held flat to 7.5 and 13.5 um."""
    w = np.asarray(wl, dtype=float)
    e = np.asarray(eps, dtype=float)
    if w[0] > WL_MIN:
        w, e = np.r_[WL_MIN, w], np.r_[e[0], e]
    if w[-1] < WL_MAX:
        w, e = np.r_[w, WL_MAX], np.r_[e, e[-1]]
    return w, e


def sourced() -> list[tuple[str, str, np.ndarray, np.ndarray, str]]:
    """All sourced spectra as (name, category, wavelength_um, emissivity, source)."""
    out = []
    for name, cat, sample, fname, vals in _ASTER:
        out.append((name, cat, *_flat_extended(_ASTER_PTS, vals), _ASTER_SRC.format(sample=sample, file=fname)))
    for t, cat, vals in _CRTM:
        src = _CRTM_SRC.format(t=t, module=_CRTM_MODULE.get(t, "IRVISlandCoeff_Module.f90"))
        out.append((f"crtm_{t}", cat, *_flat_extended(_CRTM_PTS, vals), src))
    for name, cat, wl, vals, src in _OTHER:
        out.append((name, cat, *_flat_extended(wl, vals), src))
    return out


# --------------------------------------------------------------------------------------------
# Parametric rules. lambda in um; G(mu, s) = exp(-((lambda - mu)/s)^2 / 2).
# --------------------------------------------------------------------------------------------
def _g(mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((GRID - mu) / sigma) ** 2)


# Shapes of the spectral features, each at the depth of a pure, coarse, loose mineral.
_RULE_G = "G(mu,sig)=exp(-((lambda-mu)/sig)^2/2), lambda in um"
# Quartz reststrahlen doublet (emissivity minima near 8.6 and 9.2 um) and the weak 12.6 um doublet.
QUARTZ = 0.25 * _g(8.6, 0.22) + 0.28 * _g(9.2, 0.25) + 0.03 * _g(12.6, 0.12)
_RULE_Q = "Q=0.25G(8.6,0.22)+0.28G(9.2,0.25)+0.03G(12.6,0.12)"
# Clay / other-silicate Si-O stretching band near 9.5 um.
CLAY = 0.06 * _g(9.5, 0.45)
_RULE_K = "K=0.06G(9.5,0.45)"
# Carbonate (calcite / dolomite) CO3 out-of-plane bending band near 11.3 um.
CARBONATE = 0.09 * _g(11.3, 0.12)
_RULE_C = "C=0.09G(11.3,0.12)"
# Soil moisture: a water film lowers reflectance, R_wet = R_dry (1 - 1.5 theta), theta in m3 m-3 (<= 0.4).
_RULE_W = "wet: eps=1-(1-eps_dry)(1-1.5theta)"


def _wet(eps_dry: np.ndarray, theta: float) -> np.ndarray:
    return 1.0 - (1.0 - eps_dry) * (1.0 - 1.5 * theta)


def mineral(base: float, q: float, k: float, c: float, g: float, theta: float = 0.0) -> tuple[np.ndarray, str]:
    """Soils, sands and sedimentary rocks: eps = base - g q Q - k K - c C, then moisture."""
    eps = base - g * q * QUARTZ - k * CLAY - c * CARBONATE
    rule = (f"parametric MINERAL: eps_dry=base-g*q*Q-k*K-c*C; {_RULE_Q}; {_RULE_K}; {_RULE_C}; {_RULE_G}; "
            f"base={base:g} q={q:g} k={k:g} c={c:g} g={g:g}")
    if theta > 0:
        eps = _wet(eps, theta)
        rule += f"; {_RULE_W} theta={theta:g}"
    return eps, rule + " (tools/build_emissivity_library.py)"


def silicate_rock(s: float, contrast: float = 1.0) -> tuple[np.ndarray, str]:
    """Igneous silicate rock of felsic index s (1 = granite-like ~72% SiO2, 0 = ultramafic ~40%).

    The reststrahlen minimum moves from 9.0 um (felsic) to 11.0 um (ultramafic) and the
    Christiansen peak from 7.8 to 8.7 um as silica decreases; mafic bands are broader.
    """
    lam_min = 11.0 - 2.0 * s
    sigma = 0.4 + 0.6 * (1.0 - s)
    depth = 0.10 + 0.13 * (1.0 - s) ** 2
    lam_cf = 7.8 + 0.9 * (1.0 - s)
    q_rock = 0.3 * max(0.0, (s - 0.6) / 0.4)
    eps = 0.958 + 0.032 * _g(lam_cf, 0.25) - contrast * (depth * _g(lam_min, sigma) + 0.8 * q_rock * QUARTZ)
    rule = (
        "parametric SILICATE_ROCK: eps=0.958+0.032G(l_cf,0.25)-a*(d*G(l_min,w)+0.8*q_r*Q); "
        f"l_min=11.0-2.0s, w=0.4+0.6(1-s), d=0.10+0.13(1-s)^2, l_cf=7.8+0.9(1-s), q_r=0.3max(0,(s-0.6)/0.4); "
        f"{_RULE_Q}; {_RULE_G}; s={s:g} (felsic index) a={contrast:g} (contrast) "
        "(tools/build_emissivity_library.py)"
    )
    return eps, rule


def cavity_mixture(eps_v: np.ndarray, eps_s: np.ndarray, fv: float, veg: str, soil: str) -> tuple[np.ndarray, str]:
    """Soil-vegetation mixture: linear in the cover fraction plus a cavity (multiple-scattering) term.

    The cavity term has the form 4 <d_eps> fv (1 - fv) of Valor & Caselles 1996 (vanishing for bare
    and for full cover), made spectral as <d_eps> = F (1 - eps_s) eps_v: soil-reflected vegetation
    emission, largest where the soil reflects most (quartz bands). F = 0.15 (the fraction of the
    vegetation's emission that reaches the soil and escapes after one reflection) is a choice, not a
    sourced value: at fv = 0.5 it adds ~0.006 for eps_s = 0.96 and ~0.025 in the quartz bands of a
    quartz-rich soil, keeping mixtures below about the higher end-member.
    """
    eps = fv * eps_v + (1.0 - fv) * eps_s + 4.0 * 0.15 * fv * (1.0 - fv) * (1.0 - eps_s) * eps_v
    rule = (
        "parametric MIXTURE: eps=fv*eps_v+(1-fv)*eps_s+4*F*fv*(1-fv)*(1-eps_s)*eps_v, F=0.15 (cavity term of the "
        "form 4<d_eps>fv(1-fv) after Valor & Caselles 1996, made spectral; F chosen, not sourced); "
        f"fv={fv:g}, eps_v={veg}, eps_s={soil} (both linearly interpolated to a 0.1 um grid) "
        "(tools/build_emissivity_library.py)"
    )
    return eps, rule


def linear_mixture(parts: list[tuple[float, str, np.ndarray]]) -> tuple[np.ndarray, str]:
    """Area-weighted linear mixture (cavity effects neglected), e.g. an urban pixel."""
    eps = sum(f * e for f, _, e in parts)
    terms = " + ".join(f"{f:g}*{n}" for f, n, _ in parts)
    return eps, f"parametric LINEAR_MIXTURE (cavity neglected): eps = {terms} (tools/build_emissivity_library.py)"


def parametric(library: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray, np.ndarray, str]]:
    """Parametric spectra; ``library`` maps sourced names to their spectra on GRID."""
    out: list[tuple[str, str, np.ndarray, np.ndarray, str]] = []

    def add(name: str, cat: str, spec: tuple[np.ndarray, str]) -> np.ndarray:
        eps, rule = spec
        eps = np.clip(eps, 0.0, 0.995)
        out.append((name, cat, GRID, eps, rule))
        library[name] = eps
        return eps

    # Quartz-graded soils (aggregates and coatings: contrast g = 0.8 of loose sand), dry and wet.
    for q, k in ((0.1, 0.6), (0.3, 0.5), (0.5, 0.35), (0.7, 0.2), (0.9, 0.05)):
        tag = f"param_soil_quartz{round(q * 100):02d}"
        add(f"{tag}_dry", "soil", mineral(0.975, q, k, 0.0, 0.8))
        add(f"{tag}_wet", "soil", mineral(0.975, q, k, 0.0, 0.8, theta=0.25))
    add("param_soil_calcareous_dry", "soil", mineral(0.975, 0.3, 0.3, 0.4, 0.8))
    add("param_soil_calcareous_wet", "soil", mineral(0.975, 0.3, 0.3, 0.4, 0.8, theta=0.25))
    add("param_soil_clay_dry", "soil", mineral(0.970, 0.1, 0.9, 0.0, 0.8))
    add("param_soil_organic_peat", "soil", mineral(0.980, 0.05, 0.1, 0.0, 0.8))

    # Sands: loose grains (g = 1 coarse, 0.6 fine), quartz-graded, carbonate, basaltic, wet.
    add("param_sand_quartz_coarse", "sand", mineral(0.975, 1.0, 0.0, 0.0, 1.0))
    add("param_sand_quartz_fine", "sand", mineral(0.975, 1.0, 0.0, 0.0, 0.6))
    add("param_sand_quartz80", "sand", mineral(0.975, 0.8, 0.2, 0.0, 1.0))
    add("param_sand_quartz_feldspar", "sand", mineral(0.975, 0.6, 0.3, 0.0, 1.0))
    add("param_sand_beach_shell", "sand", mineral(0.975, 0.6, 0.1, 0.3, 1.0))
    add("param_sand_carbonate", "sand", mineral(0.975, 0.05, 0.0, 0.9, 1.0))
    add("param_sand_gobi_gravel", "sand", mineral(0.970, 0.5, 0.3, 0.0, 0.7))
    add("param_sand_quartz_wet", "sand", mineral(0.975, 1.0, 0.0, 0.0, 1.0, theta=0.2))
    add("param_sand_basaltic", "sand", silicate_rock(0.45, contrast=0.8))

    # Rocks: igneous silicate series (Christiansen and reststrahlen shift felsic -> mafic),
    # weathered surfaces (lower contrast), quartz-rich and clay-rich sediments, carbonates.
    for s, label in ((1.0, "felsic_granite"), (0.8, "granodiorite"), (0.6, "andesite"),
                     (0.45, "basalt"), (0.35, "gabbro"), (0.0, "ultramafic_peridotite")):
        add(f"param_rock_{label}", "rock", silicate_rock(s))
    add("param_rock_basalt_varnished", "rock", silicate_rock(0.45, contrast=0.5))
    add("param_rock_granite_weathered", "rock", silicate_rock(1.0, contrast=0.6))
    add("param_rock_quartzite", "rock", mineral(0.970, 0.9, 0.05, 0.0, 0.9))
    add("param_rock_arkose_sandstone", "rock", mineral(0.970, 0.5, 0.4, 0.0, 0.9))
    add("param_rock_shale", "rock", mineral(0.970, 0.2, 0.8, 0.0, 0.8))
    add("param_rock_limestone", "rock", mineral(0.975, 0.05, 0.05, 1.0, 1.0))
    add("param_rock_dolostone", "rock", mineral(0.975, 0.1, 0.1, 0.8, 1.0))
    add("param_rock_calcrete", "rock", mineral(0.972, 0.2, 0.2, 0.6, 0.9))

    # Soil-vegetation mixtures with green grass; fv > 0.5 counts as vegetation.
    grass = library["aster_jhu_green_grass"]
    for soil in ("param_soil_quartz30_dry", "param_soil_quartz70_dry", "crtm_compacted_soil"):
        for fv in (0.2, 0.5, 0.8):
            cat = "vegetation" if fv > 0.5 else "soil"
            short = soil.removeprefix("param_").removeprefix("crtm_").removesuffix("_dry")
            add(f"param_mix_grass{round(fv * 100):02d}_{short}", cat,
                cavity_mixture(grass, library[soil], fv, "aster_jhu_green_grass", soil))
    for fv in (0.3, 0.7):
        cat = "vegetation" if fv > 0.5 else "soil"
        add(f"param_mix_grass{round(fv * 100):02d}_dry_grass", cat,
            cavity_mixture(grass, library["aster_jhu_dry_grass"], fv, "aster_jhu_green_grass", "aster_jhu_dry_grass"))

    # Urban pixels as area-weighted mixtures of the sourced man-made spectra.
    add("param_urban_dense", "man_made", linear_mixture([
        (0.4, "aster_npic_asphalt_concrete", library["aster_npic_asphalt_concrete"]),
        (0.4, "crtm_urban_concrete", library["crtm_urban_concrete"]),
        (0.2, "aster_npic_red_asphalt_shingle", library["aster_npic_red_asphalt_shingle"]),
    ]))
    add("param_urban_suburban", "man_made", linear_mixture([
        (0.3, "aster_npic_red_asphalt_shingle", library["aster_npic_red_asphalt_shingle"]),
        (0.2, "aster_npic_asphalt_concrete", library["aster_npic_asphalt_concrete"]),
        (0.2, "crtm_urban_concrete", library["crtm_urban_concrete"]),
        (0.3, "aster_jhu_green_grass", library["aster_jhu_green_grass"]),
    ]))
    return out


def build() -> list[tuple[str, str, np.ndarray, np.ndarray, str]]:
    """All spectra, sourced first, each checked by Spectrum and for physical plausibility."""
    entries = sourced()
    on_grid = {name: np.interp(GRID, wl, eps) for name, _, wl, eps, _ in entries}
    entries += parametric(on_grid)
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate spectrum names")
    for name, cat, wl, eps, src in entries:
        Spectrum(name, cat, wl, eps, src)  # validates
        band = (wl >= 8.0) & (wl <= 12.5)
        lo, hi = (0.68, 0.996) if cat not in ("water", "snow_ice") else (0.95, 1.0)
        if eps[band].min() < lo or eps[band].max() > hi:
            raise SystemExit(f"{name}: 8-12.5 um emissivity [{eps[band].min():.3f}, {eps[band].max():.3f}] "
                             f"outside plausible [{lo}, {hi}] for {cat}")
    missing = set(CATEGORIES) - {e[1] for e in entries}
    if missing:
        raise SystemExit(f"categories without spectra: {sorted(missing)}")
    return entries


def write(path: Path) -> int:
    """Write the long-format table; returns the number of spectra."""
    entries = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["name", "category", "wavelength_um", "emissivity", "source"])
        for name, cat, wl, eps, src in entries:
            for x, e in zip(wl, eps, strict=True):
                w.writerow([name, cat, f"{x:.3f}", f"{e:.4f}", src])
    return len(entries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"output CSV (default {OUT})")
    args = ap.parse_args()
    n = write(args.out)
    print(f"wrote {n} spectra to {args.out}")


if __name__ == "__main__":
    main()
