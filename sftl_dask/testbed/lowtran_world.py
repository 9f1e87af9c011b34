"""The testbed world's atmosphere from LOWTRAN7: a shipped table, interpolated per scene.

The simulation table is made with the project's band model; the testbed's scenes take their
atmospheric terms from LOWTRAN7 instead (``sftl_dask/data/lowtran7_atmosphere_table.npz``, built by
``tools/build_lowtran_table.py`` over a library of TIGR-like profiles x surface elevations x view
angles). So the simulation-to-world gap holds a radiative-transfer error of realistic kind - a
different code, and a library profile of the right air temperature and water column but not the
scene's own shape - as the paper's MODTRAN simulation does against the real atmosphere. Nothing
here needs LOWTRAN at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["LowtranWorldTable", "lowtran_world_table"]

TABLE_FILE = "lowtran7_atmosphere_table.npz"


@dataclass(frozen=True, eq=False)
class LowtranWorldTable:
    """LOWTRAN7 atmospheric terms on an (elevation, air temperature, water vapour, view angle) grid.

    Attributes
    ----------
    elevation_km, t_air_k, vza_deg : numpy.ndarray
        Grid nodes: surface elevation (km), near-surface air temperature (K), view zenith (deg).
    profile_wvc : numpy.ndarray
        Column water vapour of each library profile (g cm^-2), (n_elev, n_t, n_w).
    transmittance, upwelling : numpy.ndarray
        (n_elev, n_t, n_w, n_vza, 4): unitless, W m^-2 sr^-1 um^-1.
    downwelling : numpy.ndarray
        Hemispheric (irradiance / pi), (n_elev, n_t, n_w, 4), W m^-2 sr^-1 um^-1.
    provenance : dict
        How the table was made (LOWTRAN7 version, profiles, grid, tool).
    """

    elevation_km: NDArray[np.float64]
    t_air_k: NDArray[np.float64]
    vza_deg: NDArray[np.float64]
    profile_wvc: NDArray[np.float64]
    transmittance: NDArray[np.float64]
    upwelling: NDArray[np.float64]
    downwelling: NDArray[np.float64]
    provenance: dict[str, Any]

    @property
    def description(self) -> str:
        """One line naming the RT code and the table, for ``testbed.json``."""
        return f"{self.provenance['rt']}; table {TABLE_FILE} ({self.provenance['tool']})"

    def terms(self, elevation_km: float, t_air_k: float, wvc: ArrayLike,
              vza_deg: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Terms for one surface elevation and air temperature, at several water columns and angles.

        Linear in elevation and air temperature between grid nodes, and along each node's library
        profiles in column water vapour; linear in sec(vza). Values outside the grid are held at
        its edge (the testbed's regions lie well inside: 0.4-1.8 km, 250-315 K).

        Parameters
        ----------
        elevation_km : float
            Surface elevation (km).
        t_air_k : float
            Near-surface air temperature (K).
        wvc : array_like
            Column water vapour above the surface (g cm^-2), (n_w,).
        vza_deg : array_like
            View zenith angles (deg), (n_v,).

        Returns
        -------
        tuple of numpy.ndarray
            ``(transmittance, upwelling)`` each (4, n_w, n_v) and ``downwelling`` (4, n_w).
        """
        w = np.atleast_1d(np.asarray(wvc, dtype=np.float64))
        sec = 1.0 / np.cos(np.deg2rad(np.atleast_1d(np.asarray(vza_deg, dtype=np.float64))))
        sec_nodes = 1.0 / np.cos(np.deg2rad(self.vza_deg))
        tau = np.zeros((4, w.size, sec.size))
        lup = np.zeros_like(tau)
        ldn = np.zeros((4, w.size))
        for ie, fe in _bracket(self.elevation_km, elevation_km):
            for it, ft in _bracket(self.t_air_k, t_air_k):
                wn = self.profile_wvc[ie, it]
                order = np.argsort(wn, kind="stable")
                wn = wn[order]
                f = fe * ft
                for c in range(4):
                    ldn[c] += f * np.interp(w, wn, self.downwelling[ie, it, order, c])
                    t_w = np.stack([np.interp(w, wn, self.transmittance[ie, it, order, v, c])
                                    for v in range(self.vza_deg.size)], axis=1)  # (n_w, n_vza_nodes)
                    u_w = np.stack([np.interp(w, wn, self.upwelling[ie, it, order, v, c])
                                    for v in range(self.vza_deg.size)], axis=1)
                    tau[c] += f * np.stack([np.interp(sec, sec_nodes, row) for row in t_w])
                    lup[c] += f * np.stack([np.interp(sec, sec_nodes, row) for row in u_w])
        return tau, lup, ldn


def _bracket(nodes: NDArray[np.float64], x: float) -> list[tuple[int, float]]:
    """The two nodes around ``x`` with their linear weights (one node, weight 1, at or beyond an edge)."""
    if x <= nodes[0]:
        return [(0, 1.0)]
    if x >= nodes[-1]:
        return [(nodes.size - 1, 1.0)]
    i = int(np.searchsorted(nodes, x) - 1)
    f = (x - nodes[i]) / (nodes[i + 1] - nodes[i])
    return [(i, 1.0 - f), (i + 1, f)]


@lru_cache(maxsize=1)
def lowtran_world_table() -> LowtranWorldTable:
    """The shipped LOWTRAN7 table (loaded once per process)."""
    with resources.files("sftl_dask.data").joinpath(TABLE_FILE).open("rb") as fh, np.load(fh) as z:
        return LowtranWorldTable(
            elevation_km=z["elevation_km"].astype(np.float64), t_air_k=z["t_air_k"].astype(np.float64),
            vza_deg=z["vza_deg"].astype(np.float64), profile_wvc=z["profile_wvc"].astype(np.float64),
            transmittance=z["transmittance"].astype(np.float64), upwelling=z["upwelling"].astype(np.float64),
            downwelling=z["downwelling"].astype(np.float64), provenance=json.loads(str(z["provenance"])),
        )
