"""sftl-dask: land surface temperature from GF5-02 VIMI by strategic fine-tuning transfer learning, on Dask."""

from __future__ import annotations

from sftl_dask.version import __version__  # first: modules imported below read it

# isort: split
# the ``.sftl`` accessor is registered on import, as ``import rioxarray`` registers ``.rio``
from sftl_dask.api import open_lst

__all__ = ["__version__", "open_lst"]
