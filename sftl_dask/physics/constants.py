"""Physical constants, each defined once with its source.

All values are CODATA 2018 exact or recommended values (SI units).
"""

from __future__ import annotations

#: Planck constant (J s), CODATA 2018 exact.
PLANCK_H = 6.62607015e-34
#: Speed of light in vacuum (m s^-1), exact.
SPEED_OF_LIGHT = 299_792_458.0
#: Boltzmann constant (J K^-1), CODATA 2018 exact.
BOLTZMANN_K = 1.380649e-23
#: Stefan-Boltzmann constant (W m^-2 K^-4), CODATA 2018 (FACTS.md in situ formula).
STEFAN_BOLTZMANN = 5.670374419e-8
#: Avogadro constant (mol^-1), exact.
AVOGADRO = 6.02214076e23
#: Molar mass of water (g mol^-1).
MOLAR_MASS_H2O = 18.01528
#: Molar mass of dry air (g mol^-1).
MOLAR_MASS_DRY_AIR = 28.9647
#: Loschmidt number at 273.15 K and 1013.25 hPa (cm^-3), used for atm-cm units.
LOSCHMIDT = 2.686780111e19
#: Standard pressure (hPa) and reference temperature (K) of band-model scaling.
P0_HPA = 1013.25
T0_K = 296.0
#: Standard gravity (m s^-2).
GRAVITY = 9.80665

#: First radiation constant for spectral radiance, 2 h c^2, in W m^-2 sr^-1 um^4
#: (so that B = C1 / lambda^5 / (exp(C2/(lambda T)) - 1) gives W m^-2 sr^-1 um^-1
#: with lambda in um).
C1_RADIANCE = 2.0 * PLANCK_H * SPEED_OF_LIGHT**2 * 1e24
#: Second radiation constant h c / k in um K.
C2_UM_K = PLANCK_H * SPEED_OF_LIGHT / BOLTZMANN_K * 1e6
