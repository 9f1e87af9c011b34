"""sftl-dask: land surface temperature from GF5-02 VIMI by strategic fine-tuning transfer learning, on Dask."""

from __future__ import annotations

__version__ = "0.1.0"
