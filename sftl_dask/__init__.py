"""sftl-dask: land surface temperature from GF5-02 VIMI by strategic fine-tuning transfer learning, on Dask."""

from __future__ import annotations

__version__ = "0.1.0"

# the ``.sftl`` accessor is registered on import, as ``import rioxarray`` registers ``.rio``
from sftl_dask.api import open_lst

__all__ = ["__version__", "open_lst"]
