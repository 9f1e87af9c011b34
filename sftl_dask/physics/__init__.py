"""Thermal-infrared physics: channels, Planck, atmospheres, radiative transfer, emissivity,
split-window and in situ LST. numpy only: no I/O, no Dask."""
