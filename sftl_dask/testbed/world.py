"""The synthetic world: two regions, their land covers, climates, 18 sites and landscapes.

Everything is deterministic from a seed. Numbers that shape the world are data here,
each with the reason for its value; ``docs/testbed.md`` explains what they mean for
accuracy figures measured on the testbed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from pyproj import Transformer

from sftl_dask.physics.emissivity import aster_tir_channels, band_emissivity, default_library

__all__ = [
    "LAND_COVERS",
    "REGIONS",
    "SITES",
    "LandCover",
    "Landscape",
    "Region",
    "RegionClimate",
    "ar1",
    "build_landscape",
    "sites_table",
    "smooth_field",
]

PIXEL_M = 40.0
START = np.datetime64("2021-01-01T00:00", "s")
END = np.datetime64("2024-01-01T00:00", "s")


@dataclass(frozen=True)
class LandCover:
    """A land-cover class and how it behaves.

    ``heating_k`` is LST minus air temperature (K) of the bare, dry, fully sunlit state at
    solar noon in summer; vegetation cover reduces it. ``rep_sigma_k`` is the random
    footprint-representativeness error (K) of a radiometer over this cover against the
    40 m pixel, ``rep_bias_k`` the largest systematic footprint offset of a site on it.
    """

    name: str
    code: int
    soils: tuple[str, ...]
    vegetation: str
    ndvi_min: float
    ndvi_max: float
    peak_doy: float
    season_days: float
    heating_k: float
    rep_sigma_k: float
    rep_bias_k: float
    red_soil: float


# Library spectra by name (docs/emissivity.md); heating from daytime LST-Tair contrasts typical of
# MODIS/ASTER studies over these covers; representativeness from station-scale heterogeneity
# reported for HiWATER/Huailai sites (1-3 K over heterogeneous covers).
LAND_COVERS: dict[str, LandCover] = {
    lc.name: lc
    for lc in (
        LandCover("cropland", 1, ("crtm_tilled_soil", "param_soil_clay_dry"), "aster_jhu_green_grass",
                  0.15, 0.85, 212, 40, 14.0, 2.0, 0.8, 0.16),
        LandCover("wetland", 2, ("crtm_wet_soil", "param_soil_organic_peat"), "aster_jhu_green_grass",
                  0.25, 0.80, 205, 50, 4.0, 2.4, 1.0, 0.10),
        LandCover("water", 3, ("du2015_waterbodies", "mod06_sea_water"), "du2015_waterbodies",
                  -0.10, -0.05, 200, 60, -1.0, 1.5, 0.6, 0.05),
        LandCover("shrub", 4, ("param_soil_quartz30_dry", "crtm_scrub"), "aster_jhu_deciduous_leaves",
                  0.15, 0.50, 205, 50, 12.0, 2.6, 1.2, 0.18),
        LandCover("forest", 5, ("crtm_tilled_soil", "param_soil_organic_peat"), "aster_jhu_deciduous_leaves",
                  0.35, 0.85, 200, 60, 6.0, 2.4, 1.0, 0.12),
        LandCover("grassland", 6, ("param_soil_quartz30_dry", "param_mix_grass30_dry_grass"),
                  "aster_jhu_green_grass", 0.15, 0.65, 215, 45, 12.0, 2.0, 0.9, 0.17),
        LandCover("bare_soil", 7, ("param_soil_quartz50_dry", "crtm_compacted_soil"), "aster_jhu_dry_grass",
                  0.08, 0.15, 215, 40, 16.0, 2.0, 0.9, 0.22),
        LandCover("desert_steppe", 8, ("param_sand_gobi_gravel", "param_soil_quartz70_dry",
                                       "param_sand_quartz_fine"), "aster_jhu_dry_grass",
                  0.08, 0.22, 220, 40, 20.0, 3.0, 1.5, 0.24),
        LandCover("urban", 9, ("param_urban_dense", "param_urban_suburban"), "aster_jhu_green_grass",
                  0.10, 0.25, 205, 60, 12.0, 3.2, 1.5, 0.14),
    )
}


@dataclass(frozen=True)
class Region:
    """One study region on its own 40 m UTM grid.

    Monthly climatologies are for the overpass hour (~10:45 local solar time) at the
    region's base elevation: air temperature (K) and total column water vapour (g cm^-2).
    ``footprint_heterogeneity`` scales the radiometers' representativeness error (the Heihe
    oasis-desert mosaic is more heterogeneous at the 1-40 m scale than the Huailai fields).
    """

    name: str
    epsg: int
    centre_lon: float
    centre_lat: float
    base_elevation_m: float
    relief_m: float
    south_rise_m: float
    t_air_k: tuple[float, ...]
    wvc_g_cm2: tuple[float, ...]
    diurnal_amplitude_k: float
    cover_fractions: dict[str, float]
    era5_wvc_bias: float
    overpass_local_h: tuple[float, float] = (10.5, 11.0)
    cloud_probability: float = 0.5
    footprint_heterogeneity: float = 1.0

    @property
    def utc_offset_h(self) -> float:
        """Local solar time minus UTC (h)."""
        return self.centre_lon / 15.0


# Climatologies: Huailai (Beijing plain edge, 480 m) and Zhangye/Heihe oasis-desert (1.5 km), from
# station normals of those towns rounded; WVC from ERA5-era monthly means of the regions (approx.).
REGIONS: dict[str, Region] = {
    "huailai": Region(
        name="huailai", epsg=32650, centre_lon=115.7880, centre_lat=40.3491, base_elevation_m=500.0,
        relief_m=35.0, south_rise_m=-120.0,
        t_air_k=tuple(273.15 + c for c in (-4, 0, 8, 16, 22, 27, 29, 27, 22, 14, 5, -2)),
        wvc_g_cm2=(0.40, 0.45, 0.65, 1.0, 1.5, 2.4, 3.6, 3.4, 2.1, 1.1, 0.65, 0.45),
        diurnal_amplitude_k=5.5,
        cover_fractions={"cropland": 0.38, "grassland": 0.12, "shrub": 0.12, "forest": 0.12, "wetland": 0.07,
                         "water": 0.05, "bare_soil": 0.06, "urban": 0.08},
        era5_wvc_bias=0.06,
    ),
    "heihe": Region(
        name="heihe", epsg=32647, centre_lon=100.382, centre_lat=38.870, base_elevation_m=1590.0,
        relief_m=20.0, south_rise_m=300.0,
        t_air_k=tuple(273.15 + c for c in (-6, -2, 6, 14, 20, 24, 26, 24, 19, 11, 2, -4)),
        wvc_g_cm2=(0.25, 0.30, 0.40, 0.55, 0.85, 1.30, 1.80, 1.70, 1.10, 0.60, 0.35, 0.25),
        diurnal_amplitude_k=7.5,
        cover_fractions={"cropland": 0.34, "desert_steppe": 0.33, "bare_soil": 0.12, "wetland": 0.06,
                         "grassland": 0.05, "urban": 0.06, "water": 0.04},
        era5_wvc_bias=-0.08,
        # oasis-desert mosaic: maize with gravel roads and ditches, desert steppe with scattered shrubs
        footprint_heterogeneity=1.3,
    ),
}

# (id, name, region, lon, lat, elevation_m, land_cover, instrument)
_SITE_ROWS: tuple[tuple[str, str, str, float, float, float, str, str], ...] = (
    ("HH01", "Daman", "heihe", 100.3722, 38.8555, 1556.0, "cropland", "CNR1"),
    ("HH02", "Huazhaizi", "heihe", 100.3186, 38.7652, 1731.0, "desert_steppe", "CNR1"),
    ("HH03", "Zhangye wetland", "heihe", 100.4464, 38.9751, 1460.0, "wetland", "CNR1"),
    ("HL01", "Huailai station", "huailai", 115.7880, 40.3491, 480.0, "cropland", "CNR1"),
    ("HL02", "Huailai maize east", "huailai", 115.8310, 40.3620, 482.0, "cropland", "CGR3"),
    ("HL03", "Huailai maize south", "huailai", 115.7760, 40.3100, 476.0, "cropland", "CGR3"),
    ("HL04", "Huailai vineyard", "huailai", 115.7350, 40.3850, 495.0, "cropland", "CGR3"),
    ("HL05", "Guanting wetland", "huailai", 115.7050, 40.3300, 479.0, "wetland", "CNR1"),
    ("HL06", "Yongding reed marsh", "huailai", 115.8600, 40.3300, 474.0, "wetland", "CGR3"),
    ("HL07", "Shrubland north", "huailai", 115.8000, 40.4300, 560.0, "shrub", "CGR3"),
    ("HL08", "Shrubland west", "huailai", 115.6800, 40.4100, 590.0, "shrub", "CGR3"),
    ("HL09", "Poplar forest", "huailai", 115.7550, 40.3450, 483.0, "forest", "CNR1"),
    ("HL10", "Pine plantation", "huailai", 115.8700, 40.4150, 610.0, "forest", "CGR3"),
    ("HL11", "Grassland hill", "huailai", 115.9000, 40.3800, 540.0, "grassland", "CGR3"),
    ("HL12", "Pasture", "huailai", 115.7200, 40.2850, 500.0, "grassland", "CGR3"),
    ("HL13", "Reservoir edge", "huailai", 115.6700, 40.3500, 478.0, "water", "CNR1"),
    ("HL14", "Bare field", "huailai", 115.8150, 40.2800, 485.0, "bare_soil", "CGR3"),
    ("HL15", "Township edge", "huailai", 115.8450, 40.3050, 490.0, "urban", "CGR3"),
)


@dataclass(frozen=True)
class Site:
    """An in situ radiometer site."""

    id: str
    name: str
    region: str
    lon: float
    lat: float
    elevation_m: float
    land_cover: str
    instrument: str


SITES: tuple[Site, ...] = tuple(Site(*r) for r in _SITE_ROWS)


def sites_table() -> pd.DataFrame:
    """The 18 sites as a table (id, name, region, lon, lat, elevation_m, land_cover, instrument)."""
    return pd.DataFrame([s.__dict__ for s in SITES])


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RegionClimate:
    """Daily weather of a region over 2021-2023: anomalies of air temperature, humidity,
    soil moisture and a sunshine factor, from seeded AR(1) processes.

    Attributes
    ----------
    days : numpy.ndarray
        datetime64[D] of each day.
    t_anom_k, wvc_factor, moisture, dryness : numpy.ndarray
        Per day: air-temperature anomaly (K), multiplicative WVC anomaly, soil moisture index
        (0-1, high after rain) and heating factor (~1; < 1 on humid, cloudy-morning days).
    """

    region: Region
    days: NDArray[np.datetime64]
    t_anom_k: NDArray[np.float64]
    wvc_factor: NDArray[np.float64]
    moisture: NDArray[np.float64]
    dryness: NDArray[np.float64]

    @classmethod
    def make(cls, region: Region, seed: int) -> RegionClimate:
        rng = np.random.default_rng([seed, 101, _region_index(region)])
        days = np.arange(START.astype("datetime64[D]"), END.astype("datetime64[D]"))
        n = days.size
        t = ar1(rng, n, 0.75, 3.0)
        w = 0.6 * ar1(rng, n, 0.7, 0.28) + 0.4 * (t / 3.0) * 0.28
        rain = rng.random(n) < np.interp(_month(days), np.arange(1, 13), _rain_probability(region))
        moisture = np.zeros(n)
        for i in range(1, n):
            moisture[i] = 1.0 if rain[i] else moisture[i - 1] * 0.8
        dryness = np.clip(1.0 - 0.35 * moisture + 0.1 * rng.standard_normal(n), 0.4, 1.3)
        return cls(region, days, t, np.exp(w), moisture, dryness)

    def _day_index(self, time_utc: NDArray[np.datetime64]) -> NDArray[np.intp]:
        local = np.asarray(time_utc, dtype="datetime64[s]") + np.timedelta64(int(self.region.utc_offset_h * 3600),
                                                                              "s")
        d = (local.astype("datetime64[D]") - self.days[0]).astype(np.int64)
        return np.clip(d, 0, self.days.size - 1)

    def air_temperature(self, time_utc: NDArray[np.datetime64], elevation_m: NDArray | float) -> NDArray:
        """Air temperature (K) at screen height, at ``time_utc`` and ``elevation_m``."""
        time_utc = np.asarray(time_utc, dtype="datetime64[s]")
        clim = _seasonal(time_utc, self.region.t_air_k)
        hour = _local_hour(time_utc, self.region)
        # the climatology is for the overpass hour (~10.75 h); the diurnal maximum is at 15 h
        diurnal = self.region.diurnal_amplitude_k * (np.cos(2 * np.pi * (hour - 15.0) / 24.0)
                                                     - np.cos(2 * np.pi * (10.75 - 15.0) / 24.0))
        anomaly = _interp_daily(time_utc, self.days, self.t_anom_k, self.region)
        lapse = -6.5e-3 * (np.asarray(elevation_m) - self.region.base_elevation_m)
        return clim + diurnal + anomaly + lapse

    def wvc(self, time_utc: NDArray[np.datetime64]) -> NDArray:
        """Regional total column water vapour (g cm^-2) at the base elevation."""
        time_utc = np.asarray(time_utc, dtype="datetime64[s]")
        return _seasonal(time_utc, self.region.wvc_g_cm2) * _interp_daily(time_utc, self.days, self.wvc_factor,
                                                                            self.region)

    def day_value(self, name: str, time_utc: NDArray[np.datetime64]) -> NDArray:
        """A daily series (``moisture`` or ``dryness``) at ``time_utc``."""
        return getattr(self, name)[self._day_index(time_utc)]


def _region_index(region: Region) -> int:
    return list(REGIONS).index(region.name)


def ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> NDArray[np.float64]:
    """A stationary AR(1) series of ``n`` steps: lag-1 correlation ``phi``, standard deviation ``sigma`` (the
    unit of ``sigma``), zero mean. Draws ``n`` normals, then one (the call order the testbed's seeds rely on)."""
    x = np.zeros(n)
    e = rng.standard_normal(n) * sigma * np.sqrt(1 - phi**2)
    x[0] = rng.standard_normal() * sigma
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


def _month(days: NDArray[np.datetime64]) -> NDArray[np.float64]:
    return (days.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(float)


def _rain_probability(region: Region) -> NDArray[np.float64]:
    # summer monsoon rain in Huailai; little rain in the Heihe oasis (irrigation acts like rain on crops)
    if region.name == "heihe":
        return np.array([0.02, 0.02, 0.04, 0.06, 0.10, 0.14, 0.18, 0.16, 0.10, 0.05, 0.02, 0.02])
    return np.array([0.03, 0.03, 0.06, 0.10, 0.15, 0.25, 0.35, 0.30, 0.18, 0.08, 0.05, 0.03])


def _seasonal(time_utc: NDArray[np.datetime64], monthly: tuple[float, ...]) -> NDArray[np.float64]:
    """Monthly values interpolated smoothly (periodic) to the day of year."""
    t = np.asarray(time_utc, dtype="datetime64[s]")
    doy = (t - t.astype("datetime64[Y]").astype("datetime64[s]")).astype(np.float64) / 86400.0
    mid = (np.arange(12) + 0.5) * 365.25 / 12
    return np.interp(doy, np.concatenate([[mid[-1] - 365.25], mid, [mid[0] + 365.25]]),
                     np.concatenate([[monthly[-1]], monthly, [monthly[0]]]))


def _local_hour(time_utc: NDArray[np.datetime64], region: Region) -> NDArray[np.float64]:
    t = np.asarray(time_utc, dtype="datetime64[s]")
    h = (t - t.astype("datetime64[D]").astype("datetime64[s]")).astype(np.float64) / 3600.0
    return (h + region.utc_offset_h) % 24.0


def _interp_daily(time_utc: NDArray[np.datetime64], days: NDArray[np.datetime64], values: NDArray[np.float64],
                  region: Region) -> NDArray[np.float64]:
    """A daily series (valid at local noon) interpolated linearly in time."""
    t = np.asarray(time_utc, dtype="datetime64[s]").astype(np.int64)
    noon = days.astype("datetime64[s]").astype(np.int64) + int((12.0 - region.utc_offset_h) * 3600)
    return np.interp(t, noon, values)


def doy(time_utc: NDArray[np.datetime64]) -> NDArray[np.float64]:
    """Fractional day of year."""
    t = np.asarray(time_utc, dtype="datetime64[s]")
    return (t - t.astype("datetime64[Y]").astype("datetime64[s]")).astype(np.float64) / 86400.0 + 1.0


# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _library_band_emissivity() -> dict[str, NDArray[np.float64]]:
    """Band emissivities (4 VIMI + 5 ASTER) of every library spectrum, by name."""
    lib = default_library()
    vimi = band_emissivity(lib)
    aster = band_emissivity(lib, aster_tir_channels())
    both = np.concatenate([vimi, aster], axis=1)
    return {s.name: both[i] for i, s in enumerate(lib)}


@dataclass(frozen=True, eq=False)
class Landscape:
    """The static landscape of a region on its 40 m grid (row 0 = north).

    Attributes
    ----------
    region : Region
    x, y : numpy.ndarray
        UTM easting / northing of pixel centres (m).
    transform : tuple
        Affine (a, b, c, d, e, f) of the 40 m grid.
    cover : numpy.ndarray
        Land-cover code per pixel (int8, :data:`LAND_COVERS`).
    elevation_m : numpy.ndarray
    soil_emis, veg_emis : numpy.ndarray
        (9, H, W) band emissivities (VIMI 4 + ASTER 5) of the soil and vegetation end members.
    ndvi_offset, heating_scale, water_scale, lst_texture : numpy.ndarray
        Static pixel textures: NDVI offset, multiplier of daytime heating, multiplier of the
        water column, and an LST pattern (K).
    site_pixels : dict
        Site id -> (row, col).
    """

    region: Region
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    transform: tuple[float, float, float, float, float, float]
    cover: NDArray[np.int8]
    elevation_m: NDArray[np.float32]
    soil_emis: NDArray[np.float32]
    veg_emis: NDArray[np.float32]
    ndvi_offset: NDArray[np.float32]
    heating_scale: NDArray[np.float32]
    water_scale: NDArray[np.float32]
    lst_texture: NDArray[np.float32]
    site_pixels: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.cover.shape  # type: ignore[return-value]

    @property
    def crs(self) -> str:
        """CRS as ``EPSG:<code>``."""
        return f"EPSG:{self.region.epsg}"

    def lonlat(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Longitude / latitude (deg) of every pixel centre, (H, W) each."""
        tr = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        xx, yy = np.meshgrid(self.x, self.y)
        return tr.transform(xx, yy)

    def ndvi(self, time_utc: np.datetime64) -> NDArray[np.float32]:
        """NDVI of every pixel on the day of ``time_utc`` (class phenology + pixel offset); constant within a day."""
        d = np.floor(doy(np.asarray(time_utc))) + 0.5
        return _phenology(self.cover, self.ndvi_offset, d)

    def ndvi_at(self, row: int, col: int, time_utc: NDArray[np.datetime64]) -> NDArray[np.float32]:
        """NDVI of one pixel on the days of ``time_utc`` (same model as :meth:`ndvi`)."""
        d = np.floor(doy(np.asarray(time_utc))) + 0.5
        return _phenology(np.full(d.shape, self.cover[row, col]), np.full(d.shape, self.ndvi_offset[row, col]), d)

    def vegetation_fraction(self, ndvi: NDArray, cover: NDArray | None = None) -> NDArray[np.float32]:
        """True green-vegetation fraction: scaled NDVI squared (Carlson & Ripley 1997) - deliberately not
        the linear form the Vegetation Cover Method assumes. ``cover`` defaults to the whole grid's."""
        fv = np.clip((ndvi - 0.12) / (0.90 - 0.12), 0.0, 1.0) ** 2
        cover = self.cover if cover is None else cover
        fv = np.where(cover == LAND_COVERS["water"].code, 0.0, fv)
        return fv.astype(np.float32)

    def emissivity(self, ndvi: NDArray, moisture: float | NDArray, pixel: tuple[int, int] | None = None
                   ) -> NDArray[np.float32]:
        """True band emissivities (9, ...): VIMI 4 then ASTER 5, for a vegetation state and soil moisture.

        Soil gets wetter (emissivity up by 30% of its gap to 1 at full moisture); canopy and soil mix
        by the vegetation fraction with a cavity term 0.4 fv (1 - fv) (1 - eps_soil). With ``pixel``
        (row, col), ``ndvi`` and ``moisture`` are series of that one pixel and the result is (9, n).
        """
        if pixel is None:
            fv = self.vegetation_fraction(ndvi)[None]
            soil0, veg = self.soil_emis, self.veg_emis
        else:
            r, c = pixel
            fv = self.vegetation_fraction(ndvi, np.full(np.shape(ndvi), self.cover[r, c]))[None]
            soil0, veg = self.soil_emis[:, r, c, None], self.veg_emis[:, r, c, None]
        soil = soil0 + 0.3 * np.asarray(moisture) * (1.0 - soil0)
        eps = fv * veg + (1.0 - fv) * soil + 0.4 * fv * (1.0 - fv) * (1.0 - soil)
        return np.clip(eps, 0.5, 0.998).astype(np.float32)


def _phenology(cover: NDArray, offset: NDArray, day: NDArray | float) -> NDArray[np.float32]:
    out = np.zeros(np.shape(cover), dtype=np.float32)
    day = np.broadcast_to(day, np.shape(cover))
    for lc in LAND_COVERS.values():
        m = cover == lc.code
        if np.any(m):
            g = np.exp(-0.5 * ((day[m] - lc.peak_doy) / lc.season_days) ** 2)
            out[m] = lc.ndvi_min + (lc.ndvi_max - lc.ndvi_min) * g
    out = np.where(cover == LAND_COVERS["water"].code, out, out + offset)
    return np.clip(out, -0.2, 0.95).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> NDArray[np.float64]:
    """Gaussian random field with correlation length ~``scale_px``, zero mean, unit variance."""
    h, w = shape
    noise = rng.standard_normal((h, w))
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    filt = np.exp(-2.0 * (np.pi * scale_px) ** 2 * (kx**2 + ky**2))
    f = np.fft.irfft2(np.fft.rfft2(noise) * filt, s=(h, w))
    f -= f.mean()
    return f / max(f.std(), 1e-12)


def _region_grid(region: Region, size: int) -> tuple[NDArray, NDArray, tuple]:
    tr = Transformer.from_crs("EPSG:4326", f"EPSG:{region.epsg}", always_xy=True)
    cx, cy = tr.transform(region.centre_lon, region.centre_lat)
    x0 = np.floor((cx - size * PIXEL_M / 2) / PIXEL_M) * PIXEL_M
    y0 = np.floor((cy + size * PIXEL_M / 2) / PIXEL_M) * PIXEL_M
    x = x0 + (np.arange(size) + 0.5) * PIXEL_M
    y = y0 - (np.arange(size) + 0.5) * PIXEL_M
    return x, y, (PIXEL_M, 0.0, float(x0), 0.0, -PIXEL_M, float(y0))


def build_landscape(region: Region, size: int, seed: int, *, sites: bool = True) -> Landscape:
    """Generate the static landscape of ``region`` on a ``size`` x ``size`` 40 m grid.

    ``sites=False`` leaves the region's sites out (no stamped covers, no ``site_pixels``), so that a grid smaller
    than the sites' spread can be built (the hard cases of :func:`sftl_dask.testbed.scene.synthesize_hard_case`);
    the generator's draws are the same either way.

    Raises
    ------
    ValueError
        If the grid is too small to hold the region's sites.
    """
    rng = np.random.default_rng([seed, 202, _region_index(region)])
    x, y, transform = _region_grid(region, size)
    shape = (size, size)
    # Land cover: thresholds of a smooth field per class (largest field wins), patch size ~ 400 m-1 km.
    names = list(region.cover_fractions)
    fields = np.stack([smooth_field(rng, shape, 10.0 + 8.0 * rng.random()) for _ in names])
    weights = np.array([region.cover_fractions[n] for n in names])
    # bias each field so that the argmax reproduces the target fractions (a few fixed-point steps)
    bias = np.log(weights)
    for _ in range(8):
        win = np.argmax(fields + bias[:, None, None], axis=0)
        frac = np.bincount(win.ravel(), minlength=len(names)) / win.size
        bias += 0.8 * (np.log(weights) - np.log(np.maximum(frac, 1e-4)))
    win = np.argmax(fields + bias[:, None, None], axis=0)
    cover = np.array([LAND_COVERS[n].code for n in names], dtype=np.int8)[win]

    # Sites: stamp their cover in a disk of 5 px (200 m) radius, so the site pixel and its footprint agree.
    tr = Transformer.from_crs("EPSG:4326", f"EPSG:{region.epsg}", always_xy=True)
    site_pixels: dict[str, tuple[int, int]] = {}
    rr, cc = np.mgrid[0:size, 0:size]
    for s in (s for s in SITES if sites and s.region == region.name):
        sx, sy = tr.transform(s.lon, s.lat)
        col = int(np.floor((sx - transform[2]) / PIXEL_M))
        row = int(np.floor((transform[5] - sy) / PIXEL_M))
        if not (8 <= row < size - 8 and 8 <= col < size - 8):
            raise ValueError(f"testbed grid of {size} px does not hold site {s.id} ({s.name}) of {region.name}: "
                             f"use a larger --size")
        site_pixels[s.id] = (row, col)
        disk = (rr - row) ** 2 + (cc - col) ** 2 <= 25
        cover[disk] = LAND_COVERS[s.land_cover].code
        if s.land_cover == "water":  # a reservoir edge: water on one side, wetland on the other
            edge = disk & (cc > col)
            cover[edge] = LAND_COVERS["wetland"].code

    # Terrain: a regional slope plus hills, relief in metres.
    yy = np.linspace(-0.5, 0.5, size)[:, None]  # north (row 0) to south
    elev = region.base_elevation_m + region.south_rise_m * yy + region.relief_m * smooth_field(rng, shape, 40.0)
    elev = elev.astype(np.float32)

    # End-member emissivities: per pixel a mixture of the cover's soils, the cover's canopy.
    lib = _library_band_emissivity()
    soil = np.zeros((9, size, size), dtype=np.float32)
    veg = np.zeros((9, size, size), dtype=np.float32)
    mix = 0.5 + 0.5 * np.tanh(smooth_field(rng, shape, 6.0))
    for lc in LAND_COVERS.values():
        m = cover == lc.code
        if not m.any():
            continue
        a = lib[lc.soils[0]][:, None]
        b = lib[lc.soils[-1]][:, None]
        w = mix[m][None, :]
        if len(lc.soils) == 3:  # three-member soils: blend the middle one by a second field
            c = lib[lc.soils[1]][:, None]
            w2 = (0.5 + 0.5 * np.tanh(smooth_field(rng, shape, 4.0)))[m][None, :]
            soil[:, m] = (1 - w) * ((1 - w2) * a + w2 * c) + w * b
        else:
            soil[:, m] = (1 - w) * a + w * b
        veg[:, m] = lib[lc.vegetation][:, None]
    return Landscape(
        region=region, x=x, y=y, transform=transform, cover=cover, elevation_m=elev,
        soil_emis=soil, veg_emis=veg,
        ndvi_offset=(0.05 * smooth_field(rng, shape, 3.0)).astype(np.float32),
        heating_scale=np.clip(1.0 + 0.15 * smooth_field(rng, shape, 5.0), 0.5, 1.5).astype(np.float32),
        water_scale=(1.0 + 0.06 * smooth_field(rng, shape, 150.0)).astype(np.float32),
        lst_texture=(0.8 * smooth_field(rng, shape, 2.0)).astype(np.float32),
        site_pixels=site_pixels,
    )

