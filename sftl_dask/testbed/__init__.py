"""The synthetic but physically consistent test world, written in the real product formats.

Two regions (Huailai, Heihe), 18 in situ sites, GF5-02 VIMI L1 archives, ERA5 water vapour,
ASTER GED tiles and radiometer records. Nothing in ``sftl_dask.io`` imports this package: the
readers are written for real products, and the testbed writes those same formats.
"""
