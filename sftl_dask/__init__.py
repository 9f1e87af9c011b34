"""sftl-dask: land surface temperature from GF5-02 VIMI by strategic fine-tuning transfer learning, on Dask."""

from __future__ import annotations

# the ``.sftl`` accessor is registered on import, as ``import rioxarray`` registers ``.rio``
from sftl_dask.api import at_sites, open_lst
from sftl_dask.version import __version__

__all__ = ["__version__", "at_sites", "open_lst"]
